"""The bots the benchmark compares, the baseline's driver, and the timing loop.

All keep the demo's handlers and filters (botproject.bot), so that an update takes the
same way through PTB: a plain ``Application`` counting into dicts (the in-process
baseline, driven by :class:`PlainRunner`); the same handlers behind the webhook view and
``BotRunner`` without sessions (the HTTP baseline); the demo on a ``MemoryStorage`` (the
session engine without SQL, for the profile).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, CommandHandler, MessageHandler, filters

from botproject.bot import build_application
from botproject.bot import sessions as demo_sessions
from botsessions import DjangoPersistence, MemoryStorage, Sessions, use_sessions
from botsessions.ptb import Outcome, SessionApplication

# What the session-free handlers count: chat id → 🍕 count, user id → messages.
pizza_counts: dict[int, int] = {}
message_counts: dict[int, int] = {}


async def count_message(update: Update, context: Any) -> None:
    """The demo's counter, with dicts in place of the session."""
    assert update.effective_message is not None and update.effective_user is not None
    user_id = update.effective_user.id
    message_counts[user_id] = message_counts.get(user_id, 0) + 1
    if "🍕" in (update.effective_message.text or ""):
        assert update.effective_chat is not None
        chat_id = update.effective_chat.id
        pizza_counts[chat_id] = pizza_counts.get(chat_id, 0) + 1


async def reply(update: Update, context: Any) -> None:
    """The demo's commands (/hunger, /stats, /reset, /buy) all answer; these only reply."""
    assert update.effective_message is not None and update.effective_chat is not None
    count = pizza_counts.get(update.effective_chat.id, 0)
    await update.effective_message.reply_text(f"Your hunger level is {count}!")


def _application(builder: ApplicationBuilder[Any, Any, Any, Any, Any, Any]) -> Application:  # type: ignore[type-arg]
    """The session-free handlers, registered as botproject.bot registers the demo's."""
    base = settings.TELEGRAM_API_BASE_URL.rstrip("/")
    builder = builder.token(settings.TELEGRAM_BOT_TOKEN).updater(None)
    if base:
        builder = builder.base_url(base).base_file_url(base.removesuffix("/bot") + "/file/bot")
    application = builder.build()
    for command in ("hunger", "stats", "reset", "buy"):
        application.add_handler(CommandHandler(command, reply))
    application.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, count_message)
    )
    return application


def plain_application() -> Application:  # type: ignore[type-arg]
    """The demo's handlers, session-free, in a plain PTB application."""
    return _application(ApplicationBuilder())


class SessionsOffApplication(SessionApplication):
    """A SessionApplication that processes updates as a plain Application does."""

    async def process_update_with_sessions(self, update: object) -> str:
        await Application.process_update(self, update)
        return Outcome.UNCHANGED


def sessions_off_application() -> SessionApplication:
    """The session-free handlers behind the webhook view and BotRunner (the HTTP baseline)."""
    builder = ApplicationBuilder().application_class(SessionsOffApplication)
    application = _application(use_sessions(builder, Sessions(initial=dict)))
    assert isinstance(application, SessionApplication)
    return application


def memory_application() -> SessionApplication:
    """The demo bot with its fragments (keys, initial data) stored in memory."""
    storage = MemoryStorage()
    fragments = {
        name: dataclasses.replace(fragment, storage=storage)
        for name, fragment in demo_sessions.fragments.items()
    }
    application = build_application()
    assert isinstance(application, SessionApplication)
    application.sessions = Sessions.multi(migrate_chats=demo_sessions.migrate_chats, **fragments)
    return application


async def count_in_ptb_state(update: Update, context: Any) -> None:
    """The demo's counter in PTB's chat_data and user_data instead of the session."""
    assert update.effective_message is not None
    context.user_data["messages"] = context.user_data.get("messages", 0) + 1
    if "🍕" in (update.effective_message.text or ""):
        context.chat_data["pizza_count"] = context.chat_data.get("pizza_count", 0) + 1


async def reply_from_ptb_state(update: Update, context: Any) -> None:
    assert update.effective_message is not None
    count = context.chat_data.get("pizza_count", 0)
    await update.effective_message.reply_text(f"Your hunger level is {count}!")


def ptb_state_application() -> SessionApplication:
    """The demo's handlers written for PTB's persistence, on DjangoPersistence (no Sessions)."""
    base = settings.TELEGRAM_API_BASE_URL.rstrip("/")
    builder = ApplicationBuilder().token(settings.TELEGRAM_BOT_TOKEN).updater(None)
    if base:
        builder = builder.base_url(base).base_file_url(base.removesuffix("/bot") + "/file/bot")
    application = use_sessions(builder.persistence(DjangoPersistence())).build()
    for command in ("hunger", "stats", "reset", "buy"):
        application.add_handler(CommandHandler(command, reply_from_ptb_state))
    application.add_handler(
        MessageHandler(
            filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, count_in_ptb_state
        )
    )
    assert isinstance(application, SessionApplication)
    return application


class PlainRunner:
    """The conventional way to drive a PTB application from synchronous code.

    The application lives on an event loop with a thread of its own; each update is
    handed to it with ``run_coroutine_threadsafe`` and the caller blocks on the
    future's ``result()``. Nothing else: no unit of work, no thread lent for database
    work. This is the in-process baseline; keep it as it is.
    """

    def __init__(self, application: Application) -> None:  # type: ignore[type-arg]
        self.application = application
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.run(application.initialize())

    def run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()  # type: ignore[arg-type]

    def decode(self, data: dict[str, Any]) -> Update:
        update = Update.de_json(data, self.application.bot)
        assert update is not None
        return update

    def process(self, update: Update) -> str:
        self.run(self.application.process_update(update))
        return Outcome.UNCHANGED

    def shutdown(self) -> None:
        self.run(self.application.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def measure(runner: Any, updates: list[dict[str, Any]]) -> dict[str, Any]:
    """Time ``runner.process(runner.decode(update))`` for each update.

    Returns µs per update (and of it, decoding), p50, p99 and the outcomes.
    """
    decode: Callable[[dict[str, Any]], Any] = runner.decode
    process: Callable[[Any], str] = runner.process
    clock = time.perf_counter_ns
    latencies: list[int] = []
    decoding = 0
    outcomes: Counter[str] = Counter()
    started = clock()
    for data in updates:
        begin = clock()
        update = decode(data)
        decoded = clock()
        outcomes[process(update)] += 1
        latencies.append(clock() - begin)
        decoding += decoded - begin
    elapsed = clock() - started
    latencies.sort()
    count = len(updates)
    return {
        "per_update_us": elapsed / count / 1e3,
        "decode_us": decoding / count / 1e3,
        "p50_us": latencies[count // 2] / 1e3,
        "p99_us": latencies[min(count - 1, count * 99 // 100)] / 1e3,
        "outcomes": dict(outcomes),
    }
