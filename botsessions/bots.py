"""The bots a project serves, as configured in ``BOTSESSIONS_BOTS``.

Each alias names an ``Application`` (or a function that builds one). The webhook view,
the management commands and the admin all find their application here, built once
per process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from telegram.ext import Application

from .conf import settings
from .config import Sessions
from .ptb import SessionApplication

logger = logging.getLogger("botsessions")

_built: dict[str, Application[Any, Any, Any, Any, Any, Any]] = {}
_lock = threading.Lock()


def bot_settings(alias: str) -> dict[str, Any]:
    """The settings dict of one bot; a clear error for an unknown alias."""
    bots = settings.BOTS
    if alias not in bots:
        known = ", ".join(sorted(bots)) or "none"
        raise ImproperlyConfigured(f"No bot {alias!r} in BOTSESSIONS_BOTS (configured: {known}).")
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


# -- which configuration wrote a row: bot id → (alias, sessions) ----------------------

_configs: dict[int, tuple[str, Sessions]] | None = None
_configs_lock = threading.Lock()


def session_configs() -> dict[int, tuple[str, Sessions]]:
    """Every configured bot that has sessions, by bot id, built once per process.

    A bot that cannot be built here (no token in this environment, an import error, a
    module that fails as it is imported) is left out with a warning: the admin then
    treats its rows as of unknown configuration instead of failing, and
    ``purgesessions`` still purges.
    """
    global _configs
    with _configs_lock:
        if _configs is None:
            found: dict[int, tuple[str, Sessions]] = {}
            for alias in settings.BOTS:
                try:
                    application = build_application(alias)
                    if not isinstance(application, SessionApplication):
                        continue
                    # With PTB's state (DjangoPersistence), its fragments too.
                    sessions = application.engine_sessions
                except Exception as exc:  # its module may fail as it is imported, too
                    logger.warning(
                        "botsessions: bot %r is not available here: %s: %s",
                        alias,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                found.setdefault(application.session_bot_id, (alias, sessions))
            _configs = found
        return _configs


def sessions_for_bot_id(bot_id: int) -> Sessions | None:
    """The sessions configuration of the bot with this id, or ``None`` if none is known."""
    config = session_configs().get(bot_id)
    return config[1] if config is not None else None


@receiver(setting_changed)
def _forget_session_configs(**kwargs: Any) -> None:
    """Settings changed (``override_settings``): the bots may be different now."""
    global _configs
    with _configs_lock:
        _configs = None
