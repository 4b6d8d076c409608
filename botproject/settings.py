"""Settings of the demo project, read from the environment (see the README)."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# Safe by default: DEBUG only when asked for (scripts/demo.sh asks), and then a known key
# is fine; with DEBUG off a missing DJANGO_SECRET_KEY stops the start (botproject/apps.py).
DEBUG = _flag("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or (
    "django-insecure-demo-key-only-for-local-use" if DEBUG else ""
)
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "botsessions",
    "botproject",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "botproject.urls"
WSGI_APPLICATION = "botproject.wsgi.application"
ASGI_APPLICATION = "botproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict[str, object]:
    """A DATABASES entry from a URL, tuned for each server botsessions supports."""
    config: dict[str, object] = dict(dj_database_url.parse(url))
    engine = str(config["ENGINE"])
    options = dict(config.get("OPTIONS") or {})  # type: ignore[call-overload]
    if engine.endswith("sqlite3"):
        # WAL lets readers run beside the writer; IMMEDIATE avoids lock upgrades failing.
        options.setdefault("transaction_mode", "IMMEDIATE")
        # How long an update waits for the one writer: at most BOTSESSIONS_LOCK_TIMEOUT.
        options.setdefault("timeout", 10)
        options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
    elif engine.endswith("postgresql"):
        # A pool of connections per process instead of a new one per request (the async
        # webhook's database threads take one per update): needs CONN_MAX_AGE = 0. Its
        # max_size bounds a process's connections; an update waits at most `timeout`
        # seconds for one (psycopg_pool's 30 would come on top of the lock wait).
        options.setdefault("pool", {"min_size": 2, "max_size": 16, "timeout": 10})
    elif engine.endswith("mysql"):
        import pymysql

        pymysql.install_as_MySQLdb()
        options.setdefault("charset", "utf8mb4")
    config["OPTIONS"] = options
    return config


DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# The demo bot.
TELEGRAM_BOT_TOKEN = os.environ.get("TELEGRAM_BOT_TOKEN", "")
TELEGRAM_API_BASE_URL = os.environ.get("TELEGRAM_API_BASE_URL", "")
# Set: the demo bot keeps its fragments in Redis (redis://host:6379/0), under REDIS_PREFIX.
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_PREFIX = os.environ.get("REDIS_PREFIX", "botsessions:")
BOTSESSIONS_BOTS = {
    "default": {
        "APPLICATION": "botproject.bot.build_application",
        "WEBHOOK_SECRET": os.environ.get("TELEGRAM_WEBHOOK_SECRET", ""),
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"botsessions": {"handlers": ["console"], "level": "INFO"}},
}
