"""A bot written for PTB's own persistence, stored by DjangoPersistence instead.

Its handlers use only ``context.chat_data``, ``context.user_data``, ``context.bot_data``
and a persistent ``ConversationHandler``, as a bot written for ``PicklePersistence``
does. The one line that chose the persistence is changed (see :func:`build_application`),
and its replies follow the README's advice for a bot that writes bot_data: they go out
once the update is stored (:func:`reply`). Served by ``tests.persistence_settings``.
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

from botsessions import DjangoPersistence, SessionContext, use_sessions

ITEM, ADDRESS = range(2)


async def reply(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str) -> None:
    """Reply once the update's state is stored, where botsessions runs the bot.

    An update whose bot_data write meets another's is refused and delivered again: a
    reply sent at once would then go out twice, one sent with ``on_commit`` goes out
    once. PTB's own persistence never runs an update twice: it replies at once.
    """
    message = update.message
    assert message is not None
    if isinstance(context, SessionContext):
        context.on_commit(lambda: message.reply_text(text))
    else:
        await message.reply_text(text)


async def checkout(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    await reply(update, context, "What would you like?")
    return ITEM


async def item(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    context.user_data["item"] = update.message.text  # type: ignore[index,union-attr]
    await reply(update, context, "Where to?")
    return ADDRESS


async def address(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    user_data: dict[str, Any] = context.user_data  # type: ignore[assignment]
    user_data["orders"] = user_data.get("orders", 0) + 1
    context.bot_data["orders"] = context.bot_data.get("orders", 0) + 1
    text = f"{user_data['item']} to {update.message.text}, order {user_data['orders']}."  # type: ignore[union-attr]
    await reply(update, context, text)
    return ConversationHandler.END


async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_data: dict[str, Any] = context.chat_data  # type: ignore[assignment]
    chat_data["messages"] = chat_data.get("messages", 0) + 1


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    chat_data: dict[str, Any] = context.chat_data  # type: ignore[assignment]
    orders = context.bot_data.get("orders", 0)
    text = f"{chat_data.get('messages', 0)} messages here, {orders} orders in all."
    await reply(update, context, text)


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
