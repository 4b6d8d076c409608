"""End to end, as a user runs it: the demo project served by uvicorn (ASGI), gunicorn sync
workers (WSGI) and runserver, or polling with ``manage.py runbot``, against the fake Bot
API, on the test database. Replies and rows are checked from the outside.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from botsessions.models import ProcessedUpdate, Session

from .fakebotapi import FakeBotAPI
from .servers import (
    WEBHOOK_PATH,
    Server,
    free_port,
    manage,
    server_env,
    start_runbot,
    start_server,
    wait_until,
)
from .updates import ALICE, BOB, GROUP, inline_query, message, poll_answer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHARED_UPDATES = Path(__file__).parents[2] / "shared" / "updates"
SERVERS = [("uvicorn", 2), ("gunicorn", 2), ("runserver", 1)]


@pytest.fixture
def env(api: FakeBotAPI) -> dict[str, str]:
    return server_env(api_base_url=api.base_url)


def rows() -> dict[tuple[str, str], Any]:
    return {(row.fragment, row.key): row.data for row in Session.objects.all()}


def post_declaring(server: Server, declared: int, body: bytes) -> int:
    """POST ``body`` while declaring a longer one; the status line's code, read raw."""
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n"
        f"X-Telegram-Bot-Api-Secret-Token: {server.secret}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


@pytest.mark.parametrize(("kind", "workers"), SERVERS, ids=[kind for kind, _ in SERVERS])
def test_demo_bot_served(api: FakeBotAPI, env: dict[str, str], kind: Any, workers: int) -> None:
    with start_server(kind, env, workers=workers) as server:
        # Rejected requests change nothing.
        assert server.post_update(message("🍕"), secret=None).status_code == 403
        assert server.post_update(message("🍕"), secret="wrong").status_code == 403
        assert server.request("GET").status_code == 405
        assert server.post_update(b"{not json").status_code == 400
        assert server.post_update(b'[{"update_id": 1}]').status_code == 400
        assert server.post_update({"update_id": "7"}).status_code == 400
        assert post_declaring(server, 64 * 1024 * 1024, b'{"update_id": 1}') == 413
        assert Session.objects.count() == 0
        assert api.calls == []

        # Many requests in a row, spread over the workers, each committed before its 200.
        for i in range(12):
            text = "🍕 again" if i % 3 == 0 else f"message {i}"
            response = server.post_update(message(text, chat_id=GROUP, user_id=BOB))
            assert response.status_code == 200, response.text
            assert response.json() == {"ok": True, "outcome": "committed"}
        server.post_update(message("🍕🍕", chat_id=GROUP, user_id=ALICE))
        assert rows() == {
            ("chat", f"chat:{GROUP}"): {"pizza_count": 5},
            ("user", f"user:{BOB}"): {"messages": 12},
            ("user", f"user:{ALICE}"): {"messages": 1},
        }
        for update in (inline_query(), poll_answer()):
            assert server.post_update(update).json() == {"ok": True, "outcome": "skipped"}

        server.post_update(message("/hunger@pizza_test_bot", chat_id=GROUP, user_id=BOB))
        server.post_update(message("/stats", chat_id=GROUP, user_id=BOB))
        server.post_update(message("/reset", chat_id=GROUP, user_id=ALICE))
        server.post_update(message("/hunger", chat_id=GROUP, user_id=ALICE))
        assert api.sent_texts() == [
            "Your hunger level is 5!",
            "You have sent 12 messages.",
            "Session reset.",
            "Your hunger level is 0!",
        ]
        assert ("chat", f"chat:{GROUP}") not in rows()
        assert ProcessedUpdate.objects.count() == 14  # 13 messages and the /reset
        # The application is initialized once per worker process, not per request.
        assert 1 <= len(api.calls_to("getMe")) <= workers
        assert server.stop(signal.SIGINT) == 0  # a clean shutdown, whatever the server


@pytest.mark.skipif(not SHARED_UPDATES.is_dir(), reason="no shared sample updates here")
def test_real_updates_are_all_accepted(api: FakeBotAPI, env: dict[str, str]) -> None:
    samples = sorted(SHARED_UPDATES.glob("*.json"))
    assert samples
    with start_server("uvicorn", env) as server:
        for path in samples:
            response = server.post_update(path.read_bytes())
            assert response.status_code == 200, f"{path.name}: {response.text}"
            outcome = response.json()["outcome"]
            assert outcome in {"committed", "unchanged", "skipped"}, f"{path.name}: {outcome}"
        # Posting them all again is harmless: each update is processed once.
        for path in samples:
            assert server.post_update(path.read_bytes()).json()["outcome"] in {
                "duplicate",
                "skipped",
                "unchanged",
            }
    by_key = rows()
    assert by_key[("user", "user:222222222")]["messages"] >= 1
    assert any(data.get("pizza_count", 0) > 0 for data in by_key.values())


def test_runbot_polls_and_keeps_sessions_across_restarts(
    api: FakeBotAPI, env: dict[str, str]
) -> None:
    chat = -4099999999

    def count(fragment: str, key: str) -> Any:
        row = Session.objects.filter(fragment=fragment, key=key).first()
        return row.data if row is not None else None

    bot = start_runbot(env)
    try:
        api.queue_message("🍕 first", chat_id=chat, user_id=BOB)
        api.queue_message("hello", chat_id=chat, user_id=BOB)
        api.queue_message("🍕 second", chat_id=chat, user_id=BOB)
        wait_until(lambda: count("user", f"user:{BOB}") == {"messages": 3}, 20, "3 messages")
        assert count("chat", f"chat:{chat}") == {"pizza_count": 2}
        api.queue_message("/hunger", chat_id=chat, user_id=BOB)
        api.wait_for("sendMessage", timeout=20)
        assert api.sent_texts() == ["Your hunger level is 2!"]
        assert bot.stop(signal.SIGINT, timeout=20) == 0
        assert "Stopped." in bot.log()
        assert "Traceback" not in bot.log()

        # Sent while the bot was down: picked up after the restart, counters go on.
        api.queue_message("🍕 while away", chat_id=chat, user_id=BOB)
        bot = start_runbot(env)
        wait_until(lambda: count("user", f"user:{BOB}") == {"messages": 4}, 20, "4 messages")
        api.queue_message("/hunger", chat_id=chat, user_id=BOB)
        api.wait_for("sendMessage", count=2, timeout=20)
        assert api.sent_texts()[-1] == "Your hunger level is 3!"
        assert bot.stop(signal.SIGINT, timeout=20) == 0
    finally:
        bot.stop(signal.SIGKILL, timeout=5)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"TELEGRAM_BOT_TOKEN": ""}, "TELEGRAM_BOT_TOKEN is not set"),
        ({"TELEGRAM_API_BASE_URL": "http://127.0.0.1:{port}/bot"}, "Could not reach the Bot API"),
        ({"TELEGRAM_BOT_TOKEN": "not-a-token"}, "Telegram refused the token"),
    ],
    ids=["no-token", "unreachable", "refused-token"],
)
def test_runbot_fails_clearly(
    api: FakeBotAPI, env: dict[str, str], overrides: dict[str, str], expected: str
) -> None:
    env = {**env, **{k: v.format(port=free_port()) for k, v in overrides.items()}}
    done = subprocess.run(
        manage("runbot"), env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "CommandError: " in done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
