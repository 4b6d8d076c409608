#!/usr/bin/env bash
# Benchmark the session layer (see bench/README.md): sets up .venv from requirements.txt
# on first use, then runs `python -m bench.run` with the given arguments, e.g. --quick.
# PostgreSQL is expected at BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/
# botsessions_bench, a database the benchmark drops and recreates); --no-pg skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec "$VENV/bin/python" -m bench.run "$@"
