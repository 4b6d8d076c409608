"""A bot with a handler for each update the test kit builds, for the kit's own tests."""

from __future__ import annotations

from django.conf import settings
from telegram import InlineQueryResultArticle, InputTextMessageContent, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    InlineQueryHandler,
    MessageHandler,
    filters,
)

from botsessions import SessionContext, Sessions, use_sessions


async def pressed(update: Update, context: SessionContext) -> None:
    query = update.callback_query
    assert query is not None
    context.session["presses"] += 1
    await query.answer(f"pressed {query.data}")
    await query.edit_message_text(f"{query.data} pressed {context.session['presses']} times")


async def inline(update: Update, context: SessionContext) -> None:
    query = update.inline_query
    assert query is not None
    text = InputTextMessageContent(query.query.upper())
    await query.answer([InlineQueryResultArticle("1", query.query.upper(), text)])


async def business(update: Update, context: SessionContext) -> None:
    message = update.business_message
    assert message is not None
    context.session["presses"] += 1
    await message.reply_text(f"business {message.business_connection_id}: {message.text}")


async def edited(update: Update, context: SessionContext) -> None:
    message = update.edited_message
    assert message is not None
    await context.bot.send_message(message.chat_id, f"edited to {message.text}")


async def status(update: Update, context: SessionContext) -> None:
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    member = await context.bot.get_chat_member(message.chat_id, user.id)
    await message.reply_text(f"You are {member.status}.")


async def later(update: Update, context: SessionContext) -> None:
    message = update.effective_message
    assert message is not None
    context.session["presses"] += 0.5
    await message.reply_text("now")
    context.on_commit(message.reply_text("after commit"))


def build_application() -> Application:  # type: ignore[type-arg]
    return with_handlers(Sessions(initial=lambda: {"presses": 0}))


def build_redis_application() -> Application:  # type: ignore[type-arg]
    """The same bot with its sessions in Redis, at ``KIT_REDIS_URL`` under ``KIT_REDIS_PREFIX``
    (settings of the test that uses it)."""
    from botsessions.storage.redis import RedisStorage

    storage = RedisStorage(url=settings.KIT_REDIS_URL, prefix=settings.KIT_REDIS_PREFIX)
    return with_handlers(Sessions(initial=lambda: {"presses": 0}, storage=storage))


def with_handlers(sessions: Sessions) -> Application:  # type: ignore[type-arg]
    builder = ApplicationBuilder().token(settings.TELEGRAM_BOT_TOKEN)
    application = use_sessions(builder, sessions).build()
    application.add_handler(CallbackQueryHandler(pressed))
    application.add_handler(InlineQueryHandler(inline))
    application.add_handler(MessageHandler(filters.UpdateType.BUSINESS_MESSAGE, business))
    application.add_handler(MessageHandler(filters.UpdateType.EDITED_MESSAGE, edited))
    application.add_handler(CommandHandler("status", status))
    application.add_handler(CommandHandler("later", later))
    return application


# Built once, as the module is imported, as some projects do (APPLICATION naming it).
module_application = build_application()
