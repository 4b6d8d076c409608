"""Every field a session key is built from is checked before anything runs.

Posted to the webhook with a bad value in one such field, an update is answered 400,
no handler runs, nothing is stored and nothing is sent; the same update with a good
value is processed. This runs on whichever database ``DATABASE_URL`` names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telegram import Update

from botsessions.key_parts import InvalidKeyPart, check_key_parts
from botsessions.models import ProcessedUpdate, Session

from . import updates as u
from .fakebotapi import FakeBotAPI

pytestmark = pytest.mark.django_db

URL = "/telegram/webhook/"
SECRET = "test-secret"

Build = Callable[[], dict[str, Any]]


# Where each field is, in an update that has it. The first value is what the sample
# holds; the tests replace it.
def pizza() -> dict[str, Any]:
    return u.message("🍕", chat_id=u.GROUP, user_id=u.BOB)


ID_FIELDS: dict[str, tuple[Build, tuple[str | int, ...]]] = {
    "chat id": (pizza, ("message", "chat", "id")),
    "user id": (pizza, ("message", "from", "id")),
    "sender chat id": (u.anonymous_admin_message, ("message", "sender_chat", "id")),
    "thread id": (
        lambda: u.message("🍕", chat_id=u.FORUM, user_id=u.BOB, thread_id=7),
        ("message", "message_thread_id"),
    ),
    "direct-messages topic id": (
        u.direct_message,
        ("message", "direct_messages_topic", "topic_id"),
    ),
    "migrate_to_chat_id": (
        lambda: u.service_message(u.GROUP, migrate_to_chat_id=u.SUPERGROUP),
        ("message", "migrate_to_chat_id"),
    ),
    "migrate_from_chat_id": (
        lambda: u.service_message(u.SUPERGROUP, migrate_from_chat_id=u.GROUP),
        ("message", "migrate_from_chat_id"),
    ),
    "business chat id": (u.business_message, ("business_message", "chat", "id")),
    "guest user id": (u.guest_message, ("guest_message", "from", "id")),
    "button chat id": (u.callback_query, ("callback_query", "message", "chat", "id")),
    "button user id": (u.callback_query, ("callback_query", "from", "id")),
    "reaction actor chat id": (
        lambda: u.message_reaction(user_id=None, actor_chat_id=u.SUPERGROUP),
        ("message_reaction", "actor_chat", "id"),
    ),
    "voter chat id": (u.anonymous_poll_answer, ("poll_answer", "voter_chat", "id")),
    "member changer id": (u.chat_member, ("chat_member", "from", "id")),
    "business owner chat id": (u.business_connection, ("business_connection", "user_chat_id")),
    "booster id": (u.chat_boost, ("chat_boost", "boost", "source", "user", "id")),
}
TOKEN_FIELDS: dict[str, tuple[Build, tuple[str | int, ...]]] = {
    "business message connection": (
        u.business_message,
        ("business_message", "business_connection_id"),
    ),
    "edited business message connection": (
        lambda: u.business_message(edited=True),
        ("edited_business_message", "business_connection_id"),
    ),
    "deleted business messages connection": (
        u.deleted_business_messages,
        ("deleted_business_messages", "business_connection_id"),
    ),
    "business connection id": (u.business_connection, ("business_connection", "id")),
    "button message connection": (
        u.business_callback_query,
        ("callback_query", "message", "business_connection_id"),
    ),
    "guest query id": (u.guest_message, ("guest_message", "guest_query_id")),
}
# Fields that may be absent ("" counts as absent for a string the Bot API documents by
# what it means when non-empty, except where the update type requires it).
OPTIONAL = {
    "thread id",
    "migrate_to_chat_id",
    "migrate_from_chat_id",
    "guest query id",
    "button message connection",
}

BAD_IDS = [
    "abc",
    "42",
    [1, 2],
    {"id": 1},
    True,
    False,
    1.5,
    2**63,
    -(2**63) - 1,
    2**70,
    "\ud800",
]
BAD_TOKENS = [
    "\ud800",
    "a:b",
    "x" * 65,
    "two words",
    "pizzé",
    "nul\x00",
    "tab\t",
    123,
    ["abc"],
    True,
    {"id": "abc"},
]


def with_value(build: Build, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """The sample with ``value`` at ``path``."""
    update = build()
    node: Any = update
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return update


def post(client: Client, update: dict[str, Any]) -> Any:
    # json.dumps escapes a lone surrogate as \ud800, as a sender of bad JSON would.
    return client.post(
        URL,
        data=json.dumps(update).encode(),
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )


def snapshot() -> tuple[list[Any], list[Any]]:
    rows = Session.objects.order_by("pk").values_list("fragment", "key", "data", "revision")
    marks = ProcessedUpdate.objects.order_by("pk").values_list("bot_id", "update_id")
    return list(rows), list(marks)


@pytest.fixture
def client(fresh_bots: FakeBotAPI) -> Client:
    """The demo bot behind its webhook, replying to the fake Bot API."""
    return Client()


def assert_refused(client: Client, api: FakeBotAPI, update: dict[str, Any]) -> None:
    before, replies = snapshot(), len(api.calls_to("sendMessage"))
    response = post(client, update)
    assert response.status_code == 400, response.content
    assert snapshot() == before
    assert len(api.calls_to("sendMessage")) == replies


@pytest.mark.parametrize("field", [*ID_FIELDS, *TOKEN_FIELDS])
def test_the_samples_are_accepted(client: Client, api: FakeBotAPI, field: str) -> None:
    """The control: each sample is processed as it is."""
    build, _ = {**ID_FIELDS, **TOKEN_FIELDS}[field]
    assert post(client, build()).status_code == 200


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
@pytest.mark.parametrize("field", ID_FIELDS)
def test_ids_that_are_not_64_bit_integers_get_a_400(
    client: Client, api: FakeBotAPI, field: str, value: Any
) -> None:
    build, path = ID_FIELDS[field]
    assert_refused(client, api, with_value(build, path, value))


@pytest.mark.parametrize("value", BAD_TOKENS, ids=repr)
@pytest.mark.parametrize("field", TOKEN_FIELDS)
def test_connection_and_guest_query_ids_must_be_short_safe_strings(
    client: Client, api: FakeBotAPI, field: str, value: Any
) -> None:
    build, path = TOKEN_FIELDS[field]
    assert_refused(client, api, with_value(build, path, value))


@pytest.mark.parametrize("kind", ["business_message", "edited_business_message"])
@pytest.mark.parametrize("missing", ["", None, "absent"])
def test_a_business_message_must_name_its_connection(
    client: Client, api: FakeBotAPI, kind: str, missing: str | None
) -> None:
    """Without it, its chat would be taken for the bot's own chat with the same id."""
    update = u.business_message(edited=kind == "edited_business_message")
    if missing == "absent":
        del update[kind]["business_connection_id"]
    else:
        update[kind]["business_connection_id"] = missing
    assert_refused(client, api, update)


@pytest.mark.parametrize("chat", ["absent", None])
def test_a_message_must_have_its_chat(client: Client, api: FakeBotAPI, chat: str | None) -> None:
    """Every message has one; without it no per-chat key can be made."""
    update = u.message("🍕", chat_id=u.GROUP, user_id=u.BOB)
    if chat == "absent":
        del update["message"]["chat"]
    else:
        update["message"]["chat"] = chat
    assert_refused(client, api, update)


def test_is_topic_message_must_be_a_boolean(client: Client, api: FakeBotAPI) -> None:
    update = u.message("🍕", chat_id=u.FORUM, user_id=u.BOB, thread_id=7)
    update["message"]["is_topic_message"] = "yes"
    assert_refused(client, api, update)


def test_an_empty_guest_query_id_reads_as_absent() -> None:
    """The Bot API documents the field by what it means when non-empty."""
    update = Update.de_json(u.guest_message(query_id=""), None)
    check_key_parts(update)


def test_the_error_names_the_field() -> None:
    update = Update.de_json(with_value(*ID_FIELDS["thread id"], 1.5), None)
    with pytest.raises(InvalidKeyPart, match=r"message\.message_thread_id"):
        check_key_parts(update)


# -- any value, in any of these fields ----------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,64}")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def valid(field: str, value: Any) -> bool:
    """The rule, written out again: what the webhook must accept in ``field``."""
    if value is None or (value == "" and field in TOKEN_FIELDS):
        return field in OPTIONAL
    if field in ID_FIELDS:
        return type(value) is int and -(2**63) <= value < 2**63
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    field=st.sampled_from(sorted([*ID_FIELDS, *TOKEN_FIELDS])),
    value=st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.from_regex(_TOKEN, fullmatch=True),
        json_values,
    ),
)
def test_any_value_is_answered_200_if_valid_and_400_if_not(
    client: Client, api: FakeBotAPI, field: str, value: Any
) -> None:
    """Never a 500 (or a 503 Telegram would redeliver for a day), whatever the value."""
    build, path = {**ID_FIELDS, **TOKEN_FIELDS}[field]
    update = with_value(build, path, value)
    before = snapshot()
    response = post(client, update)
    assert response.status_code == (200 if valid(field, value) else 400), response.content
    if response.status_code == 400:
        assert snapshot() == before


@pytest.mark.django_db(transaction=True)  # the fetcher's updates commit on threads of their own
def test_long_polling_ignores_an_update_with_a_bad_key_part(make_bot: Any) -> None:
    """PTB's own fetcher calls process_update: a bad key part is logged and skipped there,
    as the webhook answers it 400, and nothing runs."""
    from telegram.ext import MessageHandler, filters

    from botsessions import Sessions

    from .updates import message

    ran: list[int] = []

    async def count(update: Any, context: Any) -> None:
        ran.append(update.update_id)

    bot = make_bot(Sessions(initial=dict), [MessageHandler(filters.ALL, count)])
    bad = message("hi")
    bad["message"]["message_thread_id"] = "abc"
    bad["message"]["is_topic_message"] = True
    update = Update.de_json(bad, bot.application.bot)
    bot.runner.initialize()
    bot.runner.run(bot.application.process_update(update))
    assert ran == []
    good = Update.de_json(message("hi"), bot.application.bot)
    bot.runner.run(bot.application.process_update(good))
    assert ran == [good.update_id]  # the control
