"""Running an application's updates from synchronous code (the webhook view).

PTB is asyncio; Django views and WSGI servers are threads. Each process keeps one event
loop per bot, where the application is initialized once and its HTTP client is reused.
The loop has no thread of its own: the request thread that brings an update runs it
(see :mod:`botsessions.sharedloop`), so PTB's dispatch, the handlers and the session's
queries run on that thread, on its connection and inside its transaction, and the
session is committed before the view answers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from telegram import Update
from telegram.ext import ExtBot

from .ptb import SessionApplication
from .sharedloop import SharedLoop
from .storage.db import DatabaseStorage

T = TypeVar("T")


class BotRunner:
    """One application, initialized once, on a loop of its own."""

    def __init__(self, application: SessionApplication) -> None:
        self.application = application
        self._pid = os.getpid()
        self._init_lock = threading.Lock()
        self._databases: list[DatabaseStorage] | None = None
        self._loop: SharedLoop | None = None
        self._loop_lock = threading.Lock()

    @property
    def shared_loop(self) -> SharedLoop:
        """The bot's loop (a new one after :meth:`shutdown`)."""
        loop = self._loop
        if loop is None:
            with self._loop_lock:
                if self._loop is None:
                    self._loop = SharedLoop()
                loop = self._loop
        return loop

    def run(
        self, coroutine_factory: Callable[[], Coroutine[Any, Any, T]], *, serve_db: bool = True
    ) -> T:
        """Run a coroutine on the bot's loop from this thread and return its result.

        With ``serve_db`` its database work runs on this thread; without it, on the
        worker pool (several connections at once).
        """
        return self.shared_loop.run(coroutine_factory, serve_db=serve_db)

    def initialize(self) -> None:
        """Initialize the application (``getMe``) once; retried after a failure."""
        if self.application._initialized:
            return
        with self._init_lock:
            self.run(self._initialize)

    async def _initialize(self) -> None:
        if not self.application._initialized:
            await self.application.initialize()

    def connect_databases(self) -> None:
        """Open this thread's connections to the databases the sessions are stored in.

        Called before the update is handed over, so that a slow connect happens outside
        the update's key locks; bots whose sessions live elsewhere connect to nothing.
        """
        if self._databases is None:
            storages = [f.resolve_storage() for f in self.application.sessions.fragments.values()]
            self._databases = list(
                {id(s): s for s in storages if isinstance(s, DatabaseStorage)}.values()
            )
        for storage in self._databases:
            storage.connect()

    def decode(self, data: dict[str, Any]) -> Update:
        """Turn a JSON object into an ``Update`` bound to the application's bot."""
        bot = self.application.bot
        update = Update.de_json(data, bot)
        # PTB does not check types: a list as chat id would crash it after the handlers
        # ran (a 500), and an id too long for a session key would fail the write (a 503).
        for party in (update.effective_chat, update.effective_user):
            ident = getattr(party, "id", 0)
            valid = isinstance(ident, int) and not isinstance(ident, bool)
            if not valid or not -(2**63) <= ident < 2**63:
                raise ValueError("chat and user ids must be 64-bit integers")
        if isinstance(bot, ExtBot) and bot.callback_data_cache is not None:
            bot.insert_callback_data(update)
        return update

    def process(self, update: Update) -> str:
        """Process one update and return its outcome; raises StorageError to retry."""
        self.initialize()
        return self.run(lambda: self.application.process_update_with_sessions(update))

    def shutdown(self) -> None:
        """Shut the application down and close the loop (tests, process exit)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        if self.application._initialized:
            loop.run(self.application.shutdown)
        loop.close()


_runners: dict[str, BotRunner] = {}
_runners_lock = threading.Lock()


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
