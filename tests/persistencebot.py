"""A bot written for PTB's own persistence, stored by DjangoPersistence instead.

Its handlers use only ``context.chat_data``, ``context.user_data``, ``context.bot_data``
and a persistent ``ConversationHandler``, as a bot written for ``PicklePersistence``
does. The one line that chose the persistence is the only one changed (see
:func:`build_application`). Served by ``tests.persistence_settings``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from telegram import Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BasePersistence,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)

from botsessions import DjangoPersistence, use_sessions

ITEM, ADDRESS = range(2)


async def checkout(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    await update.message.reply_text("What would you like?")  # type: ignore[union-attr]
    return ITEM


async def item(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["item"] = update.message.text  # type: ignore[index,union-attr]
    await update.message.reply_text("Where to?")  # type: ignore[union-attr]
    return ADDRESS


async def address(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    user_data: dict[str, Any] = context.user_data  # type: ignore[assignment]
    user_data["orders"] = user_data.get("orders", 0) + 1
    context.bot_data["orders"] = context.bot_data.get("orders", 0) + 1
    text = f"{user_data['item']} to {update.message.text}, order {user_data['orders']}."  # type: ignore[union-attr]
    await update.message.reply_text(text)  # type: ignore[union-attr]
    return ConversationHandler.END


async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_data: dict[str, Any] = context.chat_data  # type: ignore[assignment]
    chat_data["messages"] = chat_data.get("messages", 0) + 1


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_data: dict[str, Any] = context.chat_data  # type: ignore[assignment]
    orders = context.bot_data.get("orders", 0)
    text = f"{chat_data.get('messages', 0)} messages here, {orders} orders in all."
    await update.message.reply_text(text)  # type: ignore[union-attr]


def add_handlers(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    application.add_handler(
        ConversationHandler(
            entry_points=[CommandHandler("checkout", checkout)],
            states={
                ITEM: [MessageHandler(filters.TEXT & ~filters.COMMAND, item)],
                ADDRESS: [MessageHandler(filters.TEXT & ~filters.COMMAND, address)],
            },
            fallbacks=[],
            name="checkout",
            persistent=True,
        )
    )
    application.add_handler(CommandHandler("stats", stats))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, count), group=1)


def build_application(
    persistence: BasePersistence[Any, Any, Any] | None = None,
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The bot; with PicklePersistence it was the line in the comment below."""
    builder = ApplicationBuilder().token(settings.TELEGRAM_BOT_TOKEN)
    if settings.TELEGRAM_API_BASE_URL:
        builder.base_url(settings.TELEGRAM_API_BASE_URL)
    if persistence is not None:  # the same handlers on another persistence (tests)
        application = builder.persistence(persistence).build()
    else:
        # application = builder.persistence(PicklePersistence("bot.pickle")).build()
        application = use_sessions(builder.persistence(DjangoPersistence())).build()
    add_handlers(application)
    return application
