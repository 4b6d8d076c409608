"""Running an application's updates from synchronous code (the webhook view).

PTB is asyncio; Django views and WSGI servers are threads. Each process keeps one event
loop in a background thread per bot, where the application is initialized once and its
HTTP client is reused. A request thread hands its update to that loop and, while it
waits, serves the update's database queries itself (see :mod:`botsessions.dbthread`),
so the session commit happens on the request's own connection before it answers.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from telegram import Update
from telegram.ext import ExtBot

from .dbthread import process_on_caller_thread
from .ptb import SessionApplication
from .storage.db import DatabaseStorage


class BotRunner:
    """One application, initialized once, on a loop of its own."""

    def __init__(self, application: SessionApplication) -> None:
        self.application = application
        self._pid = os.getpid()
        self._ready = threading.Event()
        self._start_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._databases: list[DatabaseStorage] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self.loop is not None and self._thread is not None and self._thread.is_alive():
                return self.loop
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="botsessions-bot-loop", daemon=True
            )
            self._thread.start()
            self.loop = loop
            return loop

    def initialize(self) -> None:
        """Initialize the application (``getMe``) once; retried after a failure."""
        if self.application._initialized:
            return
        with self._init_lock:
            loop = self._ensure_started()
            asyncio.run_coroutine_threadsafe(self._initialize(), loop).result()

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
        loop = self._ensure_started()
        return process_on_caller_thread(
            lambda: self.application.process_update_with_sessions(update), loop=loop
        )

    def shutdown(self) -> None:
        """Shut the application down and stop the loop (tests, process exit)."""
        if self.loop is None:
            return
        if self.application._initialized:
            asyncio.run_coroutine_threadsafe(self.application.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self.loop = None


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
