"""The fields of an update that become parts of session keys, checked on arrival.

PTB decodes whatever JSON it is given: a chat id may arrive as ``"abc"``, ``[1, 2]``,
``true`` or a 70-bit number, a thread id as ``1.5``, a connection id with a lone
surrogate in it. Built into a key, such a value makes a session no real update can
reach again (a group "migrated" to ``chat:abc``), or a key the database cannot
store, which fails after the handlers ran. So every field a key can be built from is
checked when the update is decoded, before anything runs; the webhook answers 400 to
an update that fails, and nothing changes.

Checked here: the ids of the chat, the sender, a sender chat (anonymous admins,
reactions and votes on behalf of a chat) and a boost's user; topic and thread ids;
``migrate_to_chat_id`` and ``migrate_from_chat_id`` (64-bit integers, never booleans);
business connection ids and guest query ids (1 to 64 characters of
``A-Z a-z 0-9 . _ ~ + / = -``, so never the ``:`` that separates key parts). A message
must have its chat, and a business message must name its connection.
"""

from __future__ import annotations

import re
from typing import Any

from telegram import Update

from .keys import BUSINESS_MESSAGE_FIELDS, MESSAGE_FIELDS

_INT64 = range(-(2**63), 2**63)
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,64}")


class InvalidKeyPart(ValueError):
    """A field that a session key can be built from holds something no id can be."""


def check_id(value: Any, field: str) -> None:
    """Refuse anything but a 64-bit integer (``bool`` is an ``int`` to Python, not here)."""
    if type(value) is not int or value not in _INT64:
        raise InvalidKeyPart(f"{field} must be a 64-bit integer")


def check_token(value: Any, field: str) -> None:
    """Refuse anything but a short string of characters that are safe in a key."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise InvalidKeyPart(f"{field} must be 1 to 64 letters, digits or ._~+/=-")


def _check_optional_id(value: Any, field: str) -> None:
    if value is not None:
        check_id(value, field)


def _check_party(party: Any, field: str) -> None:
    """A chat or user, when present: its id."""
    if party is not None:
        check_id(getattr(party, "id", None), f"{field}.id")


def _check_message(message: Any, field: str) -> None:
    _check_party(getattr(message, "chat", None), f"{field}.chat")
    _check_party(getattr(message, "from_user", None), f"{field}.from")
    _check_party(getattr(message, "sender_chat", None), f"{field}.sender_chat")
    is_topic = getattr(message, "is_topic_message", None)
    if is_topic is not None and not isinstance(is_topic, bool):
        raise InvalidKeyPart(f"{field}.is_topic_message must be true or false")
    for name in ("message_thread_id", "migrate_to_chat_id", "migrate_from_chat_id"):
        _check_optional_id(getattr(message, name, None), f"{field}.{name}")
    direct = getattr(message, "direct_messages_topic", None)
    if direct is not None:
        check_id(getattr(direct, "topic_id", None), f"{field}.direct_messages_topic.topic_id")
    for name in ("business_connection_id", "guest_query_id"):
        value = getattr(message, name, None)
        if value is not None and value != "":  # the Bot API reads "" as absent
            check_token(value, f"{field}.{name}")


def check_key_parts(update: Update) -> None:
    """Raise :class:`InvalidKeyPart` if any field a key can be built from is not valid."""
    for field in MESSAGE_FIELDS:
        message = getattr(update, field, None)
        if message is not None:
            if getattr(message, "chat", None) is None:
                raise InvalidKeyPart(f"{field} must have its chat")
            _check_message(message, field)
            if field in BUSINESS_MESSAGE_FIELDS and not message.business_connection_id:
                raise InvalidKeyPart(f"{field} must name its business_connection_id")
    query = update.callback_query
    if query is not None and query.message is not None:
        _check_message(query.message, "callback_query.message")
    connection = getattr(update, "business_connection", None)
    if connection is not None:
        check_token(connection.id, "business_connection.id")
        check_id(connection.user_chat_id, "business_connection.user_chat_id")
    deleted = getattr(update, "deleted_business_messages", None)
    if deleted is not None:
        check_token(deleted.business_connection_id, "deleted_business_messages.connection")
    for boost_update in (update.chat_boost, update.removed_chat_boost):
        boost = getattr(boost_update, "boost", None)
        source = getattr(boost, "source", None) or getattr(boost_update, "source", None)
        _check_party(getattr(source, "user", None), "boost source user")
    # Whatever else PTB considers the update's chat, user or sender (members, queries,
    # reactions, votes, purchases) is covered by its effective_* properties.
    _check_party(update.effective_chat, "chat")
    _check_party(update.effective_user, "user")
    _check_party(update.effective_sender, "sender")
