"""botsessions' settings, read from ``django.conf.settings`` each time they are used.

Reading lazily keeps ``override_settings`` working in tests. Every setting is
optional; :mod:`botsessions.checks` reports values of the wrong shape.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings

MAX_PURGE_BATCH_SIZE = 10_000
"""The most rows one purge statement deletes (``--batch-size``, ``BOTSESSIONS_PURGE_BATCH_SIZE``).

A batch's ids all go into that statement, and SQLite takes at most 32,766 parameters in
one (PostgreSQL binding on the server, 65,535).
"""

MAX_RETENTION = timedelta(days=3650)
"""The longest ``BOTSESSIONS_PROCESSED_UPDATES_RETENTION``: ten years, well past any use,
and within what a date minus it, and a Redis expiry, can hold."""


class Settings:
    """One typed property per setting."""

    @property
    def BOTS(self) -> dict[str, dict[str, Any]]:
        """Bots served by this project: alias → {"APPLICATION": dotted path, ...}.

        ``APPLICATION`` names a ``telegram.ext.Application`` or a function returning one;
        ``WEBHOOK_SECRET`` is the secret token Telegram sends with every webhook call;
        ``ALLOWED_UPDATES`` (optional) is the list of update types ``setwebhook`` asks for.
        """
        return getattr(django_settings, "BOTSESSIONS_BOTS", {})

    @property
    def PROCESSED_UPDATES_RETENTION(self) -> timedelta:
        """How long the exactly-once records are kept (Telegram redelivers for 24 hours)."""
        value = getattr(django_settings, "BOTSESSIONS_PROCESSED_UPDATES_RETENTION", None)
        if value is None:
            return timedelta(hours=25)
        return value if isinstance(value, timedelta) else timedelta(seconds=value)

    @property
    def LOCK_TIMEOUT(self) -> float:
        """Seconds an update may wait for a lock (its session keys, or rows it writes)."""
        return getattr(django_settings, "BOTSESSIONS_LOCK_TIMEOUT", 10)

    @property
    def MAX_BODY_SIZE(self) -> int:
        """The largest webhook body accepted, in bytes."""
        return getattr(django_settings, "BOTSESSIONS_MAX_BODY_SIZE", 1024 * 1024)

    @property
    def PURGE_BATCH_SIZE(self) -> int:
        """How many rows the purge command deletes per statement (at most 10,000)."""
        return getattr(django_settings, "BOTSESSIONS_PURGE_BATCH_SIZE", 1000)

    @property
    def ADMIN_BATCH_SIZE(self) -> int:
        """How many rows a bulk reset or delete (admin actions, maintenance) handles at once."""
        return getattr(django_settings, "BOTSESSIONS_ADMIN_BATCH_SIZE", 500)


settings = Settings()
