"""PTB's state in the sessions admin: readable names, search, show, edit and reset."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from telegram.ext import Application, ApplicationBuilder

from botsessions import DjangoPersistence, use_sessions
from botsessions.models import Session

from .test_admin import CHANGELIST, action, change_url, listed_keys, make
from .test_persistence import signup

pytestmark = pytest.mark.django_db

PTB_BOT = 424242
GROUP_CHAT = -1001234567890


def build_ptb_application() -> Application:  # type: ignore[type-arg]
    builder = ApplicationBuilder().token(f"{PTB_BOT}:ptb-token").persistence(DjangoPersistence())
    application = use_sessions(builder).build()
    application.add_handler(signup())
    return application


@pytest.fixture
def ptb_rows(settings: Any) -> dict[str, Session]:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "ptb": {"APPLICATION": "tests.test_persistence_admin.build_ptb_application"},
    }
    return {
        "user": make("user:42", {"name": "Ann"}, bot_id=PTB_BOT, fragment="ptb.user_data"),
        "chat": make(f"chat:{GROUP_CHAT}", {"n": 1}, bot_id=PTB_BOT, fragment="ptb.chat_data"),
        "bot": make("bot", {"orders": 7}, bot_id=PTB_BOT, fragment="ptb.bot_data"),
        "conversation": make(
            f"chat:{GROUP_CHAT}:user:42", 1, bot_id=PTB_BOT, fragment="ptb.conversation.signup"
        ),
    }


def test_rows_say_what_they_are(admin_client: Client, ptb_rows: dict[str, Session]) -> None:
    page = admin_client.get(reverse(CHANGELIST)).text
    for words in (
        "user_data of user 42",
        f"chat_data of chat {GROUP_CHAT}",
        "bot_data of the bot",
        f"conversation signup, user 42 in chat {GROUP_CHAT}",
    ):
        assert words in page
    assert str(ptb_rows["user"]) == "user_data of user 42"


def test_per_message_conversation_rows_say_which_message() -> None:
    def name(key: str) -> str:
        return str(Session(bot_id=PTB_BOT, fragment="ptb.conversation.menu", key=key))

    assert name(f"chat:{GROUP_CHAT}:user:42:message:7") == (
        f"conversation menu, message 7 of user 42 in chat {GROUP_CHAT}"
    )
    assert name("user:42:inline:AbC") == "conversation menu, inline message AbC of user 42"


def test_a_telegram_id_finds_the_users_data_and_conversations(
    admin_client: Client, ptb_rows: dict[str, Session]
) -> None:
    found = listed_keys(admin_client.get(reverse(CHANGELIST), {"q": "42"}))
    assert sorted(found) == sorted(["user:42", f"chat:{GROUP_CHAT}:user:42"])


def test_user_data_is_shown_and_edited_like_a_session(
    admin_client: Client, ptb_rows: dict[str, Session]
) -> None:
    row = ptb_rows["user"]
    assert "&quot;name&quot;: &quot;Ann&quot;" in admin_client.get(change_url(row)).text
    admin_client.post(
        change_url(row), {"data": '{"name": "Anne"}', "loaded_revision": row.revision}
    )
    row.refresh_from_db()
    assert row.data == {"name": "Anne"}


def test_a_reset_empties_user_data_and_ends_a_conversation(
    admin_client: Client, ptb_rows: dict[str, Session]
) -> None:
    user, conversation = ptb_rows["user"], ptb_rows["conversation"]
    admin_client.post(
        reverse(CHANGELIST), action("reset_to_initial", user, conversation, confirm=True)
    )
    user.refresh_from_db()
    assert user.data == {}
    assert not Session.objects.filter(pk=conversation.pk).exists()
