"""Run updates through a real session-enabled PTB application from a test.

The application talks to the fake Bot API server and runs on its own event loop; the
test's thread serves the database queries (as the webhook's request thread does), so
pytest-django's transactions and query counting see every statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from telegram import Update
from telegram.ext import ApplicationBuilder, BaseHandler

from botsessions import Sessions, use_sessions
from botsessions.ptb import SessionApplication
from botsessions.runner import BotRunner

from .fakebotapi import FakeBotAPI

TOKEN = "123456:TEST-token"


class BotHarness:
    """A SessionApplication with handlers, processing update dicts synchronously."""

    def __init__(
        self,
        api: FakeBotAPI,
        sessions: Sessions,
        handlers: Iterable[BaseHandler[Any, Any, Any] | tuple[BaseHandler[Any, Any, Any], int]],
        *,
        token: str = TOKEN,
        configure: Callable[[ApplicationBuilder[Any, Any, Any, Any, Any, Any]], Any] | None = None,
    ) -> None:
        builder = ApplicationBuilder().token(token).base_url(api.base_url).updater(None)
        if configure is not None:
            configure(builder)
        application = use_sessions(builder, sessions).build()
        assert isinstance(application, SessionApplication)
        for item in handlers:
            handler, group = item if isinstance(item, tuple) else (item, 0)
            application.add_handler(handler, group)
        self.application = application
        self.runner = BotRunner(application)
        self.errors: list[BaseException] = []

        async def record_error(update: object, context: Any) -> None:
            self.errors.append(context.error)

        application.add_error_handler(record_error)

    def process(self, update: dict[str, Any]) -> str:
        """Process one update; returns its outcome (raises StorageError like the webhook)."""
        return self.runner.process(self.runner.decode(update))

    def close(self) -> None:
        self.runner.shutdown()


def poll(
    application: SessionApplication,
    *updates: int | dict[str, Any],
    timeout: float = 10,
    before_stop: Callable[[], None] | None = None,
) -> None:
    """Hand the updates to PTB's fetcher, as runbot's Updater does, then stop.

    An int is a bare ``Update`` of that id; a dict is decoded with the application's bot.
    ``before_stop`` looks at the application once every update is processed.
    """

    async def run() -> None:
        async with application:
            await application.start()
            for update in updates:
                if isinstance(update, int):
                    await application.update_queue.put(Update(update))
                else:
                    await application.update_queue.put(Update.de_json(update, application.bot))
            await asyncio.wait_for(application.update_queue.join(), timeout)
            if before_stop is not None:
                before_stop()
            await asyncio.wait_for(application.stop(), timeout)

    asyncio.run(run())
