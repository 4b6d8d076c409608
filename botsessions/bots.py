"""The bots a project serves, as configured in ``BOTSESSIONS_BOTS``.

Each alias names an ``Application`` (or a function that builds one). The webhook view,
the management commands and the admin all find their application here, built once
per process.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from telegram.ext import Application

from .conf import settings
from .ptb import SessionApplication

_built: dict[str, Application[Any, Any, Any, Any, Any, Any]] = {}
_lock = threading.Lock()


def bot_settings(alias: str) -> dict[str, Any]:
    """The settings dict of one bot; a clear error for an unknown alias."""
    bots = settings.BOTS
    if alias not in bots:
        known = ", ".join(sorted(bots)) or "none"
        raise ImproperlyConfigured(
            f"No bot {alias!r} in BOTSESSIONS_BOTS (configured: {known})."
        )
    return bots[alias]


def build_application(alias: str) -> Application[Any, Any, Any, Any, Any, Any]:
    """Build a new application for ``alias`` (not cached, not initialized)."""
    target = import_string(bot_settings(alias)["APPLICATION"])
    application = target() if callable(target) and not isinstance(target, Application) else target
    if not isinstance(application, Application):
        raise ImproperlyConfigured(
            f"BOTSESSIONS_BOTS[{alias!r}]['APPLICATION'] gave {application!r}, "
            "not a telegram.ext.Application."
        )
    return application


def get_application(alias: str) -> Application[Any, Any, Any, Any, Any, Any]:
    """The application of ``alias``, built once per process."""
    with _lock:
        if alias not in _built:
            _built[alias] = build_application(alias)
        return _built[alias]


def session_application(alias: str) -> SessionApplication:
    """Like :func:`get_application`, insisting that the application has sessions."""
    application = get_application(alias)
    if not isinstance(application, SessionApplication):
        raise ImproperlyConfigured(
            f"Bot {alias!r} is not a SessionApplication; build it with use_sessions()."
        )
    return application


def forget_applications() -> None:
    """Drop the built applications (tests, and after a fork)."""
    with _lock:
        _built.clear()
