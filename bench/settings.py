"""Django settings of the benchmark: the demo project, set up to be measured.

Differences from the demo, and why: DEBUG is off (with it on, Django keeps every query);
database connections persist between requests on SQLite (the demo's settings give
PostgreSQL Django's connection pool, which does that job there); the bot token and Bot
API address are the benchmark's own (a fake Bot API); and ``BENCH_BOT`` chooses the
application behind the webhook, so that one server can be started with sessions and an
identical one without.
"""

from __future__ import annotations

import os

from botproject.settings import *  # noqa: F403
from botproject.settings import database_from_url

DEBUG = False
SECRET_KEY = "benchmark-only-secret-key"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
if not DATABASES["default"].get("OPTIONS", {}).get("pool"):  # type: ignore[union-attr]
    DATABASES["default"]["CONN_MAX_AGE"] = 600  # a pool requires 0: it does this job

TELEGRAM_BOT_TOKEN = "123456:BENCH"
TELEGRAM_API_BASE_URL = os.environ.get("TELEGRAM_API_BASE_URL", "")

# BENCH_BOT=redis: the demo with both fragments in Redis (botproject.bot reads these).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "") if os.environ.get("BENCH_BOT") == "redis" else ""
REDIS_PREFIX = "botsessions-bench:"

BOTSESSIONS_BOTS = {
    "default": {
        "APPLICATION": {
            "sessions": "botproject.bot.build_application",
            "redis": "botproject.bot.build_application",
            "off": "bench.bots.sessions_off_application",
            "ptb": "bench.bots.ptb_state_application",
        }.get(os.environ.get("BENCH_BOT", "sessions"), "bench.bots.sessions_off_application"),
        "WEBHOOK_SECRET": "bench-secret",
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
