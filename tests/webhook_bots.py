"""Test-only bots served by the webhook view, and a URLconf mounting each of them.

``BOTSESSIONS_BOTS`` names applications by dotted path, so the bots the webhook tests
need (one whose handler raises, one using arbitrary callback data, a second demo bot)
live here. They talk to whatever ``TELEGRAM_API_BASE_URL`` says: the fake Bot API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.urls import path
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from botproject.bot import build_application
from botsessions import SessionContext, Sessions, use_sessions
from botsessions.webhook import TelegramWebhookView

TOKEN = "123456:TEST-token"
SECOND_TOKEN = "654321:OTHER-token"

# What the failing bot's error handler saw, newest last (cleared by the tests).
errors: list[BaseException] = []


def _builder(token: str = TOKEN) -> ApplicationBuilder[Any, Any, Any, Any, Any, Any]:
    return ApplicationBuilder().token(token).base_url(settings.TELEGRAM_API_BASE_URL).updater(None)


def failing_bot() -> Application:  # type: ignore[type-arg]
    """Counts messages, and raises after counting one that says "boom"."""

    async def count(update: Update, context: SessionContext) -> None:
        context.session["n"] += 1
        assert update.effective_message is not None
        if update.effective_message.text == "boom":
            raise RuntimeError("the handler failed on purpose")

    async def record(update: object, context: Any) -> None:
        errors.append(context.error)

    application = use_sessions(_builder(), Sessions(initial=lambda: {"n": 0})).build()
    application.add_handler(MessageHandler(filters.TEXT, count))
    application.add_error_handler(record)
    return application


def notes_bot() -> Application:  # type: ignore[type-arg]
    """Keeps the last text it was sent: text from the update goes into the session."""

    async def note(update: Update, context: SessionContext) -> None:
        assert update.effective_message is not None
        context.session["note"] = update.effective_message.text

    async def record(update: object, context: Any) -> None:
        errors.append(context.error)

    application = use_sessions(_builder(), Sessions(initial=dict)).build()
    application.add_handler(MessageHandler(filters.TEXT, note))
    application.add_error_handler(record)
    return application


@dataclass(frozen=True)
class Pizza:
    """Callback data that is an object, not a string: what arbitrary callback data allows."""

    name: str
    size_cm: int


def callback_bot() -> Application:  # type: ignore[type-arg]
    """``/menu`` offers buttons carrying :class:`Pizza` objects; a press stores the pizza."""

    async def menu(update: Update, context: SessionContext) -> None:
        assert update.effective_message is not None
        buttons = [
            InlineKeyboardButton("Margherita", callback_data=Pizza("margherita", 32)),
            InlineKeyboardButton("Diavola", callback_data=Pizza("diavola", 28)),
        ]
        await update.effective_message.reply_text(
            "Pick one", reply_markup=InlineKeyboardMarkup([buttons])
        )

    async def pick(update: Update, context: SessionContext) -> None:
        query = update.callback_query
        assert query is not None and isinstance(query.data, Pizza)
        context.session["ordered"].append({"name": query.data.name, "size_cm": query.data.size_cm})
        await query.answer(f"{query.data.name} ordered")

    builder = _builder().arbitrary_callback_data(True)
    application = use_sessions(builder, Sessions(initial=lambda: {"ordered": []})).build()
    application.add_handler(CommandHandler("menu", menu))
    application.add_handler(
        CallbackQueryHandler(pick, pattern=lambda data: isinstance(data, Pizza))
    )
    return application


# How many times the starting bot's post_init ran (cleared by the tests).
post_inits: list[int] = []


def starting_bot() -> Application:  # type: ignore[type-arg]
    """The failing bot with a ``post_init`` that fails the first time it runs."""

    async def post_init(application: Application) -> None:  # type: ignore[type-arg]
        post_inits.append(1)
        if len(post_inits) == 1:  # quoting the token, as some libraries' errors do
            raise RuntimeError(f"post_init failed on purpose with {application.bot.token}")

    application = failing_bot()
    application.post_init = post_init
    return application


def second_demo_bot() -> Application:  # type: ignore[type-arg]
    """The demo bot under another token: the same handlers, its own sessions."""
    return build_application(token=SECOND_TOKEN)


BOTS: dict[str, dict[str, Any]] = {
    "default": {
        "APPLICATION": "botproject.bot.build_application",
        "WEBHOOK_SECRET": "test-secret",
    },
    "second": {
        "APPLICATION": "tests.webhook_bots.second_demo_bot",
        "WEBHOOK_SECRET": "second-secret",
    },
    "failing": {"APPLICATION": "tests.webhook_bots.failing_bot", "WEBHOOK_SECRET": "test-secret"},
    "notes": {"APPLICATION": "tests.webhook_bots.notes_bot", "WEBHOOK_SECRET": "test-secret"},
    "starting": {
        "APPLICATION": "tests.webhook_bots.starting_bot",
        "WEBHOOK_SECRET": "test-secret",
    },
    "callbacks": {
        "APPLICATION": "tests.webhook_bots.callback_bot",
        "WEBHOOK_SECRET": "test-secret",
    },
}

urlpatterns = [
    path(f"bots/{alias}/", TelegramWebhookView.as_view(bot=alias), name=f"webhook-{alias}")
    for alias in BOTS
]
