"""Which session each kind of update gets under each built-in resolver.

The expected keys below are written by hand from the Bot API documentation and PTB's
docstrings (which update carries which chat, user, topic or business connection), not
taken from the code. Every update type PTB knows has a row, some have several. The
resolvers are checked against them directly and through a bot on both storages, and
the README's table is rendered from them: ``python -m tests.test_key_table`` rewrites
it, and a test fails while it is out of date.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import (
    Fragment,
    SessionKeyError,
    Sessions,
    per_chat,
    per_topic,
    per_user,
    per_user_in_chat,
)
from botsessions.keys import describe_key, update_kind

from . import updates as u

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- key table: rendered by `python -m tests.test_key_table` -->"
END = "<!-- end of key table -->"

B = f"business:{u.CONNECTION}"  # the space every key of a business update starts with


@dataclass(frozen=True)
class Row:
    """One sample update and the key each built-in resolver must give it."""

    update: str  # the update type, as in Update.ALL_TYPES
    case: str  # what is special about this sample, if anything
    sample: Callable[[], dict[str, Any]]
    per_chat: str | None
    per_user: str | None
    per_user_in_chat: str | None
    per_topic: str | None
    note: str = ""


ROWS = [
    Row(
        "message",
        "private chat",
        lambda: u.message(chat_id=u.ALICE),
        f"chat:{u.ALICE}",
        f"user:{u.ALICE}",
        f"chat:{u.ALICE}:user:{u.ALICE}",
        f"chat:{u.ALICE}",
    ),
    Row(
        "message",
        "group",
        lambda: u.message(chat_id=u.GROUP, user_id=u.BOB),
        f"chat:{u.GROUP}",
        f"user:{u.BOB}",
        f"chat:{u.GROUP}:user:{u.BOB}",
        f"chat:{u.GROUP}",
    ),
    Row(
        "message",
        "forum topic",
        lambda: u.message(chat_id=u.FORUM, user_id=u.ALICE, thread_id=7),
        f"chat:{u.FORUM}",
        f"user:{u.ALICE}",
        f"chat:{u.FORUM}:user:{u.ALICE}",
        f"chat:{u.FORUM}:topic:7",
        "`message_thread_id` when `is_topic_message`",
    ),
    Row(
        "message",
        "private chat topic",
        lambda: u.message(chat_id=u.ALICE, thread_id=3),
        f"chat:{u.ALICE}",
        f"user:{u.ALICE}",
        f"chat:{u.ALICE}:user:{u.ALICE}",
        f"chat:{u.ALICE}:topic:3",
        "private chats with the bot have topics since Bot API 9.3",
    ),
    Row(
        "message",
        "channel direct messages",
        lambda: u.direct_message(user_id=u.BOB, topic_id=9),
        f"chat:{u.DIRECT_MESSAGES}",
        f"user:{u.BOB}",
        f"chat:{u.DIRECT_MESSAGES}:user:{u.BOB}",
        f"chat:{u.DIRECT_MESSAGES}:topic:9",
        "the topic is `direct_messages_topic.topic_id`",
    ),
    Row(
        "message",
        "anonymous admin",
        lambda: u.anonymous_admin_message(chat_id=u.SUPERGROUP),
        f"chat:{u.SUPERGROUP}",
        None,
        None,
        f"chat:{u.SUPERGROUP}",
        "sent on behalf of a chat: `from` is a placeholder shared by all such messages",
    ),
    Row(
        "edited_message",
        "",
        lambda: u.edited_message(chat_id=u.GROUP, user_id=u.BOB),
        f"chat:{u.GROUP}",
        f"user:{u.BOB}",
        f"chat:{u.GROUP}:user:{u.BOB}",
        f"chat:{u.GROUP}",
    ),
    Row(
        "channel_post",
        "",
        lambda: u.channel_post(u.CHANNEL),
        f"chat:{u.CHANNEL}",
        None,
        None,
        f"chat:{u.CHANNEL}",
        "a user key only when the post has a `from`",
    ),
    Row(
        "edited_channel_post",
        "",
        lambda: u.channel_post(u.CHANNEL, edited=True),
        f"chat:{u.CHANNEL}",
        None,
        None,
        f"chat:{u.CHANNEL}",
    ),
    Row(
        "inline_query",
        "",
        lambda: u.inline_query(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
    ),
    Row(
        "chosen_inline_result",
        "",
        lambda: u.chosen_inline_result(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
    ),
    Row(
        "callback_query",
        "on a message",
        lambda: u.callback_query(chat_id=u.ALICE, user_id=u.ALICE),
        f"chat:{u.ALICE}",
        f"user:{u.ALICE}",
        f"chat:{u.ALICE}:user:{u.ALICE}",
        f"chat:{u.ALICE}",
        "the user is who pressed the button",
    ),
    Row(
        "callback_query",
        "on an inline message",
        lambda: u.inline_callback_query(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
        "only `inline_message_id`, no chat",
    ),
    Row(
        "callback_query",
        "on a business message",
        lambda: u.business_callback_query(chat_id=u.ALICE, user_id=u.ALICE),
        f"{B}:chat:{u.ALICE}",
        f"{B}:user:{u.ALICE}",
        f"{B}:chat:{u.ALICE}:user:{u.ALICE}",
        f"{B}:chat:{u.ALICE}",
        "the message's `business_connection_id`",
    ),
    Row(
        "shipping_query",
        "",
        lambda: u.shipping_query(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
    ),
    Row(
        "pre_checkout_query",
        "",
        lambda: u.pre_checkout_query(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
    ),
    Row("poll", "", u.poll, None, None, None, None, "neither a chat nor a user"),
    Row(
        "poll_answer",
        "from a user",
        lambda: u.poll_answer(u.BOB),
        None,
        f"user:{u.BOB}",
        None,
        None,
    ),
    Row(
        "poll_answer",
        "from a `voter_chat`",
        lambda: u.anonymous_poll_answer(u.CHANNEL),
        None,
        None,
        None,
        None,
        "the voter is a chat, and the vote is in no chat",
    ),
    Row(
        "my_chat_member",
        "",
        lambda: u.my_chat_member(chat_id=u.GROUP, user_id=u.BOB),
        f"chat:{u.GROUP}",
        f"user:{u.BOB}",
        f"chat:{u.GROUP}:user:{u.BOB}",
        f"chat:{u.GROUP}",
        "the user is who changed the bot's status",
    ),
    Row(
        "chat_member",
        "",
        lambda: u.chat_member(chat_id=u.SUPERGROUP, user_id=u.BOB),
        f"chat:{u.SUPERGROUP}",
        f"user:{u.BOB}",
        f"chat:{u.SUPERGROUP}:user:{u.BOB}",
        f"chat:{u.SUPERGROUP}",
        "the user is who made the change (`from`)",
    ),
    Row(
        "chat_join_request",
        "",
        lambda: u.chat_join_request(chat_id=u.SUPERGROUP, user_id=u.ALICE),
        f"chat:{u.SUPERGROUP}",
        f"user:{u.ALICE}",
        f"chat:{u.SUPERGROUP}:user:{u.ALICE}",
        f"chat:{u.SUPERGROUP}",
    ),
    Row(
        "chat_boost",
        "",
        lambda: u.chat_boost(chat_id=u.CHANNEL, user_id=u.ALICE),
        f"chat:{u.CHANNEL}",
        None,
        None,
        f"chat:{u.CHANNEL}",
        "the booster is part of the boost's source, not the update's sender",
    ),
    Row(
        "removed_chat_boost",
        "",
        lambda: u.removed_chat_boost(chat_id=u.CHANNEL, user_id=u.ALICE),
        f"chat:{u.CHANNEL}",
        None,
        None,
        f"chat:{u.CHANNEL}",
    ),
    Row(
        "message_reaction",
        "from a user",
        lambda: u.message_reaction(chat_id=u.GROUP, user_id=u.BOB),
        f"chat:{u.GROUP}",
        f"user:{u.BOB}",
        f"chat:{u.GROUP}:user:{u.BOB}",
        f"chat:{u.GROUP}",
        "reactions carry no topic",
    ),
    Row(
        "message_reaction",
        "from an `actor_chat`",
        lambda: u.message_reaction(chat_id=u.SUPERGROUP, user_id=None, actor_chat_id=u.SUPERGROUP),
        f"chat:{u.SUPERGROUP}",
        None,
        None,
        f"chat:{u.SUPERGROUP}",
        "anonymous: a chat reacted, no user",
    ),
    Row(
        "message_reaction_count",
        "",
        lambda: u.message_reaction_count(u.GROUP),
        f"chat:{u.GROUP}",
        None,
        None,
        f"chat:{u.GROUP}",
    ),
    Row(
        "business_connection",
        "",
        lambda: u.business_connection(owner_id=u.OWNER),
        None,
        f"{B}:user:{u.OWNER}",
        None,
        None,
        "the owner of the business account",
    ),
    Row(
        "business_message",
        "",
        lambda: u.business_message(chat_id=u.ALICE),
        f"{B}:chat:{u.ALICE}",
        f"{B}:user:{u.ALICE}",
        f"{B}:chat:{u.ALICE}:user:{u.ALICE}",
        f"{B}:chat:{u.ALICE}",
        "the chat is not the bot's chat with the same id",
    ),
    Row(
        "edited_business_message",
        "sent by the owner",
        lambda: u.business_message(chat_id=u.ALICE, user_id=u.OWNER, edited=True),
        f"{B}:chat:{u.ALICE}",
        f"{B}:user:{u.OWNER}",
        f"{B}:chat:{u.ALICE}:user:{u.OWNER}",
        f"{B}:chat:{u.ALICE}",
    ),
    Row(
        "deleted_business_messages",
        "",
        lambda: u.deleted_business_messages(chat_id=u.ALICE),
        f"{B}:chat:{u.ALICE}",
        None,
        None,
        f"{B}:chat:{u.ALICE}",
    ),
    Row(
        "purchased_paid_media",
        "",
        lambda: u.purchased_paid_media(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
    ),
    Row(
        "managed_bot",
        "",
        lambda: u.managed_bot(u.ALICE),
        None,
        f"user:{u.ALICE}",
        None,
        None,
        "the user who created the managed bot",
    ),
    Row(
        "guest_message",
        "group",
        lambda: u.guest_message(chat_id=u.SUPERGROUP, user_id=u.BOB),
        f"guest:chat:{u.SUPERGROUP}",
        f"user:{u.BOB}",
        f"guest:chat:{u.SUPERGROUP}:user:{u.BOB}",
        f"guest:chat:{u.SUPERGROUP}",
        "not keyed by `guest_query_id`, which is new for every message",
    ),
    Row(
        "guest_message",
        "private chat",
        lambda: u.guest_message(chat_id=u.ALICE, user_id=u.BOB),
        f"guest:chat:{u.ALICE}:user:{u.BOB}",
        f"user:{u.BOB}",
        f"guest:chat:{u.ALICE}:user:{u.BOB}",
        f"guest:chat:{u.ALICE}:user:{u.BOB}",
        "the chat's id is one of two people's: the summoner keeps it apart",
    ),
]

RESOLVERS = {
    "per_chat": per_chat,
    "per_user": per_user,
    "per_user_in_chat": per_user_in_chat,
    "per_topic": per_topic,
}
FRAGMENTS = {"chat": per_chat, "user": per_user, "member": per_user_in_chat, "topic": per_topic}
ROW_IDS = [f"{row.update}-{row.case}" if row.case else row.update for row in ROWS]


def expected(row: Row) -> dict[str, str | None]:
    return {name: getattr(row, name) for name in RESOLVERS}


# -- the README table ---------------------------------------------------------------------

_PART = re.compile(r"(business|chat|user|topic):([^:]+)")
_LETTERS = {"business": "B", "chat": "C", "user": "U", "topic": "T"}


def shape(key: str | None) -> str:
    """``business:AbC:chat:42`` → ``business:B:chat:C``: the key without its values."""
    if key is None:
        return "None"
    return "`" + _PART.sub(lambda m: f"{m[1]}:{_LETTERS[m[1]]}", key) + "`"


def render() -> str:
    """The README table, from the rows above."""
    lines = [
        START,
        "",
        "| update | per_chat | per_user | per_user_in_chat | per_topic | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        name = f"`{row.update}`" + (f" ({row.case})" if row.case else "")
        keys = " | ".join(shape(key) for key in expected(row).values())
        lines.append(f"| {name} | {keys} | {row.note} |")
    lines += ["", END]
    return "\n".join(lines)


def readme_with_table(text: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + render() + text[end:]


# -- the tests ------------------------------------------------------------------------------


def test_every_update_type_ptb_knows_has_a_row():
    assert {row.update for row in ROWS} >= set(Update.ALL_TYPES)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_the_resolvers_give_the_expected_keys(row: Row) -> None:
    update = Update.de_json(row.sample(), None)
    assert update_kind(update) == row.update
    keys = {name: resolver(update) for name, resolver in RESOLVERS.items()}
    assert keys == expected(row)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_built_in_keys_describe_themselves(row: Row) -> None:
    for key in expected(row).values():
        if key is not None:
            assert describe_key(key) != key


@pytest.mark.django_db
@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_every_row_through_a_bot(make_bot: Any, probe: Any, row: Row) -> None:
    """Each fragment stores under the expected key, or refuses to be touched."""
    refused: list[str] = []

    async def touch(update: Any, context: Any) -> None:
        for name in FRAGMENTS:
            try:
                setattr(context.session, name, {"update": row.update})
            except SessionKeyError:
                refused.append(name)

    sessions = Sessions.multi(
        **{
            name: Fragment(key=resolver, storage=probe.storage)
            for name, resolver in FRAGMENTS.items()
        }
    )
    bot = make_bot(sessions, [TypeHandler(Update, touch)])
    bot.process(row.sample())
    assert bot.errors == []
    want = dict(zip(FRAGMENTS, expected(row).values(), strict=True))
    assert refused == [name for name, key in want.items() if key is None]
    for name, key in want.items():
        if key is not None:
            assert probe.stored_text(123456, name, key) == f'{{"update":"{row.update}"}}'
    assert stored_count(probe) == len(want) - len(refused)


def stored_count(probe: Any) -> int:
    if probe.storage is None:
        from botsessions.models import Session

        return Session.objects.count()

    async def count() -> int:
        keys = probe.storage.keys(bot_id=None)
        return len([key async for key in keys])

    return asyncio.run(count())


def test_the_readme_table_is_rendered_from_these_rows():
    text = README.read_text()
    assert START in text and END in text, "the README lost its key table markers"
    assert text == readme_with_table(text), "run: python -m tests.test_key_table"


if __name__ == "__main__":
    # Rewrites the README's table from the rows above.
    README.write_text(readme_with_table(README.read_text()))
    sys.exit(0)
