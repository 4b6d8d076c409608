"""Talking to the Bot API on behalf of a configured bot: webhook setup and long polling.

The management commands are thin wrappers over these functions, so the same calls can
be made from a deploy script or a test. Every failure a person can fix (no token, an
unreachable or refusing Bot API) comes out as :class:`BotAPIError` with a message that
says what to fix, instead of a traceback from deep inside python-telegram-bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from telegram import Bot, Update, WebhookInfo
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError, TimedOut

from .bots import bot_settings, build_application, session_application
from .errors import StorageError
from .ptb import SessionApplication
from .redaction import redact

logger = logging.getLogger("botsessions.polling")

T = TypeVar("T")

# How often runbot retries an update whose session could not be stored, and how long it
# waits before each retry: long enough for a database restart, short enough for Ctrl-C.
STORAGE_RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)


class BotAPIError(Exception):
    """A bot could not be reached or configured; the message says what to fix."""


@dataclass(frozen=True)
class WebhookSetup:
    """What :func:`set_webhook` asked Telegram for."""

    url: str
    secret_sent: bool
    allowed_updates: list[str]
    dropped_pending_updates: bool


def allowed_updates(alias: str) -> list[str]:
    """The update types a bot asks for: its ``ALLOWED_UPDATES`` or every type.

    Every type rather than Telegram's default, which leaves out chat member updates and
    reactions: a bot that added such a handler later would silently never see them.
    """
    configured = bot_settings(alias).get("ALLOWED_UPDATES")
    return list(configured) if configured is not None else list(Update.ALL_TYPES)


def webhook_secret(alias: str) -> str:
    """The secret token Telegram must send with every webhook call ("" when unset)."""
    return bot_settings(alias).get("WEBHOOK_SECRET") or ""


def set_webhook(
    alias: str, url: str, *, drop_pending_updates: bool = False, local_bot_api: bool = False
) -> WebhookSetup:
    """Point Telegram at ``url``, with the bot's secret token and allowed update types.

    Telegram delivers only to ``https://`` URLs. A local Bot API server (the
    ``telegram-bot-api`` binary run with ``--local``) delivers to ``http://`` ones too:
    ``local_bot_api=True`` says the bot talks to such a server.
    """
    try:
        check_webhook_url(url, local_bot_api=local_bot_api)
    except BotAPIError as exc:  # the URL it quotes may hold the token
        raise BotAPIError(_redacted(alias, str(exc))) from None
    with bot_api_errors(alias):
        secret = webhook_secret(alias)
        updates = allowed_updates(alias)

    async def call(bot: Bot) -> bool:
        return await bot.set_webhook(
            url=url,
            secret_token=secret or None,
            allowed_updates=updates,
            drop_pending_updates=drop_pending_updates,
        )

    _call_bot(alias, call)
    return WebhookSetup(url, bool(secret), updates, drop_pending_updates)


def check_webhook_url(url: str, *, local_bot_api: bool = False) -> None:
    """Refuse, with :class:`BotAPIError`, a URL Telegram would not deliver updates to."""
    schemes = ("https", "http") if local_bot_api else ("https",)
    try:
        parts = urlsplit(url)
        usable = parts.scheme in schemes and bool(parts.hostname)
    except ValueError:  # a malformed address, such as "https://[::1"
        usable = False
    if not usable or any(char.isspace() or not char.isprintable() for char in url):
        wanted = "an http:// or https://" if local_bot_api else "an https://"
        hint = "" if local_bot_api else " (http:// only with --local-bot-api)"
        raise BotAPIError(f"The webhook URL must be {wanted} URL{hint}, got {url!r}.")


def redact_token(alias: str, text: str) -> str:
    """``text`` without the token of bot ``alias`` (see :mod:`botsessions.redaction`).

    For everything a command prints about a bot: a webhook URL may hold the token (a
    common way to make it unguessable), and so may Telegram's last delivery error.
    """
    return _redacted(alias, text)


def delete_webhook(alias: str, *, drop_pending_updates: bool = False) -> None:
    """Remove the webhook, so the bot can be run by long polling again."""

    async def call(bot: Bot) -> bool:
        return await bot.delete_webhook(drop_pending_updates=drop_pending_updates)

    _call_bot(alias, call)


def webhook_info(alias: str) -> WebhookInfo:
    """What Telegram knows about the bot's webhook (URL, pending updates, last error)."""

    async def call(bot: Bot) -> WebhookInfo:
        return await bot.get_webhook_info()

    return _call_bot(alias, call)


def run_polling(alias: str, *, drop_pending_updates: bool = False) -> None:
    """Run the bot by long polling until SIGINT or SIGTERM, with its sessions.

    Each update is a unit of work on one of the application's database threads (see
    :class:`~botsessions.unit.DatabaseThreads`). On a stop signal the updates already
    fetched are processed and committed before this returns.
    """
    # A first getMe with a throwaway bot turns a bad token or an unreachable server into
    # one clear error, where PTB's start-up would log a traceback for it first.
    _call_bot(alias, lambda bot: bot.get_me())
    with bot_api_errors(alias):
        application = session_application(alias)
        if application.updater is None:
            raise BotAPIError(
                f"Bot {alias!r} was built without an Updater (ApplicationBuilder().updater("
                "None)), so it cannot poll; build it with the default updater."
            )
        keep_polling_through_storage_errors(application)
        application.run_polling(
            allowed_updates=allowed_updates(alias),
            drop_pending_updates=drop_pending_updates,
            close_loop=False,
        )


def keep_polling_through_storage_errors(application: SessionApplication) -> None:
    """Retry an update whose session could not be read or stored, then give up on it.

    :meth:`SessionApplication.process_update` raises :class:`StorageError` so that a
    webhook answers 5xx and Telegram redelivers. Under long polling nobody redelivers, and
    the exception would end PTB's update fetcher: every later update would be fetched,
    confirmed and never processed. Retrying is safe because a committed update is
    recorded and skipped when seen again.
    """
    process = application.process_update

    async def process_with_retries(update: object) -> None:
        for delay in (*STORAGE_RETRY_DELAYS, None):
            try:
                await process(update)
                return
            except StorageError as exc:
                update_id = getattr(update, "update_id", "?")
                if delay is None:
                    logger.error("update %s dropped: sessions unavailable: %s", update_id, exc)
                    return
                logger.warning("update %s: %s; retrying in %ss", update_id, exc, delay)
                await asyncio.sleep(delay)

    # SessionApplication instances have a __dict__, so this shadows the method for this
    # one application only (the one runbot owns), which PTB's fetcher then calls.
    application.process_update = process_with_retries  # type: ignore[method-assign]


@contextlib.contextmanager
def bot_api_errors(alias: str) -> Iterator[None]:
    """Turn the failures a person can fix into :class:`BotAPIError` naming the fix.

    The messages never show the bot's token (PTB's can: ``InvalidToken`` names it).
    """
    try:
        yield
    except ImproperlyConfigured as exc:
        raise BotAPIError(f"Bot {alias!r} is not configured: {exc}") from None
    except InvalidToken as exc:
        raise BotAPIError(
            _redacted(
                alias,
                f"Telegram refused the token of bot {alias!r} ({exc.message}); check "
                "TELEGRAM_BOT_TOKEN (or the token your application is built with).",
            )
        ) from None
    except BadRequest as exc:  # a subclass of NetworkError, but the server did answer
        raise BotAPIError(
            _redacted(alias, f"The Bot API refused the request of bot {alias!r}: {exc}")
        ) from None
    except (TimedOut, NetworkError) as exc:
        raise BotAPIError(
            _redacted(
                alias,
                f"Could not reach the Bot API for bot {alias!r}: {exc.message}. Check the "
                "network, or TELEGRAM_API_BASE_URL when using a local Bot API server.",
            )
        ) from None
    except TelegramError as exc:
        raise BotAPIError(
            _redacted(alias, f"The Bot API refused the request of bot {alias!r}: {exc}")
        ) from None


def _redacted(alias: str, text: str) -> str:
    try:
        token = build_application(alias).bot.token
    except Exception:  # unbuildable here: nothing of it can be in the text either
        return text
    return redact(text, token)


def _call_bot(alias: str, call: Callable[[Bot], Awaitable[T]]) -> T:
    """Run one Bot API call with a freshly built bot, closing its HTTP client after."""
    with bot_api_errors(alias):
        bot = build_application(alias).bot

        async def run() -> T:
            async with bot:
                return await call(bot)

        return asyncio.run(run())
