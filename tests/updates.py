"""Builders of Telegram update JSON for tests, shaped like what Telegram sends."""

from __future__ import annotations

import itertools
from typing import Any

_update_ids = itertools.count(700_000_000)
_message_ids = itertools.count(1)

ALICE = 111111111
BOB = 222222222
GROUP = -4012345678
SUPERGROUP = -1001987654321


def _chat(chat_id: int, title: str = "Pizza friends") -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Alice"}
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
        body["chat"]["is_forum"] = True
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
