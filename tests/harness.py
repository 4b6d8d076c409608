"""Run updates through a real session-enabled PTB application from a test.

The application talks to the fake Bot API server and runs on its own event loop; the
test's thread serves the database queries (as the webhook's request thread does), so
pytest-django's transactions and query counting see every statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

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
