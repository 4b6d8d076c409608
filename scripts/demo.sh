#!/usr/bin/env bash
# Start the demo project on a fresh machine: virtualenv, migrations, an admin user and the
# development server. Without TELEGRAM_BOT_TOKEN it also starts the fake Bot API server,
# so the bot's replies are printed here instead of being sent to Telegram.
#
#   bash scripts/demo.sh                       # http://127.0.0.1:8000/admin/ (admin/admin)
#   PORT=9000 bash scripts/demo.sh             # another port
#   TELEGRAM_BOT_TOKEN=123:abc bash scripts/demo.sh   # a real bot (then run setwebhook)
#
# DATABASE_URL picks the database (the project's SQLite file when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
PY="$VENV/bin/python"
PORT="${PORT:-8000}"
FAKE_API_PORT="${FAKE_API_PORT:-8081}"
export DJANGO_SETTINGS_MODULE=botproject.settings
# The demo is for this machine only: DEBUG on (the project's default is off), the server
# and the admin/admin superuser on 127.0.0.1.
export DJANGO_DEBUG=1
export PYTHONUNBUFFERED=1  # keep the server and fake API output in order when piped
export TELEGRAM_WEBHOOK_SECRET="${TELEGRAM_WEBHOOK_SECRET:-demo-secret}"

fake_pid=""
cleanup() {
  if [ -n "$fake_pid" ]; then
    kill "$fake_pid" 2>/dev/null || true
    wait "$fake_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
# A background job of a script ignores Ctrl-C, so the trap is what stops the fake API.
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== Database: ${DATABASE_URL:-SQLite file db.sqlite3}"
"$PY" manage.py migrate --no-input -v 0

"$PY" manage.py shell -v 0 -c '
from django.contrib.auth import get_user_model
User = get_user_model()
if User.objects.filter(is_superuser=True).exists():
    print("== An admin user exists already; log in with it.")
else:
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    print("== Created the demo superuser admin / admin (for this machine only: never expose it).")
'

if [ -z "${TELEGRAM_BOT_TOKEN:-}" ]; then
  export TELEGRAM_BOT_TOKEN="123456:FAKE-demo-token"
  export TELEGRAM_API_BASE_URL="http://127.0.0.1:$FAKE_API_PORT/bot"
  "$PY" tests/fakebotapi.py --port "$FAKE_API_PORT" &
  fake_pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$FAKE_API_PORT") 2>/dev/null; then break; fi
    if ! kill -0 "$fake_pid" 2>/dev/null; then
      echo "The fake Bot API did not start (is port $FAKE_API_PORT taken? set FAKE_API_PORT)." >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "== TELEGRAM_BOT_TOKEN is not set: using the FAKE Bot API at $TELEGRAM_API_BASE_URL"
  echo "   (nothing reaches Telegram; the bot's calls are printed below)."
else
  echo "== Using the bot token from TELEGRAM_BOT_TOKEN${TELEGRAM_API_BASE_URL:+ with $TELEGRAM_API_BASE_URL}."
fi

webhook="http://127.0.0.1:$PORT/telegram/webhook/"
cat <<EOF
== Admin: http://127.0.0.1:$PORT/admin/
== Webhook: $webhook (secret token: $TELEGRAM_WEBHOOK_SECRET). Post an update to it:

curl -s $webhook -H 'Content-Type: application/json' \\
  -H 'X-Telegram-Bot-Api-Secret-Token: $TELEGRAM_WEBHOOK_SECRET' \\
  -d '{"update_id": 1, "message": {"message_id": 1, "date": 1763740800, "text": "🍕 please",
       "chat": {"id": 42, "type": "private", "first_name": "Alice"},
       "from": {"id": 42, "is_bot": false, "first_name": "Alice"}}}'

Then ask for the count (a new update_id each time):

curl -s $webhook -H 'Content-Type: application/json' \\
  -H 'X-Telegram-Bot-Api-Secret-Token: $TELEGRAM_WEBHOOK_SECRET' \\
  -d '{"update_id": 2, "message": {"message_id": 2, "date": 1763740801, "text": "/hunger",
       "entities": [{"type": "bot_command", "offset": 0, "length": 7}],
       "chat": {"id": 42, "type": "private", "first_name": "Alice"},
       "from": {"id": 42, "is_bot": false, "first_name": "Alice"}}}'

EOF
"$PY" manage.py runserver --noreload "127.0.0.1:$PORT"
