"""Session key resolvers and the default serializer."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import (
    ConfigurationError,
    Fragment,
    JSONSerializer,
    SessionDataError,
    SessionKeyError,
    Sessions,
    per_chat,
    per_topic,
    per_user,
    per_user_in_chat,
)
from botsessions.keys import chat_id_of, describe_key, rekey_chat, update_kind

from . import updates

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "updates"


def decode(data: dict[str, Any]) -> Update:
    return Update.de_json(data, None)


def test_resolvers_on_a_group_message():
    update = decode(updates.message("x", chat_id=updates.GROUP, user_id=updates.BOB))
    assert per_chat(update) == "chat:-4012345678"
    assert per_user(update) == "user:222222222"
    assert per_user_in_chat(update) == "chat:-4012345678:user:222222222"
    assert per_topic(update) == "chat:-4012345678"


def test_per_topic_separates_forum_topics():
    update = decode(updates.message("x", chat_id=-1002233445566, user_id=1, thread_id=7))
    assert per_topic(update) == "chat:-1002233445566:topic:7"
    assert per_chat(update) == "chat:-1002233445566"


def test_updates_without_a_chat_have_no_chat_key():
    inline = decode(updates.inline_query())
    poll = decode(updates.poll_answer())
    assert per_chat(inline) is None and per_chat(poll) is None
    assert per_user(inline) == "user:111111111" and per_user(poll) == "user:222222222"
    assert per_user_in_chat(inline) is None
    assert update_kind(inline) == "inline_query" and update_kind(poll) == "poll_answer"


def test_non_updates_have_no_key():
    assert per_chat("not an update") is None
    assert update_kind("text") == "str"


@pytest.mark.skipif(
    not SAMPLES.is_dir(), reason="the shared sample updates are not beside the repo"
)
def test_every_sample_update_resolves_without_error():
    expected = {
        "channel_post.json": ("chat:-1003344556677", None),
        "inline_query.json": (None, "user:111111111"),
        "poll_answer.json": (None, "user:222222222"),
        "message_supergroup_text.json": ("chat:-1001987654321", "user:222222222"),
    }
    for path in sorted(SAMPLES.glob("*.json")):
        update = decode(json.loads(path.read_text()))
        keys = (per_chat(update), per_user(update))
        if path.name in expected:
            assert keys == expected[path.name], path.name
        per_user_in_chat(update)
        per_topic(update)


def test_keys_explain_themselves():
    assert describe_key("chat:-4012345678") == "chat -4012345678"
    assert describe_key("user:5") == "user 5"
    assert describe_key("chat:-1:user:5") == "user 5 in chat -1"
    assert describe_key("chat:-1:topic:7") == "topic 7 of chat -1"
    assert describe_key("my-own-key") == "my-own-key"
    assert chat_id_of("chat:-1001:user:5") == -1001 and chat_id_of("user:5") is None


def test_rekey_chat_moves_every_key_of_that_chat_only():
    assert rekey_chat("chat:-40", -40, -100) == "chat:-100"
    assert rekey_chat("chat:-40:user:1", -40, -100) == "chat:-100:user:1"
    assert rekey_chat("chat:-401", -40, -100) is None
    assert rekey_chat("user:-40", -40, -100) is None


@pytest.mark.parametrize(
    "value",
    [None, 0, -(2**63), 2**64, 1.5, "🍕", True, [], {}, {"a": [1, {"b": None}]}],
)
def test_json_values_round_trip(value):
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1: "a"},
        {"a": {1, 2}},
        float("inf"),
        Decimal("1.5"),
        b"bytes",
        {"nested": [(1,)]},
        {"a": object()},
    ],
)
def test_values_json_cannot_hold_are_refused(value):
    with pytest.raises(SessionDataError, match="JSON"):
        JSONSerializer().dumps(value)


def test_subclasses_of_json_types_are_refused():
    from collections import OrderedDict
    from enum import IntEnum

    class Size(IntEnum):
        LARGE = 3

    with pytest.raises(SessionDataError):
        JSONSerializer().dumps(OrderedDict(a=1))
    with pytest.raises(SessionDataError):
        JSONSerializer().dumps({"size": Size.LARGE})


def test_a_serializer_with_its_own_encoder_still_gets_the_round_trip_check():
    """Plain data skips the check only with the default encoder, known to be exact."""
    import json as json_module

    from botsessions.errors import SessionDataError
    from botsessions.serializers import JSONSerializer

    class Rounding(JSONSerializer):
        def encode(self, value):
            return json_module.dumps(value, default=str).replace("0.1234", "0.12")

    with pytest.raises(SessionDataError):
        Rounding().dumps({"x": 0.1234})
    assert JSONSerializer().dumps({"x": 0.1234}) == '{"x":0.1234}'


# -- business, guest and the bot's own chats -----------------------------------------------


def test_business_and_guest_keys_explain_themselves():
    assert describe_key("business:AbC:chat:42") == "business chat 42 via connection AbC"
    assert describe_key("business:AbC:user:7") == "user 7 via business connection AbC"
    assert describe_key("business:AbC:chat:42:user:7") == (
        "user 7 in business chat 42 via connection AbC"
    )
    assert describe_key("guest:chat:-100") == "guest chat -100"
    assert describe_key("guest:chat:42:user:7") == "user 7 in guest chat 42"
    assert describe_key("guest:chat:-100:topic:3") == "topic 3 of guest chat -100"
    assert describe_key("p:chat:-1:topic:7", prefix="p:") == "topic 7 of chat -1"
    assert describe_key("p:chat:-1:topic:7") == "p:chat:-1:topic:7"
    assert describe_key("chat:abc") == "chat:abc"  # not an id: a key of someone's own


@pytest.mark.django_db
def test_business_guest_and_own_chats_with_one_id_keep_separate_sessions(make_bot, probe):
    """Chat 111111111 is Alice's chat with the bot, her chat with a business the bot
    serves, and (reported under her id) a chat Bob summoned the bot into as a guest."""

    async def count(update, context):
        context.session["n"] += 1

    sessions = Sessions(initial=lambda: {"n": 0}, storage=probe.storage)
    bot = make_bot(sessions, [TypeHandler(Update, count)])
    alice = updates.ALICE
    bot.process(updates.message("hi", chat_id=alice))
    for _ in range(2):
        bot.process(updates.business_message(chat_id=alice))
    bot.process(updates.business_message(chat_id=alice, connection="OtherShop1"))
    for _ in range(3):
        bot.process(updates.guest_message(chat_id=alice, user_id=updates.BOB))
    bot.process(updates.message("hi", chat_id=updates.SUPERGROUP, user_id=updates.BOB))
    bot.process(updates.guest_message(chat_id=updates.SUPERGROUP))
    assert bot.errors == []
    stored = {
        f"chat:{alice}": '{"n":1}',
        f"business:{updates.CONNECTION}:chat:{alice}": '{"n":2}',
        f"business:OtherShop1:chat:{alice}": '{"n":1}',
        f"guest:chat:{alice}:user:{updates.BOB}": '{"n":3}',
        f"chat:{updates.SUPERGROUP}": '{"n":1}',
        f"guest:chat:{updates.SUPERGROUP}": '{"n":1}',
    }
    for key, text in stored.items():
        assert probe.stored_text(123456, "", key) == text, key


@pytest.mark.django_db
@pytest.mark.parametrize("bad_key", ["chat:\x00", "chat:\ud800", "x" * 250 + "\x00"])
def test_keys_no_database_can_store_are_refused_before_any_storage_call(make_bot, probe, bad_key):
    """PostgreSQL refuses a NUL in text and no driver encodes a lone surrogate: either
    would fail at the write, after the handlers ran, on every redelivery."""

    async def handler(update, context):
        context.session["n"] = 1

    sessions = Sessions(storage=probe.storage, initial=dict, key=lambda update: bad_key)
    bot = make_bot(sessions, [TypeHandler(Update, handler)])
    assert bot.process(updates.message("x")) == "handler_failed"
    assert isinstance(bot.errors[0], SessionKeyError)
    assert "lone surrogates" in str(bot.errors[0])
    assert probe.counts() == type(probe.counts())()


def test_prefixes_and_chat_keys_are_checked_when_configured():
    with pytest.raises(ConfigurationError, match="prefix"):
        Fragment(prefix="a\x00")

    def per_room(update):
        return None

    per_room.chat_key = "room:{}"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="chat_key"):
        Fragment(key=per_room)
