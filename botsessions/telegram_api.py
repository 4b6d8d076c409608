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
import signal
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError
from telegram import Bot, Update, WebhookInfo
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError, TimedOut

from .backoff import Backoff
from .bots import bot_settings, build_application, session_application
from .confirming import confirm_when_processed
from .database_errors import a_deadlock
from .errors import ConfigurationError, LockTimeout, SessionConflict, StorageError
from .ptb import SessionApplication
from .redaction import redact
from .retried_jobs import JobsOfTries

logger = logging.getLogger("botsessions.polling")

T = TypeVar("T")


#: After SessionConflict or LockTimeout: another process holds or changed the session,
#: which is usually over within moments.
CONTENTION_BACKOFF = Backoff(first=0.05, cap=5.0)
#: After any other storage or database failure: an outage, such as a database restart.
OUTAGE_BACKOFF = Backoff(first=1.0, cap=30.0)
#: An update that keeps failing is logged on its first failure, then at most this often.
RETRY_LOG_INTERVAL = 60.0
#: How often a pause between tries looks whether runbot is stopping.
STOP_CHECK_INTERVAL = 0.2
#: Once runbot is stopping, the tries an update failing on contention still gets
#: (an outage gets one): a brief overlap with another process should not lose it.
TRIES_AT_STOP_AFTER_CONTENTION = 4
#: The pause before each of those tries, times its number (0.05, 0.1, 0.15 s).
PAUSE_AT_STOP = 0.05


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
    :class:`~botsessions.unit.DatabaseThreads`), and is confirmed to Telegram only once
    it is processed (:mod:`botsessions.confirming`). On a stop signal the updates already
    fetched are processed and committed before this returns, or are left for the next
    start when their sessions cannot be stored then (see
    :func:`keep_polling_through_storage_errors`).
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
        confirming = confirm_when_processed(application)
        keep_polling_through_storage_errors(application, on_processed=confirming.finished)
        try:
            application.run_polling(
                allowed_updates=allowed_updates(alias),
                drop_pending_updates=drop_pending_updates,
                close_loop=False,
            )
        except (SystemExit, KeyboardInterrupt):
            _log_abandoned_updates(application)
            raise
        finally:
            _remove_stop_signal_handlers()


def _remove_stop_signal_handlers() -> None:
    """Give Ctrl-C and SIGTERM back to the process once polling has ended.

    PTB's ``run_polling`` sends them to the event loop it runs on, and leaves them there
    when it does not close that loop (runbot does not: the thread that called it, a
    script's or a test's, may use its loop again). Left alone, a later Ctrl-C would go to
    a loop that no longer runs, and do nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread: PTB set none elsewhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = asyncio.get_event_loop_policy().get_event_loop()
    if loop.is_closed():
        return
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGABRT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)


def _log_abandoned_updates(application: SessionApplication) -> None:
    """Name the updates a second Ctrl-C left unprocessed (Telegram delivers them again).

    The first stop signal ends polling gracefully; PTB turns another one, during that
    stop, into ``SystemExit`` out of ``run_polling``, leaving the update being processed
    and those still queued behind. None of them was confirmed to Telegram.
    """
    retrying = application.process_update
    left = list(retrying.in_progress) if isinstance(retrying, _Retrying) else []
    with contextlib.suppress(asyncio.QueueEmpty):
        while True:  # the process is exiting: nobody else reads the queue any more
            left.append(application.update_queue.get_nowait())
    ids = [getattr(update, "update_id", None) for update in left]
    lost = [str(update_id) for update_id in ids if update_id is not None]
    if lost:
        logger.error(
            "stopped before processing update(s) %s: Telegram delivers them again on the "
            "next start",
            ", ".join(lost),
        )


def keep_polling_through_storage_errors(
    application: SessionApplication, on_processed: Callable[[object], None] | None = None
) -> None:
    """Retry an update whose session could not be read or stored until it is, or runbot stops.

    :meth:`SessionApplication.process_update` raises :class:`StorageError` (or a
    database error from the commit) so that a webhook answers 503 and Telegram
    redelivers. Under long polling nobody redelivers while runbot runs: the next
    getUpdates confirms every update fetched before it, so an update given up on would
    be lost. Left alone, the exception would also end PTB's update fetcher, and every
    later update would be fetched and never processed. Retrying is safe because a
    committed update is recorded and skipped when seen again.

    So a try that fails that way is followed by another, without limit:

    - after :class:`SessionConflict` or :class:`LockTimeout` (another process holds or
      changed the session) or a deadlock the database resolved against it, paced by
      :data:`CONTENTION_BACKOFF`, logged as a warning;
    - after any other storage error, or a database's ``OperationalError`` or
      ``InterfaceError`` (an outage), paced by :data:`OUTAGE_BACKOFF`, logged as a
      warning, then as an error while it lasts.

    Any other database error (a bug, a missing table) would fail every try: it goes to
    the application's error handlers, once, like any other exception.

    Jobs a failed try scheduled on the JobQueue and that have not run are removed before
    the next try (:mod:`botsessions.retried_jobs`), as its rows are rolled back.

    An update is logged on its first failure, then at most every
    :data:`RETRY_LOG_INTERVAL` seconds, with its count of tries. Updates are processed
    one at a time (unless the application was built with ``concurrent_updates``): the
    later ones wait meanwhile, in order, instead of failing in turn.

    Once runbot is stopping (Ctrl-C, SIGTERM), PTB processes the updates it fetched
    before it exits, and a stop must not wait for the storage to come back: an update
    gets one more try at most (a pause ends at once), or a few quick ones after
    contention, and is left for the next start if those fail: ``on_processed`` is not
    called for it, so runbot does not confirm it to Telegram. After an outage has left
    one, the rest are left without a try, each logged, as each try could take the
    database's whole connection timeout.

    Any other exception is not retried (it would fail the same way): it goes to the
    application's error handlers, as PTB does for concurrent updates, and polling goes
    on with the next update.

    ``on_processed(update)`` is called once an update is processed: committed, or ended
    in the error handlers.
    """
    # SessionApplication instances have a __dict__, so this shadows the method for this
    # one application only (the one runbot owns), which PTB's fetcher then calls.
    application.process_update = _Retrying(application, on_processed)  # type: ignore[method-assign]


class _Retrying:
    """The ``process_update`` of runbot's application: see the function above."""

    def __init__(
        self,
        application: SessionApplication,
        on_processed: Callable[[object], None] | None = None,
    ) -> None:
        self.application = application
        self.process = application.process_update
        self.on_processed = on_processed
        self.jobs = JobsOfTries(application)
        #: An outage left an update during the stop: the rest are left untried.
        self.unavailable_at_stop = False
        #: The updates being processed, for the log of a stop that cannot wait for them.
        self.in_progress: list[object] = []

    async def __call__(self, update: object) -> None:
        self.in_progress.append(update)
        try:
            processed = await self._process(update)
        finally:
            self.in_progress.remove(update)
        if processed and self.on_processed is not None:
            self.on_processed(update)

    async def _process(self, update: object) -> bool:
        """Whether ``update`` was processed (``False``: left for the next start)."""
        update_id = getattr(update, "update_id", "?")
        if self.unavailable_at_stop and not self.application.running:
            logger.error(
                "update %s left untried: sessions unavailable while the bot was stopping; "
                "Telegram delivers it again on the next start",
                update_id,
            )
            return False
        started = time.monotonic()
        failures = 0
        logged_at: float | None = None
        tries_at_stop = 0
        while True:
            try:
                with self.jobs.watching() as attempt:
                    await self.process(update)
            except (StorageError, OperationalError, InterfaceError) as exc:
                # What a retry can cure: contention, an outage. Any other database error
                # (a bug, a missing table) would fail every try: it goes to the error
                # handlers below, as any other exception does.
                failures += 1
                removed = self.jobs.remove(attempt)
                if removed:
                    logger.info(
                        "update %s: removed %d job(s) its failed try scheduled",
                        update_id, removed,
                    )  # fmt: skip
                deadlock = a_deadlock(exc)
                contention = deadlock or isinstance(exc, SessionConflict | LockTimeout)
                if deadlock:
                    what = "a deadlock with another update"
                elif contention:
                    what = "session held by another process"
                else:
                    what = "sessions unavailable"
                if not self.application.running:
                    tries_at_stop += 1
                    if contention and tries_at_stop < TRIES_AT_STOP_AFTER_CONTENTION:
                        # Another process's update is usually over within moments.
                        await asyncio.sleep(PAUSE_AT_STOP * tries_at_stop)
                        continue
                    self.unavailable_at_stop = self.unavailable_at_stop or not contention
                    logger.error(
                        "update %s left unprocessed: %s while the bot was stopping (%d %s): "
                        "%s; Telegram delivers it again on the next start",
                        update_id, what, failures, "try" if failures == 1 else "tries", exc,
                    )  # fmt: skip
                    return False
                delay = (CONTENTION_BACKOFF if contention else OUTAGE_BACKOFF).delay(failures)
                now = time.monotonic()
                if logged_at is None or now - logged_at >= RETRY_LOG_INTERVAL:
                    level = logging.WARNING
                    if logged_at is not None and not contention:
                        level = logging.ERROR
                    later = self.application.concurrent_updates <= 1
                    logger.log(
                        level,
                        "update %s not stored (try %d, %.0fs so far): %s: %s; retrying in "
                        "%.2fs%s",
                        update_id, failures, now - started, what, exc, delay,
                        "; later updates wait for it" if later else "",
                    )  # fmt: skip
                    logged_at = now
                await _pause_unless_stopping(self.application, delay)
            except Exception as exc:
                await self.application.process_error(update, exc)
                return True
            else:
                if failures:
                    # At the level of the warning that said it failed, so that a project
                    # that shows warnings sees its end too.
                    logger.warning(
                        "update %s processed after %d tries in %.1fs",
                        update_id, failures + 1, time.monotonic() - started,
                    )  # fmt: skip
                return True


async def _pause_unless_stopping(application: SessionApplication, seconds: float) -> None:
    """Sleep ``seconds``, or less: until the application is stopping.

    PTB's ``Application.stop`` marks the application as no longer running, then waits
    for the updates already fetched instead of cancelling them: a pause that went on
    regardless would hold up Ctrl-C for as long as the storage is down.
    """
    deadline = time.monotonic() + seconds
    while application.running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, STOP_CHECK_INTERVAL))


@contextlib.contextmanager
def bot_api_errors(alias: str) -> Iterator[None]:
    """Turn the failures a person can fix into :class:`BotAPIError` naming the fix.

    The messages never show the bot's token (PTB's can: ``InvalidToken`` names it).
    """
    try:
        yield
    except ImproperlyConfigured as exc:
        raise BotAPIError(f"Bot {alias!r} is not configured: {exc}") from None
    except ConfigurationError as exc:  # refused as it is built or initialized
        raise BotAPIError(_redacted(alias, f"Bot {alias!r} cannot run: {exc}")) from None
    except InvalidToken as exc:
        raise BotAPIError(
            _redacted(
                alias,
                f"Telegram refused the token of bot {alias!r} ({exc.message}); check the "
                "token its application is built with (the demo's is TELEGRAM_BOT_TOKEN).",
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
