"""System checks: misconfiguration is reported by ``manage.py check``, not at 2 a.m."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from .conf import MAX_PURGE_BATCH_SIZE, MAX_RETENTION, settings


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check every botsessions setting for its shape and for a missing webhook secret."""
    messages: list[CheckMessage] = []
    if not getattr(django_settings, "USE_TZ", True):
        messages.append(
            Error(
                "botsessions needs USE_TZ = True: session expiry is kept in UTC.",
                id="botsessions.E001",
            )
        )
    bots = settings.BOTS
    if not isinstance(bots, dict):
        messages.append(
            Error(
                "BOTSESSIONS_BOTS must be a dict of alias → bot settings.",
                hint='{"default": {"APPLICATION": "myproject.bot.build_application"}}',
                id="botsessions.E002",
            )
        )
        bots = {}
    for alias, bot in bots.items():
        if not isinstance(alias, str) or not alias:
            messages.append(
                Error(
                    f"BOTSESSIONS_BOTS has the alias {alias!r}: aliases are non-empty strings.",
                    id="botsessions.E002",
                )
            )
        messages += _check_bot(alias, bot)
    for name, value in (
        ("BOTSESSIONS_MAX_BODY_SIZE", getattr(django_settings, "BOTSESSIONS_MAX_BODY_SIZE", 1)),
        (
            "BOTSESSIONS_PURGE_BATCH_SIZE",
            getattr(django_settings, "BOTSESSIONS_PURGE_BATCH_SIZE", 1),
        ),
        (
            "BOTSESSIONS_ADMIN_BATCH_SIZE",
            getattr(django_settings, "BOTSESSIONS_ADMIN_BATCH_SIZE", 1),
        ),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            messages.append(Error(f"{name} must be a positive integer.", id="botsessions.E005"))
        elif name == "BOTSESSIONS_PURGE_BATCH_SIZE" and value > MAX_PURGE_BATCH_SIZE:
            messages.append(
                Error(
                    f"{name} must be at most {MAX_PURGE_BATCH_SIZE:,} (rows one statement "
                    "deletes).",
                    id="botsessions.E005",
                )
            )
    retention = getattr(django_settings, "BOTSESSIONS_PROCESSED_UPDATES_RETENTION", None)
    if isinstance(retention, int | float) and not isinstance(retention, bool):
        seconds: float | None = retention
    else:
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else None
    if retention is not None and not (
        seconds is not None and 86400 <= seconds <= MAX_RETENTION.total_seconds()
    ):
        messages.append(
            Error(
                "BOTSESSIONS_PROCESSED_UPDATES_RETENTION must cover Telegram's 24-hour "
                "redelivery window (a timedelta or seconds, at least 24 hours, at most "
                f"{MAX_RETENTION.days} days).",
                id="botsessions.E006",
            )
        )
    lock_timeout = getattr(django_settings, "BOTSESSIONS_LOCK_TIMEOUT", 10)
    if (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, int | float)
        or not 0 < lock_timeout <= 30
    ):
        messages.append(
            Error(
                "BOTSESSIONS_LOCK_TIMEOUT must be a number of seconds above 0 and at most "
                "30, well under Telegram's 60-second webhook wait.",
                id="botsessions.E011",
            )
        )
    messages += _check_sqlite_timeouts()
    messages += _check_routing()
    return messages


def _check_routing() -> list[CheckMessage]:
    """The exactly-once records are written in each update's transaction, beside the
    sessions: a router sending them elsewhere would have them pruned where they are not."""
    from django.db import router

    from .models import ProcessedUpdate, Session

    sessions, records = router.db_for_write(Session), router.db_for_write(ProcessedUpdate)
    if sessions == records:
        return []
    return [
        Error(
            f"Database routers write botsessions' sessions to {sessions!r} but its "
            f"processed updates to {records!r}; both must be on one database.",
            hint="Route the whole app label 'botsessions' to one database.",
            id="botsessions.E014",
        )
    ]


def _check_sqlite_timeouts() -> list[CheckMessage]:
    """SQLite's own wait for its one writer must not outlast the lock timeout."""
    lock_timeout = settings.LOCK_TIMEOUT
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
        return []  # reported by E011
    messages: list[CheckMessage] = []
    for alias, config in getattr(django_settings, "DATABASES", {}).items():
        if not str(config.get("ENGINE", "")).endswith("sqlite3"):
            continue
        timeout = (config.get("OPTIONS") or {}).get("timeout", 5)
        if isinstance(timeout, int | float) and timeout > lock_timeout:
            messages.append(
                Warning(
                    f"DATABASES[{alias!r}]['OPTIONS']['timeout'] is {timeout:g} s, longer than "
                    f"BOTSESSIONS_LOCK_TIMEOUT ({lock_timeout:g} s): on SQLite an update waits "
                    "that long for the database's one writer.",
                    hint="Set the timeout option to at most BOTSESSIONS_LOCK_TIMEOUT.",
                    id="botsessions.W002",
                )
            )
    return messages


@register(Tags.urls)
def check_webhook_urls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every webhook view in the URLconf serves a configured bot."""
    from django.urls import get_resolver

    from .webhook import webhook_urls

    bots = settings.BOTS
    if not isinstance(bots, dict) or not getattr(django_settings, "ROOT_URLCONF", None):
        return []  # reported by E002; or no URLs at all (a bot served by runbot only)
    return [
        Error(
            f"The URL {str(pattern.pattern)!r} mounts a webhook view for bot {alias!r}, "
            "which BOTSESSIONS_BOTS does not configure: every update posted there would "
            "fail.",
            hint=f"Configured: {', '.join(map(repr, bots)) or 'none'}.",
            id="botsessions.E013",
        )
        for pattern, _, alias in webhook_urls(get_resolver().url_patterns)
        if alias not in bots
    ]


# The settings of one bot; anything else is a typo that would be ignored.
BOT_SETTING_NAMES = ("APPLICATION", "WEBHOOK_SECRET", "ALLOWED_UPDATES")


def _check_bot(alias: object, bot: object) -> list[CheckMessage]:
    if not isinstance(bot, dict):
        return [Error(f"BOTSESSIONS_BOTS[{alias!r}] must be a dict.", id="botsessions.E003")]
    messages: list[CheckMessage] = []
    unknown = [name for name in bot if name not in BOT_SETTING_NAMES]
    if unknown:
        messages.append(
            Warning(
                f"BOTSESSIONS_BOTS[{alias!r}] has settings botsessions does not know: "
                f"{', '.join(map(repr, unknown))}; they are ignored.",
                hint=f"A bot's settings are {', '.join(BOT_SETTING_NAMES)}.",
                id="botsessions.W003",
            )
        )
    application = bot.get("APPLICATION")
    if not isinstance(application, str) or "." not in application:
        messages.append(
            Error(
                f"BOTSESSIONS_BOTS[{alias!r}]['APPLICATION'] must be the dotted path of an "
                "Application or of a function that builds one.",
                id="botsessions.E004",
            )
        )
    else:
        messages += _check_application(alias, application)
    secret = bot.get("WEBHOOK_SECRET") or ""
    if not isinstance(secret, str):
        messages.append(
            Error(
                f"BOTSESSIONS_BOTS[{alias!r}]['WEBHOOK_SECRET'] must be a string.",
                id="botsessions.E007",
            )
        )
    elif not secret:
        text = (
            f"Bot {alias!r} has no WEBHOOK_SECRET: anyone who finds the webhook URL can "
            "post forged updates."
        )
        hint = "Set BOTSESSIONS_BOTS[alias]['WEBHOOK_SECRET'] and pass it to setwebhook."
        if django_settings.DEBUG:
            messages.append(Warning(text, hint=hint, id="botsessions.W001"))
        else:
            messages.append(Error(text, hint=hint, id="botsessions.E008"))
    elif not _valid_secret(secret):
        messages.append(
            Error(
                f"Bot {alias!r}: WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, "
                "_ and - (Telegram's rule for secret_token).",
                id="botsessions.E009",
            )
        )
    allowed = bot.get("ALLOWED_UPDATES")
    if allowed is not None and (
        not isinstance(allowed, list | tuple) or not all(isinstance(a, str) for a in allowed)
    ):
        messages.append(
            Error(
                f"BOTSESSIONS_BOTS[{alias!r}]['ALLOWED_UPDATES'] must be a list of update "
                "type names.",
                id="botsessions.E010",
            )
        )
    elif allowed is not None:
        from telegram import Update

        unknown = [name for name in allowed if name not in Update.ALL_TYPES]
        if unknown:
            messages.append(
                Error(
                    f"BOTSESSIONS_BOTS[{alias!r}]['ALLOWED_UPDATES'] names no update type "
                    f"Telegram sends: {', '.join(map(repr, unknown))}.",
                    hint="Use the names of telegram.Update.ALL_TYPES, such as 'message'.",
                    id="botsessions.E010",
                )
            )
    return messages


def _check_application(alias: object, path: str) -> list[CheckMessage]:
    """The application's path imports, to an application with sessions or a function.

    A function is not called: building the application is the bot's first update's work.
    """
    from telegram.ext import Application

    from .ptb import SessionApplication

    setting = f"BOTSESSIONS_BOTS[{alias!r}]['APPLICATION']"
    try:
        target = import_string(path)
    except Exception as exc:  # a bot module that fails as it is imported, too
        return [
            Error(
                f"{setting} cannot be imported: {type(exc).__name__}: {exc}",
                id="botsessions.E012",
            )
        ]
    if isinstance(target, Application):
        if isinstance(target, SessionApplication):
            return []
        why = "is an Application without sessions"
    elif isinstance(target, type):
        why = "is a class, not a function that builds the application"
    elif callable(target):
        return []
    else:
        why = f"is {type(target).__name__}, neither an Application nor a function"
    return [
        Error(
            f"{setting} ({path}) {why}.",
            hint="Build it with botsessions.use_sessions(ApplicationBuilder()...).build().",
            id="botsessions.E012",
        )
    ]


def _valid_secret(secret: str) -> bool:
    return 0 < len(secret) <= 256 and all(
        c.isascii() and (c.isalnum() or c in "_-") for c in secret
    )
