"""Variants of the demo bot that the benchmark compares with the demo itself.

Every variant keeps the demo's handlers and filters (botproject.bot), so that an update
takes the same way through PTB; only the session layer differs:

- ``plain_application``: a plain PTB ``Application``; the handlers count into dicts.
  ``PlainRunner`` drives it the way ``BotRunner`` drives its application: the
  in-process baseline.
- ``sessions_off_application``: the same session-free handlers, in an application that
  the webhook view and ``BotRunner`` accept but that never loads or saves a session,
  so the HTTP baseline goes through exactly the demo's server code. ``BotRunner`` still
  runs each of its updates as a unit of work: a transaction on the default database
  that nothing is written in.
- ``memory_application``: the demo with its sessions kept in a ``MemoryStorage``: the
  session engine without session SQL, to tell engine cost from database cost (the unit
  of work's transaction is still opened on the default database).
- ``lazy_application``: the demo's sessions made lazy, plus ``/noop``, a command whose
  handler never touches the session (for the statement counts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.current_thread_executor import CurrentThreadExecutor
from django.conf import settings
from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from botproject.bot import build_application
from botproject.bot import sessions as demo_sessions
from botsessions import MemoryStorage, SessionContext, Sessions, use_sessions
from botsessions.ptb import Outcome, SessionApplication

Callback = Callable[[Update, Any], Awaitable[None]]

# What the session-free handlers count: chat id → 🍕 count, user id → messages.
pizza_counts: dict[int, int] = {}
message_counts: dict[int, int] = {}


async def count_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The demo's counter, with dicts in place of the session."""
    assert update.effective_message is not None and update.effective_user is not None
    user_id = update.effective_user.id
    message_counts[user_id] = message_counts.get(user_id, 0) + 1
    if "🍕" in (update.effective_message.text or ""):
        assert update.effective_chat is not None
        chat_id = update.effective_chat.id
        pizza_counts[chat_id] = pizza_counts.get(chat_id, 0) + 1


async def hunger(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_chat is not None
    count = pizza_counts.get(update.effective_chat.id, 0)
    await update.effective_message.reply_text(f"Your hunger level is {count}!")


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    messages = message_counts.get(update.effective_user.id, 0)
    await update.effective_message.reply_text(f"You have sent {messages} messages.")


async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_message is not None and update.effective_chat is not None
    pizza_counts.pop(update.effective_chat.id, None)
    await update.effective_message.reply_text("Session reset.")


def add_demo_handlers(
    application: Application,  # type: ignore[type-arg]
    *,
    count: Callback = count_message,
    commands: dict[str, Callback] | None = None,
) -> None:
    """Register handlers the way botproject.bot.build_application does, in its order."""
    for name, callback in (commands or {"hunger": hunger, "stats": stats, "reset": reset}).items():
        application.add_handler(CommandHandler(name, callback))
    application.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, count)
    )


def _builder() -> ApplicationBuilder[Any, Any, Any, Any, Any, Any]:
    """The demo's builder: the settings' token and Bot API address, no updater."""
    builder = ApplicationBuilder().token(settings.TELEGRAM_BOT_TOKEN).updater(None)
    if settings.TELEGRAM_API_BASE_URL:
        base = settings.TELEGRAM_API_BASE_URL.rstrip("/")
        builder = builder.base_url(base).base_file_url(base.removesuffix("/bot") + "/file/bot")
    return builder


def plain_application() -> Application:  # type: ignore[type-arg]
    """The demo's handlers, session-free, in a plain PTB application."""
    application = _builder().build()
    add_demo_handlers(application)
    return application


class SessionsOffApplication(SessionApplication):
    """A SessionApplication that processes updates as a plain Application does.

    The webhook view and ``BotRunner`` only serve SessionApplications; this one lets them
    serve the session-free handlers, so that a server without sessions runs the same
    view and runner as the demo (the unit of work and its transaction included), and
    only the session layer is gone.
    """

    async def process_update_with_sessions(self, update: object) -> str:
        await Application.process_update(self, update)
        return Outcome.UNCHANGED


def sessions_off_application() -> SessionApplication:
    """The session-free handlers behind the webhook (the HTTP baseline)."""
    builder = _builder().application_class(SessionsOffApplication)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    assert isinstance(application, SessionApplication)
    add_demo_handlers(application)
    return application


def memory_application() -> SessionApplication:
    """The demo bot with its sessions in memory: the engine's cost without SQL.

    The demo's fragments are kept (initial data, keys, chat migrations); only their
    storage changes, so the handlers are the demo's own.
    """
    storage = MemoryStorage()
    fragments = {
        name: dataclasses.replace(fragment, storage=storage)
        for name, fragment in demo_sessions.fragments.items()
    }
    application = build_application()
    assert isinstance(application, SessionApplication)
    application.sessions = Sessions.multi(
        migrate_chats=demo_sessions.migrate_chats, locking=demo_sessions.locking, **fragments
    )
    return application


async def lazy_count(update: Update, context: SessionContext) -> None:
    """The demo's counter on lazy fragments: each is read when first awaited."""
    user = await context.session.user
    user["messages"] += 1
    assert update.effective_message is not None
    if "🍕" in (update.effective_message.text or ""):
        chat = await context.session.chat
        chat["pizza_count"] += 1


async def lazy_hunger(update: Update, context: SessionContext) -> None:
    assert update.effective_message is not None
    chat = await context.session.chat
    await update.effective_message.reply_text(f"Your hunger level is {chat['pizza_count']}!")


async def noop(update: Update, context: SessionContext) -> None:
    """A command that is handled without ever touching the session."""


def lazy_application() -> SessionApplication:
    """The demo's fragments, lazy, with the counter awaiting them and ``/noop``."""
    fragments = {
        name: dataclasses.replace(fragment, lazy=True)
        for name, fragment in demo_sessions.fragments.items()
    }
    sessions = Sessions.multi(
        migrate_chats=demo_sessions.migrate_chats, locking=demo_sessions.locking, **fragments
    )
    application = use_sessions(_builder(), sessions).build()
    assert isinstance(application, SessionApplication)
    add_demo_handlers(
        application, count=lazy_count, commands={"hunger": lazy_hunger, "noop": noop}
    )
    return application


class PlainRunner:
    """A plain Application driven the way ``BotRunner`` drives its application.

    The application lives on an event loop with a thread of its own. For each update the
    caller hands ``process_update`` to that loop with ``run_coroutine_threadsafe`` and
    waits in a ``CurrentThreadExecutor`` (``run_until_future``), as ``BotRunner.process``
    does: the same thread hand-over both ways, with nothing for the waiting thread to
    run. This is the in-process baseline, so that it and the session path differ by
    what ``BotRunner`` adds (the unit of work) and the session layer only.
    """

    def __init__(self, application: Application) -> None:  # type: ignore[type-arg]
        self.application = application
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="bench-plain-loop", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(application.initialize(), self.loop).result()

    def decode(self, data: dict[str, Any]) -> Update:
        update = Update.de_json(data, self.application.bot)
        assert update is not None
        return update

    def process(self, update: Update) -> str:
        executor = CurrentThreadExecutor(None)
        future = asyncio.run_coroutine_threadsafe(
            self.application.process_update(update), self.loop
        )
        executor.run_until_future(future)
        future.result()
        return Outcome.UNCHANGED

    def shutdown(self) -> None:
        asyncio.run_coroutine_threadsafe(self.application.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
