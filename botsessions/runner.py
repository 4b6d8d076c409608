"""Running an application's updates from synchronous code (the webhook view).

PTB is asyncio; Django views under WSGI are threads. Each process keeps, per bot, one
event loop on a thread of its own: the application is initialized there once, and its
HTTP client lives there for the life of the process. A request thread hands its update
to that loop and lends itself to the update's database work meanwhile (see
:mod:`botsessions.unit`, which describes the whole path of one update).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import sync_to_async
from telegram import Update
from telegram.ext import ExtBot

from .key_parts import check_key_parts
from .ptb import SessionApplication
from .unit import UnitExecutor, UnitOfWork, process_as_unit, run_in_unit

T = TypeVar("T")
logger = logging.getLogger("botsessions")


class BotRunner:
    """One application, initialized once, on an event loop with a thread of its own."""

    def __init__(self, application: SessionApplication) -> None:
        self.application = application
        # Its JobQueue never runs here: scheduling on it, or jobs scheduled already, and
        # conversation timeouts are refused (SessionApplication.initialize).
        application.served_by_webhook = True
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._starting = asyncio.Lock()  # on the bot's loop: one start at a time

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The bot's loop, started on first use (and anew after :meth:`shutdown`)."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="botsessions-loop", daemon=True
                )
                self._thread.start()
                self._loop = loop
                self._starting = asyncio.Lock()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the bot's loop and wait for its result (no database work)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def initialize(self) -> None:
        """Start the application once: initialize it (``getMe``), then its ``post_init``.

        This is what ``run_webhook`` does before it serves, without the ``Updater``;
        after a failure the next update tries again.
        """
        if not self._started:
            self.run(self._initialize())

    async def _initialize(self) -> None:
        # Every caller, the sync view's threads and the async view's requests, comes
        # here on the bot's loop: a burst of first updates starts the application once.
        async with self._starting:
            if self._started:
                return
            application = self.application
            if not application._initialized:
                await application.initialize()
            if application.post_init is not None:
                await application.post_init(application)
            self._started = True

    async def ainitialize(self) -> None:
        """:meth:`initialize` for a caller on another event loop (an ASGI server's).

        Shielded: a client that goes away must not cut ``post_init`` off halfway (the
        next update would run it again from the start).
        """
        if not self._started:
            await asyncio.shield(self.run_from_loop(self._initialize()))

    async def run_from_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the bot's loop and await it from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def decode(self, data: dict[str, Any]) -> Update:
        """Turn a JSON object into an ``Update`` bound to the application's bot."""
        bot = self.application.bot
        update = Update.de_json(data, bot)
        # PTB does not check types: every field a session key can be built from is
        # checked before anything runs (InvalidKeyPart is a ValueError: a 400).
        check_key_parts(update)
        if isinstance(bot, ExtBot) and bot.callback_data_cache is not None:
            _check_callback_data(update)
        return update

    def process(self, update: Update) -> str:
        """Process one update as a unit of work on this thread's connection.

        Returns its :class:`~botsessions.outcome.Outcome` once it is committed; raises
        :class:`~botsessions.errors.StorageError` (or a database error) when it was
        rolled back and must be delivered again.
        """
        self.initialize()
        # This thread runs the update's database work while it waits for the loop, so
        # its connection holds the transaction (inside any the caller has open).
        unit = UnitOfWork(self.application.unit_database)
        executor = CurrentThreadExecutor(None)
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._run(update, UnitExecutor(unit, executor)), self.loop
            )
            executor.run_until_future(future)
            handled = future.result()
        except BaseException:
            unit.end(None)
            raise
        outcome = unit.end(handled)
        if unit.sends_due:
            unit.send_after_commit_here()
        return outcome

    async def aprocess(self, update: Update) -> str:
        """:meth:`process` for a caller on another event loop (the async webhook view).

        The update's database work runs on one of the application's database threads
        (:class:`~botsessions.unit.DatabaseThreads`), which returns its connection (to
        the pool, if there is one) after each update, as Django does after a request.
        The update runs to its end even when the caller is cancelled (the client went
        away): what is committed is then also sent.
        """
        await self.ainitialize()
        running = asyncio.run_coroutine_threadsafe(self._process_as_unit(update), self.loop)
        _in_flight.add(running)
        running.add_done_callback(_in_flight.discard)
        return await asyncio.shield(asyncio.wrap_future(running))

    async def _run(self, update: Update, executor: UnitExecutor) -> str:
        self._resolve_callback_data(update)
        return await run_in_unit(self.application, update, executor)

    async def _process_as_unit(self, update: Update) -> str:
        self._resolve_callback_data(update)
        return await process_as_unit(self.application, update, fresh_connections=True)

    def _resolve_callback_data(self, update: Update) -> None:
        """Swap arbitrary callback data in, on the loop that owns the bot's cache."""
        bot = self.application.bot
        if isinstance(bot, ExtBot) and bot.callback_data_cache is not None:
            bot.insert_callback_data(update)

    async def _shutdown(self, started: bool) -> None:
        application = self.application
        await application.shutdown()
        if started and application.post_shutdown is not None:
            await application.post_shutdown(application)

    def shutdown(self) -> None:
        """Shut the application down (then its ``post_shutdown``), and stop the loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        started, self._started = self._started, False
        if self.application._initialized:
            asyncio.run_coroutine_threadsafe(self._shutdown(started), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self.application.database_threads.shutdown()


_runners: dict[str, BotRunner] = {}
_runners_lock = threading.Lock()
# The updates the async view handed to a bot's loop and that have not ended yet.
_in_flight: set[Future[str]] = set()


async def finish_updates_in_flight() -> None:
    """Wait for the updates the async view started, those whose client went away
    included: an ASGI server that stops waits for requests, not for them."""
    pending = list(_in_flight)
    if pending:
        logger.info("botsessions: waiting for %d update(s) in flight to end", len(pending))
        await asyncio.wait([asyncio.wrap_future(future) for future in pending])


async def arunner_for(alias: str) -> BotRunner:
    """:func:`runner_for` from an event loop: the first call builds the bot off the loop,
    as its factory may use the ORM or block."""
    runner = _runners.get(alias)
    if runner is not None and runner._pid == os.getpid():
        return runner
    return await sync_to_async(runner_for)(alias)


def runner_for(alias: str) -> BotRunner:
    """The runner of bot ``alias`` in this process (a forked worker gets its own)."""
    from .bots import forget_applications, session_application

    with _runners_lock:
        runner = _runners.get(alias)
        if runner is not None and runner._pid != os.getpid():
            _runners.clear()
            forget_applications()
            runner = None
        if runner is None:
            runner = BotRunner(session_application(alias))
            _runners[alias] = runner
        return runner


def shutdown_runners() -> None:
    """Stop every runner of this process."""
    with _runners_lock:
        runners = list(_runners.values())
        _runners.clear()
    for runner in runners:
        runner.shutdown()


# The messages PTB's cache looks into besides the update's own, at any depth.
_NESTED_MESSAGES = ("pinned_message", "reply_to_message")


def _check_callback_data(update: Update) -> None:
    """Refuse callback data that is not text where PTB's cache of arbitrary callback data
    will slice it (it would raise while the update is processed): a 400, not a 500."""
    query = update.callback_query
    if query is not None and query.data is not None and not isinstance(query.data, str):
        raise ValueError("callback_query.data is not a string")
    pending = [update.effective_message, query.message if query is not None else None]
    seen: set[int] = set()
    while pending:
        message = pending.pop()
        if message is None or id(message) in seen:
            continue
        seen.add(id(message))
        pending += [getattr(message, name, None) for name in _NESTED_MESSAGES]
        markup = getattr(message, "reply_markup", None)
        for row in getattr(markup, "inline_keyboard", ()):
            for button in row:
                data = getattr(button, "callback_data", None)
                if data is not None and not isinstance(data, str):
                    raise ValueError("an inline button's callback_data is not a string")
