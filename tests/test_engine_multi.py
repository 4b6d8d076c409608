"""Multi sessions: named fragments, each with its own key, storage and initial data."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import ConfigurationError, Fragment, SessionKeyError, Sessions, per_user

from .probes import RecordingStorage
from .updates import ALICE, GROUP, inline_query, message

BOT = 123456

pytestmark = pytest.mark.django_db


def every_update(callback: Any) -> TypeHandler[Any, Any]:
    return TypeHandler(Update, callback)


def two_fragments(chat_storage: Any, user_storage: Any) -> Sessions:
    return Sessions.multi(
        chat=Fragment(initial=lambda: {"pizza": 0}, storage=chat_storage),
        user=Fragment(initial=lambda: {"messages": 0}, key=per_user, storage=user_storage),
    )


def test_update_reaches_handlers_untouched(make_bot, probe):
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(update.to_dict())

    bot = make_bot(two_fragments(probe.storage, probe.storage), [every_update(handler)])
    raw = message("hi")
    bot.process(raw)
    assert seen == [Update.de_json(raw, None).to_dict()]


@pytest.mark.parametrize("access", ["read", "write"])
def test_fragment_without_key_raises_only_for_that_fragment(make_bot, probe, access):
    results: list[Any] = []

    async def handler(update, context):
        results.append(context.session.user)  # an inline query has a user...
        if access == "read":
            context.session.chat  # noqa: B018  ...but no chat
        else:
            context.session.chat = {"pizza": 1}

    bot = make_bot(two_fragments(probe.storage, probe.storage), [every_update(handler)])
    assert bot.process(inline_query()) == "handler_failed"
    assert results == [{"messages": 0}]
    [error] = bot.errors
    assert isinstance(error, SessionKeyError)
    assert "'chat'" in str(error) and "inline_query" in str(error)


def test_raising_handler_writes_no_fragment(make_bot, probe):
    async def handler(update, context):
        context.session.chat["pizza"] += 1
        context.session.user["messages"] += 1
        raise RuntimeError("boom")

    bot = make_bot(two_fragments(probe.storage, probe.storage), [every_update(handler)])
    bot.process(message("x", chat_id=GROUP, user_id=ALICE))
    counts = probe.counts()
    assert counts.writes == 0 and counts.deletes == 0
    # The database and Redis read both fragments in one round trip; the memory storage
    # key by key.
    assert counts.reads == (2 if probe.kind == "memory" else 1)


def test_fragments_are_read_and_written_in_their_own_storage(make_bot):
    chats, users = RecordingStorage(), RecordingStorage()

    async def count(update, context):
        if update.message.text == "forget me":
            context.session = None
            return
        context.session.chat["pizza"] += 1
        context.session.user["messages"] += 1

    bot = make_bot(two_fragments(chats, users), [every_update(count)])
    bot.process(message("x", chat_id=GROUP, user_id=ALICE))
    bot.process(message("x", chat_id=GROUP, user_id=ALICE))
    from botsessions import StorageKey

    chat_key = StorageKey(BOT, "chat", f"chat:{GROUP}")
    user_key = StorageKey(BOT, "user", f"user:{ALICE}")
    assert chats.stored(chat_key).data == '{"pizza":2}'
    assert users.stored(user_key).data == '{"messages":2}'
    assert chats.stored(user_key) is None and users.stored(chat_key) is None
    assert (chats.counts.reads, chats.counts.writes) == (2, 2)
    assert (users.counts.reads, users.counts.writes) == (2, 2)

    bot.process(message("forget me", chat_id=GROUP, user_id=ALICE))
    assert chats.stored(chat_key) is None and users.stored(user_key) is None
    assert chats.counts.deletes == 1 and users.counts.deletes == 1


def test_a_second_storage_failing_after_the_first_committed_is_logged_as_lost(make_bot, caplog):
    """The first storage committed the update with its record: whatever the second one
    raises (a storage of your own may raise anything) cannot undo that, and is said."""

    class Unreachable(RecordingStorage):
        async def commit(self, changes: Any, mark: Any = None) -> bool:
            raise ConnectionError("connection refused")

    chats, users = RecordingStorage(), Unreachable()

    async def count(update, context):
        context.session.chat["pizza"] += 1
        context.session.user["messages"] += 1

    bot = make_bot(two_fragments(chats, users), [every_update(count)])
    update = message("x", chat_id=GROUP, user_id=ALICE)
    assert bot.process(update) == "committed"
    assert "could not be saved and are lost: connection refused" in caplog.text
    assert bot.process(update) == "duplicate"


def test_lazy_and_strict_fragments_together(make_bot, probe):
    """grammY refuses lazy multi sessions; here each fragment chooses."""
    sessions = Sessions.multi(
        chat=Fragment(initial=lambda: {"pizza": 0}, storage=probe.storage),
        user=Fragment(initial=lambda: {"n": 0}, key=per_user, lazy=True, storage=probe.storage),
    )

    async def handler(update, context):
        context.session.chat["pizza"] += 1
        if update.message.text == "both":
            user = await context.session.user
            user["n"] += 1

    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("chat only"))
    assert probe.counts().reads == 1  # the lazy fragment was never read
    bot.process(message("both"))
    assert probe.counts().reads == 3
    assert probe.stored_text(BOT, "user", f"user:{ALICE}") == '{"n":1}'
    assert probe.stored_text(BOT, "chat", f"chat:{ALICE}") == '{"pizza":2}'


def test_assigning_a_value_to_the_whole_multi_session_is_refused(make_bot, probe):
    async def handler(update, context):
        context.session = {"chat": {}}

    bot = make_bot(two_fragments(probe.storage, probe.storage), [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed"
    assert isinstance(bot.errors[0], TypeError)


def test_unknown_fragment_name_is_an_attribute_error(make_bot, probe):
    async def handler(update, context):
        context.session.basket  # noqa: B018

    bot = make_bot(two_fragments(probe.storage, probe.storage), [every_update(handler)])
    bot.process(message("x"))
    assert isinstance(bot.errors[0], AttributeError)
    assert "basket" in str(bot.errors[0]) and "chat, user" in str(bot.errors[0])


def test_fragment_names_are_checked():
    with pytest.raises(ConfigurationError, match="fragment name"):
        Sessions.multi(**{"Bad-Name": Fragment()})
    with pytest.raises(ConfigurationError, match="at least one"):
        Sessions.multi()
