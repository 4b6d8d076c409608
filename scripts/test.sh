#!/usr/bin/env bash
# Set up a virtual environment from requirements.txt (first run only) and run the tests.
# Extra arguments go to pytest. DATABASE_URL picks the database (SQLite when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec "$VENV/bin/python" -m pytest "$@"
