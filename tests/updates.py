"""Builders of Telegram update JSON for tests, shaped like what Telegram sends."""

from __future__ import annotations

import itertools
from typing import Any

_update_ids = itertools.count(700_000_000)
_message_ids = itertools.count(1)

ALICE = 111111111
BOB = 222222222
OWNER = 333333333  # a business account's owner, who connected the bot to it
GROUP = -4012345678
SUPERGROUP = -1001987654321
FORUM = -1002233445566
CHANNEL = -1003344556677
DIRECT_MESSAGES = -1004455667788  # the direct-messages chat of CHANNEL
CONNECTION = "wLq9Tr2VxkGyAQAAm0cnGkVbp5E"  # a business connection id
GUEST_QUERY = "4372847126387462134"
# What Telegram puts in "from" of a message sent on behalf of a group (its anonymous
# admins) or forwarded automatically from a channel: placeholders, not people.
ANONYMOUS_ADMIN = 1087968824
TELEGRAM = 777000


def _chat(chat_id: int, title: str = "Pizza friends") -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Alice"}
    if chat_id == CHANNEL:
        return {"id": chat_id, "type": "channel", "title": "Pizza news"}
    if chat_id == DIRECT_MESSAGES:
        return {
            "id": chat_id,
            "type": "supergroup",
            "title": "Pizza news",
            "is_direct_messages": True,
        }
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return {"id": chat_id, "type": kind, "title": title}


def _user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"User{user_id % 1000}"}


def message(
    text: str = "hello",
    *,
    chat_id: int = ALICE,
    user_id: int | None = None,
    update_id: int | None = None,
    thread_id: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A text message update; commands get their bot_command entity."""
    body: dict[str, Any] = {
        "message_id": next(_message_ids),
        "date": 1763740800,
        "chat": _chat(chat_id),
        "from": _user(user_id if user_id is not None else abs(chat_id) % 10**10 or ALICE),
        "text": text,
        **extra,
    }
    if thread_id is not None:
        body["message_thread_id"] = thread_id
        body["is_topic_message"] = True
        if body["chat"]["type"] == "supergroup":
            body["chat"]["is_forum"] = True  # private chats with topics are not forums
    if text.startswith("/"):
        length = len(text.split(maxsplit=1)[0])
        body["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return {
        "update_id": update_id if update_id is not None else next(_update_ids),
        "message": body,
    }


def service_message(chat_id: int, user_id: int = BOB, **fields: Any) -> dict[str, Any]:
    """A message without text, such as the two chat-migration notices."""
    return {
        "update_id": next(_update_ids),
        "message": {
            "message_id": next(_message_ids),
            "date": 1763740808,
            "chat": _chat(chat_id),
            "from": _user(user_id),
            **fields,
        },
    }


def inline_query(user_id: int = ALICE) -> dict[str, Any]:
    return {
        "update_id": next(_update_ids),
        "inline_query": {
            "id": "1234567890123",
            "from": _user(user_id),
            "query": "pizza",
            "offset": "",
        },
    }


def poll_answer(user_id: int = BOB) -> dict[str, Any]:
    return {
        "update_id": next(_update_ids),
        "poll_answer": {
            "poll_id": "5432109876543210000",
            "user": _user(user_id),
            "option_ids": [1],
            "option_persistent_ids": ["1"],
        },
    }


def callback_query(
    data: str = "more", *, chat_id: int = ALICE, user_id: int = ALICE
) -> dict[str, Any]:
    return {
        "update_id": next(_update_ids),
        "callback_query": {
            "id": "4382bfdwdsb323b2d9",
            "from": _user(user_id),
            "chat_instance": "-8837000000000000000",
            "data": data,
            "message": {
                "message_id": next(_message_ids),
                "date": 1763740805,
                "chat": _chat(chat_id),
                "text": "Menu",
            },
        },
    }


# -- one builder per kind of update, shaped as the Bot API documents each -------------


def _update(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"update_id": next(_update_ids), kind: body}


def _message_body(
    chat_id: int, user_id: int | None, text: str = "hello", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": next(_message_ids),
        "date": 1763740800,
        "chat": _chat(chat_id),
        "text": text,
        **extra,
    }
    if user_id is not None:
        body["from"] = _user(user_id)
    return body


def edited_message(chat_id: int = GROUP, user_id: int = BOB) -> dict[str, Any]:
    body = _message_body(chat_id, user_id, "hello again", edit_date=1763740900)
    return _update("edited_message", body)


def anonymous_admin_message(chat_id: int = SUPERGROUP) -> dict[str, Any]:
    """An anonymous admin writes as the group itself; "from" is a placeholder user."""
    body = _message_body(chat_id, ANONYMOUS_ADMIN, sender_chat=_chat(chat_id))
    body["from"] = {"id": ANONYMOUS_ADMIN, "is_bot": True, "first_name": "Group"}
    return _update("message", body)


def direct_message(user_id: int = BOB, topic_id: int = 9) -> dict[str, Any]:
    """A user writes to a channel's direct messages; each user's thread is a topic."""
    topic = {"topic_id": topic_id, "user": _user(user_id)}
    body = _message_body(DIRECT_MESSAGES, user_id, direct_messages_topic=topic)
    return _update("message", body)


def channel_post(chat_id: int = CHANNEL, *, edited: bool = False) -> dict[str, Any]:
    body = _message_body(chat_id, None, "Today: margherita", sender_chat=_chat(chat_id))
    if edited:
        body["edit_date"] = 1763740900
    return _update("edited_channel_post" if edited else "channel_post", body)


def chosen_inline_result(user_id: int = ALICE) -> dict[str, Any]:
    return _update(
        "chosen_inline_result",
        {"result_id": "margherita", "from": _user(user_id), "query": "pizza"},
    )


def inline_callback_query(user_id: int = ALICE) -> dict[str, Any]:
    """A button on a message sent through inline mode: no chat, only who pressed it."""
    return _update(
        "callback_query",
        {
            "id": "4382bfdwdsb323b2e1",
            "from": _user(user_id),
            "inline_message_id": "AgAAAB4oAQBr0dPaEBRHNTkvG4Y",
            "chat_instance": "-3712500000000000000",
            "data": "more",
        },
    )


def shipping_query(user_id: int = ALICE) -> dict[str, Any]:
    address = {
        "country_code": "IT",
        "state": "",
        "city": "Napoli",
        "street_line1": "Via dei Tribunali 32",
        "street_line2": "",
        "post_code": "80138",
    }
    return _update(
        "shipping_query",
        {
            "id": "shipping-1",
            "from": _user(user_id),
            "invoice_payload": "order-1",
            "shipping_address": address,
        },
    )


def pre_checkout_query(user_id: int = ALICE) -> dict[str, Any]:
    return _update(
        "pre_checkout_query",
        {
            "id": "checkout-1",
            "from": _user(user_id),
            "currency": "XTR",
            "total_amount": 50,
            "invoice_payload": "order-1",
        },
    )


def poll() -> dict[str, Any]:
    """A poll the bot sent changed state: neither a chat nor a user comes with it."""
    return _update(
        "poll",
        {
            "id": "5432109876543210000",
            "question": "Pineapple?",
            "options": [
                {"text": "Yes", "voter_count": 1, "persistent_id": "0"},
                {"text": "No", "voter_count": 4, "persistent_id": "1"},
            ],
            "total_voter_count": 5,
            "is_closed": True,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
            "allows_revoting": False,
            "members_only": False,
        },
    )


def anonymous_poll_answer(voter_chat_id: int = CHANNEL) -> dict[str, Any]:
    """A vote cast on behalf of a chat (a channel, an anonymous admin's group)."""
    return _update(
        "poll_answer",
        {
            "poll_id": "5432109876543210000",
            "voter_chat": _chat(voter_chat_id),
            # Telegram sends this placeholder user too, for bots that read only "user".
            "user": _user(136817688),
            "option_ids": [0],
            "option_persistent_ids": ["0"],
        },
    )


def _member(user_id: int, status: str) -> dict[str, Any]:
    return {"status": status, "user": _user(user_id)}


def my_chat_member(chat_id: int = GROUP, user_id: int = BOB) -> dict[str, Any]:
    """``user_id`` added the bot to the chat."""
    bot = {"id": 987654321, "is_bot": True, "first_name": "Pizza Bot"}
    return _update(
        "my_chat_member",
        {
            "chat": _chat(chat_id),
            "from": _user(user_id),
            "date": 1763740800,
            "old_chat_member": {"status": "left", "user": bot},
            "new_chat_member": {"status": "member", "user": bot},
        },
    )


def chat_member(chat_id: int = SUPERGROUP, user_id: int = BOB) -> dict[str, Any]:
    """``user_id`` joined the chat."""
    return _update(
        "chat_member",
        {
            "chat": _chat(chat_id),
            "from": _user(user_id),
            "date": 1763740800,
            "old_chat_member": _member(user_id, "left"),
            "new_chat_member": _member(user_id, "member"),
        },
    )


def chat_join_request(chat_id: int = SUPERGROUP, user_id: int = ALICE) -> dict[str, Any]:
    return _update(
        "chat_join_request",
        {
            "chat": _chat(chat_id),
            "from": _user(user_id),
            "user_chat_id": user_id,
            "date": 1763740800,
        },
    )


def _boost_source(user_id: int) -> dict[str, Any]:
    return {"source": "premium", "user": _user(user_id)}


def chat_boost(chat_id: int = CHANNEL, user_id: int = ALICE) -> dict[str, Any]:
    """``user_id`` boosted the chat; the user is known only through the boost's source."""
    boost = {
        "boost_id": "boost-1",
        "add_date": 1763740800,
        "expiration_date": 1766332800,
        "source": _boost_source(user_id),
    }
    return _update("chat_boost", {"chat": _chat(chat_id), "boost": boost})


def removed_chat_boost(chat_id: int = CHANNEL, user_id: int = ALICE) -> dict[str, Any]:
    return _update(
        "removed_chat_boost",
        {
            "chat": _chat(chat_id),
            "boost_id": "boost-1",
            "remove_date": 1766332800,
            "source": _boost_source(user_id),
        },
    )


def message_reaction(
    chat_id: int = GROUP, user_id: int | None = BOB, actor_chat_id: int | None = None
) -> dict[str, Any]:
    """A reaction set by a user, or by an anonymous admin on behalf of ``actor_chat_id``."""
    body: dict[str, Any] = {
        "chat": _chat(chat_id),
        "message_id": 14,
        "date": 1763740810,
        "old_reaction": [],
        "new_reaction": [{"type": "emoji", "emoji": "🔥"}],
    }
    if user_id is not None:
        body["user"] = _user(user_id)
    if actor_chat_id is not None:
        body["actor_chat"] = _chat(actor_chat_id)
    return _update("message_reaction", body)


def message_reaction_count(chat_id: int = GROUP) -> dict[str, Any]:
    """Reactions counted in a chat whose reactions are anonymous: no user."""
    return _update(
        "message_reaction_count",
        {
            "chat": _chat(chat_id),
            "message_id": 14,
            "date": 1763740810,
            "reactions": [{"type": {"type": "emoji", "emoji": "🔥"}, "total_count": 3}],
        },
    )


def business_connection(connection: str = CONNECTION, owner_id: int = OWNER) -> dict[str, Any]:
    """The owner of a business account connected the bot to it."""
    return _update(
        "business_connection",
        {
            "id": connection,
            "user": _user(owner_id),
            "user_chat_id": owner_id,
            "date": 1763740800,
            "is_enabled": True,
            "rights": {"can_reply": True},
        },
    )


def business_message(
    text: str = "Is the oven on?",
    *,
    chat_id: int = ALICE,
    user_id: int | None = None,
    connection: str = CONNECTION,
    edited: bool = False,
) -> dict[str, Any]:
    """A message in a business account's private chat with a customer.

    From the customer by default; ``user_id=OWNER`` for one the owner sent.
    """
    body = _message_body(
        chat_id,
        user_id if user_id is not None else chat_id,
        text,
        business_connection_id=connection,
    )
    if edited:
        body["edit_date"] = 1763740900
    return _update("edited_business_message" if edited else "business_message", body)


def business_callback_query(
    chat_id: int = ALICE, user_id: int = ALICE, connection: str = CONNECTION
) -> dict[str, Any]:
    """A button pressed on a message the bot sent on behalf of a business account."""
    message = _message_body(chat_id, OWNER, "Menu", business_connection_id=connection)
    message["sender_business_bot"] = {"id": 987654321, "is_bot": True, "first_name": "Pizza"}
    return _update(
        "callback_query",
        {
            "id": "4382bfdwdsb323b2e2",
            "from": _user(user_id),
            "chat_instance": "-5512300000000000000",
            "data": "more",
            "message": message,
        },
    )


def deleted_business_messages(
    chat_id: int = ALICE, connection: str = CONNECTION
) -> dict[str, Any]:
    return _update(
        "deleted_business_messages",
        {"business_connection_id": connection, "chat": _chat(chat_id), "message_ids": [3, 4]},
    )


def purchased_paid_media(user_id: int = ALICE) -> dict[str, Any]:
    return _update(
        "purchased_paid_media", {"from": _user(user_id), "paid_media_payload": "photo-1"}
    )


def managed_bot(user_id: int = ALICE) -> dict[str, Any]:
    """``user_id`` created a bot that this bot manages."""
    created = {"id": 555555555, "is_bot": True, "first_name": "Alice's pizza bot"}
    return _update("managed_bot", {"user": _user(user_id), "bot": created})


def guest_message(
    text: str = "@pizza_test_bot which oven?",
    *,
    chat_id: int = SUPERGROUP,
    user_id: int = BOB,
    query_id: str = GUEST_QUERY,
) -> dict[str, Any]:
    """Someone summoned the bot into a chat it is not a member of (Bot API 10.0)."""
    body = _message_body(chat_id, user_id, text, guest_query_id=query_id)
    return _update("guest_message", body)
