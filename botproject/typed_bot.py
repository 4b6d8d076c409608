"""The demo bot with typed sessions, checked by ``mypy --strict`` in CI.

Each fragment says what its data is, and ``context.session`` is typed accordingly, so
a misspelt field fails the type check instead of a handler in production
(``tests/test_typing.py`` shows it). The chat's data is a ``TypedDict``, the user's a
dataclass (stored as JSON through a :class:`~botsessions.DataclassSerializer`), and the
basket a lazy fragment, read only by the handlers that await it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from botsessions import (
    DataclassSerializer,
    Fragment,
    Lazy,
    SessionContext,
    Sessions,
    per_chat,
    per_user,
    use_sessions,
)


class ChatData(TypedDict):
    pizza_count: int


@dataclass
class UserData:
    messages: int = 0
    purchases: int = 0


@dataclass
class Basket:
    items: list[str] = field(default_factory=list)


class BotSession(Protocol):
    """What ``context.session`` holds: one attribute per fragment."""

    chat: ChatData
    user: UserData
    basket: Lazy[Basket]


Context = SessionContext[BotSession]

chat = Fragment(initial=lambda: ChatData(pizza_count=0), key=per_chat)
user = Fragment(initial=UserData, key=per_user, serializer=DataclassSerializer(UserData))
basket = Fragment(initial=Basket, key=per_user, lazy=True, serializer=DataclassSerializer(Basket))
sessions = Sessions.multi(chat=chat, user=user, basket=basket)


async def count_message(update: Update, context: Context) -> None:
    """Every text message counts for its sender; a 🍕 also counts for the chat."""
    context.session.user.messages += 1
    message = update.effective_message
    if message is not None and "🍕" in (message.text or ""):
        context.session.chat["pizza_count"] += 1


async def hunger(update: Update, context: Context) -> None:
    assert update.effective_message is not None
    count = context.session.chat["pizza_count"]
    await update.effective_message.reply_text(f"Your hunger level is {count}!")


async def add(update: Update, context: Context) -> None:
    """``/add ITEM``: the basket is lazy, so only this handler and /basket read it."""
    assert update.effective_message is not None
    items = (await context.session.basket).items
    items.append(" ".join(context.args or ())[:64] or "pizza")
    await update.effective_message.reply_text(f"{len(items)} in your basket.")


async def show_basket(update: Update, context: SessionContext[Any]) -> None:
    """Written as a reusable handler would be: it names the fragment it needs and works
    whether the bot installing it made that fragment lazy or strict."""
    assert update.effective_message is not None
    items = (await context.session_data(basket)).items
    await update.effective_message.reply_text(", ".join(items) or "Your basket is empty.")


async def reset(update: Update, context: Context) -> None:
    assert update.effective_message is not None
    del context.session.chat
    await update.effective_message.reply_text("Session reset.")


def handlers() -> list[BaseHandler[Update, Context, None]]:
    """The bot's handlers; the type checker matches each one's context with the bot's."""
    return [
        CommandHandler("hunger", hunger),
        CommandHandler("add", add),
        CommandHandler("basket", show_basket),
        CommandHandler("reset", reset),
        MessageHandler(
            filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, count_message
        ),
    ]


def build_application(token: str) -> Application[Any, Context, Any, Any, Any, Any]:
    """The typed bot: its context type is configured the PTB way, through ContextTypes."""
    builder = ApplicationBuilder().token(token).context_types(ContextTypes(context=Context))
    application = use_sessions(builder, sessions).build()
    application.add_handlers(handlers())
    return application
