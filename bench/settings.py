"""Django settings of the benchmark: the demo project, set up to be measured.

Differences from the demo, and why: DEBUG is off (with it on Django keeps every query
and wraps every cursor); database connections persist between requests
(``BENCH_CONN_MAX_AGE`` seconds, 600 by default; 0 reconnects per request as the demo's
settings do), unless the demo's settings give the database Django's connection pool,
which does that job and requires 0; the bot token and Bot API address are the
benchmark's own (the fake Bot API it starts); and ``BENCH_BOT`` chooses the application
behind the webhook, so one server can be started with sessions and an identical one
without.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from botproject.settings import *  # noqa: F403
from botproject.settings import database_from_url

DEBUG = False
SECRET_KEY = "benchmark-only-secret-key"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL")
        or f"sqlite:///{Path(tempfile.gettempdir()) / 'botsessions-bench.sqlite3'}"
    )
}
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("BENCH_CONN_MAX_AGE", "600"))
if DATABASES["default"].get("OPTIONS", {}).get("pool"):  # type: ignore[union-attr]
    # Django refuses persistent connections with a pool: each request borrows one from it.
    DATABASES["default"]["CONN_MAX_AGE"] = 0

TELEGRAM_BOT_TOKEN = "123456:BENCH"
TELEGRAM_API_BASE_URL = os.environ.get("TELEGRAM_API_BASE_URL", "")
WEBHOOK_SECRET = "bench-secret"

# What ``BENCH_BOT`` may name: the application served as bot "default".
BENCH_BOTS = {
    "sessions": "botproject.bot.build_application",
    "off": "bench.bots.sessions_off_application",
    "memory": "bench.bots.memory_application",
    "lazy": "bench.bots.lazy_application",
}
BOTSESSIONS_BOTS = {
    "default": {
        "APPLICATION": BENCH_BOTS[os.environ.get("BENCH_BOT", "sessions")],
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
