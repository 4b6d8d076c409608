"""The demo bot: a pizza counter per chat, a message counter per user, and a shop.

``/buy`` shows the unit of work: the handler writes a row of the project's own model and
its session in one transaction, and its reply goes out only once both are committed.
With the setting ``REDIS_URL`` (the environment variable of the same name) both
fragments are kept in Redis instead; the purchases stay in the database.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, CommandHandler, MessageHandler, filters

from botsessions import Fragment, SessionContext, Sessions, per_chat, per_user, use_sessions
from botsessions.storage.base import SessionStorage


def demo_sessions(storage: SessionStorage | None = None) -> Sessions:
    """The demo's two fragments, in ``storage`` (``None``: the database)."""
    return Sessions.multi(
        chat=Fragment(initial=lambda: {"pizza_count": 0}, key=per_chat, storage=storage),
        user=Fragment(initial=lambda: {"messages": 0}, key=per_user, storage=storage),
        migrate_chats=True,
    )


sessions = demo_sessions()  # in the database


def configured_sessions() -> Sessions:
    """The sessions the settings ask for: in Redis when ``REDIS_URL`` is set.

    Each application gets a storage of its own (with its own clients and lock tokens).
    """
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        return sessions
    from botsessions.storage.redis import RedisStorage

    prefix = getattr(settings, "REDIS_PREFIX", "botsessions:")
    return demo_sessions(RedisStorage(url=url, prefix=prefix))


async def count_message(update: Update, context: SessionContext) -> None:
    """Every text message counts for its sender; a 🍕 also counts for the chat."""
    context.session.user["messages"] += 1
    assert update.effective_message is not None
    if "🍕" in (update.effective_message.text or ""):
        context.session.chat["pizza_count"] += 1


async def hunger(update: Update, context: SessionContext) -> None:
    assert update.effective_message is not None
    count = context.session.chat["pizza_count"]
    await update.effective_message.reply_text(f"Your hunger level is {count}!")


async def stats(update: Update, context: SessionContext) -> None:
    assert update.effective_message is not None
    messages = context.session.user["messages"]
    await update.effective_message.reply_text(f"You have sent {messages} messages.")


async def buy(update: Update, context: SessionContext) -> None:
    """Record a purchase, count it in the user's session, confirm it once committed."""
    from .models import Purchase

    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    item = " ".join(context.args or ())[:64] or "pizza"
    await Purchase.objects.acreate(chat_id=message.chat_id, user_id=user.id, item=item)
    purchases = context.session.user.get("purchases", 0) + 1
    context.session.user["purchases"] = purchases
    context.on_commit(message.reply_text(f"Bought {item}. Purchases so far: {purchases}."))


async def reset(update: Update, context: SessionContext) -> None:
    assert update.effective_message is not None
    context.session.chat = None
    await update.effective_message.reply_text("Session reset.")


def build_application(token: str | None = None) -> Application:  # type: ignore[type-arg]
    """Build the demo bot from the settings (token and optional Bot API server).

    ``token`` overrides TELEGRAM_BOT_TOKEN, for a second bot with the same handlers.
    """
    token = token or settings.TELEGRAM_BOT_TOKEN
    if not token:
        raise ImproperlyConfigured(
            "TELEGRAM_BOT_TOKEN is not set: export the token BotFather gave you "
            "(or any 123:abc-shaped token when using a fake Bot API server)."
        )
    builder = ApplicationBuilder().token(token)
    if settings.TELEGRAM_API_BASE_URL:
        base = settings.TELEGRAM_API_BASE_URL.rstrip("/")
        builder = builder.base_url(base).base_file_url(base.removesuffix("/bot") + "/file/bot")
    application = use_sessions(builder, configured_sessions()).build()
    application.add_handler(CommandHandler("hunger", hunger))
    application.add_handler(CommandHandler("stats", stats))
    application.add_handler(CommandHandler("reset", reset))
    application.add_handler(CommandHandler("buy", buy))
    # New messages only: an edit is not another message, and a channel post has no sender.
    application.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, count_message)
    )
    return application
