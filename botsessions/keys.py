"""Session key resolvers: which session an update belongs to.

A resolver takes the update and returns a string key, or ``None`` when the update
has no session under that scheme (an inline query has no chat, for instance).

The built-in keys describe themselves (``chat:-4012345678``, ``user:111``,
``chat:-100…:user:111``, ``chat:-100…:topic:7``) so that the admin can say what a
row means and chat migrations can find every row of a chat. Telegram ids are
64-bit integers and travel as their exact decimal text; the webhook refuses an
update whose ids are anything else (:mod:`botsessions.key_parts`).

Two kinds of chat share their ids with the bot's own chats without being them, so
their keys start with a space of their own:

- a business account's chats, reached through a business connection:
  ``business:<connection id>:chat:42``. The same customer talking to two businesses
  the bot serves, or to the bot itself, is three conversations; per-user keys of
  business updates carry the connection too.
- chats the bot was summoned into as a guest: ``guest:chat:-100…``. The summoner is a
  user of the bot, as with an inline query, so their per-user key is the plain one.
  A private guest chat is reported under the id of one of the two people in it, so
  the same id can stand for several conversations: there the chat's key also names
  the user who summoned the bot (``guest:chat:42:user:7``).

Chat migrations find a fragment's rows of a chat by the key its resolver gives the
whole chat: ``chat_key`` on the resolver (the built-in :func:`chat_key` unless it says
otherwise, ``None`` to stay out of migrations).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from telegram import Update

KeyResolver = Callable[[object], "str | None"]

CHAT_PREFIX = "chat:"
BUSINESS = "business"
GUEST = "guest"

# Updates that carry a message, in the order PTB looks for one; a callback query's
# message comes after these (its sender is whoever sent the message with the button,
# not whoever pressed it).
MESSAGE_FIELDS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
    "guest_message",
)
BUSINESS_MESSAGE_FIELDS = ("business_message", "edited_business_message")


def chat_key(chat_id: int) -> str:
    """The key of a whole chat, as :func:`per_chat` builds it."""
    return f"{CHAT_PREFIX}{chat_id}"


# -- where an update happened ----------------------------------------------------------


class Place(NamedTuple):
    """What the built-in resolvers build keys from.

    ``space`` goes in front of every key of the chat (empty for the bot's own chats);
    ``user_space`` in front of the per-user key. ``chat`` is the chat's part of the key,
    which in a private guest chat names the summoner too.
    """

    space: str
    chat: str | None
    user: int | None
    topic: int | None
    user_space: str
    chat_names_user: bool = False


def sent_message(update: Update) -> tuple[str, Any]:
    """The field and message of an update that brings one (not a callback query's)."""
    for field in MESSAGE_FIELDS:
        message = getattr(update, field, None)
        if message is not None:
            return field, message
    return "", None


def topic_of(message: Any) -> int | None:
    """The forum, private-chat or direct-messages topic a message is in, if any."""
    direct = getattr(message, "direct_messages_topic", None)
    if direct is not None:
        return direct.topic_id  # type: ignore[no-any-return]
    if getattr(message, "is_topic_message", None) and getattr(message, "message_thread_id", None):
        return message.message_thread_id  # type: ignore[no-any-return]
    return None


def place_of(update: object) -> Place | None:
    """Where an update happened, as the built-in resolvers see it; ``None`` for non-updates.

    The sender is ``None`` for a message sent on behalf of a chat (an anonymous group
    admin, a channel's post forwarded to its discussion group): its ``from`` is a
    placeholder user shared by every such message in every chat.
    """
    if not isinstance(update, Update):
        return None
    field, message = sent_message(update)
    if message is not None:
        chat = message.chat
        on_behalf = message.sender_chat is not None and chat.type != "channel"
        user = None if on_behalf else message.from_user
        connection = message.business_connection_id or None
        business = connection is not None or field in BUSINESS_MESSAGE_FIELDS
        guest = field == "guest_message" or bool(getattr(message, "guest_query_id", None))
    else:
        # The message a button was on (perhaps an inaccessible one), if any.
        chat, user = update.effective_chat, update.effective_user
        if update.poll_answer is not None and update.poll_answer.voter_chat is not None:
            # A vote cast on behalf of a chat names a placeholder user, the same one for
            # every such vote in every chat.
            user = None
        message = None if update.callback_query is None else update.callback_query.message
        connection, business = _business_of(update, message)
        guest = bool(getattr(message, "guest_query_id", None))
    chat_part = None if chat is None else chat_key(chat.id)
    user_id = None if user is None else user.id
    topic = None if message is None else topic_of(message)
    if business:
        if connection is None:
            # Never the plain keys: that is the bot's own chat with the same id.
            return Place("", None, None, None, "")
        space = f"{BUSINESS}:{connection}:"
        return Place(space, chat_part, user_id, topic, space)
    if guest:
        space = f"{GUEST}:"
        if chat is not None and chat.type == "private":
            part = None if user_id is None else f"{chat_part}:user:{user_id}"
            return Place(space, part, user_id, topic, "", chat_names_user=True)
        return Place(space, chat_part, user_id, topic, "")
    return Place("", chat_part, user_id, topic, "")


def _business_of(update: Update, message: Any) -> tuple[str | None, bool]:
    """The business connection of an update that brings no message itself, and whether
    the update belongs to a business account at all."""
    connection = getattr(update, "business_connection", None)
    if connection is not None:
        return connection.id or None, True
    deleted = getattr(update, "deleted_business_messages", None)
    if deleted is not None:
        return deleted.business_connection_id or None, True
    connection_id = getattr(message, "business_connection_id", None) or None
    return connection_id, connection_id is not None


# -- the built-in resolvers ---------------------------------------------------------------


def per_chat(update: object) -> str | None:
    """One session per chat, shared by everyone in it (grammY's default)."""
    place = place_of(update)
    if place is None or place.chat is None:
        return None
    return place.space + place.chat


def per_user(update: object) -> str | None:
    """One session per user, the same in every chat they talk to the bot in.

    Within a business account it is one per user and business connection.
    """
    place = place_of(update)
    if place is None or place.user is None:
        return None
    return f"{place.user_space}user:{place.user}"


def per_user_in_chat(update: object) -> str | None:
    """One session for each user in each chat."""
    place = place_of(update)
    if place is None or place.chat is None or place.user is None:
        return None
    if place.chat_names_user:
        return place.space + place.chat
    return f"{place.space}{place.chat}:user:{place.user}"


def per_topic(update: object) -> str | None:
    """One session per topic (forum, private chat or channel direct messages); messages
    outside any topic share the chat's session."""
    place = place_of(update)
    if place is None or place.chat is None:
        return None
    if place.topic is not None:
        return f"{place.space}{place.chat}:topic:{place.topic}"
    return place.space + place.chat


# How each built-in resolver embeds a chat id, for chat migrations.
per_chat.chat_key = chat_key  # type: ignore[attr-defined]
per_user_in_chat.chat_key = chat_key  # type: ignore[attr-defined]
per_topic.chat_key = chat_key  # type: ignore[attr-defined]
per_user.chat_key = None  # type: ignore[attr-defined]


def update_kind(update: object) -> str:
    """Name what kind of update this is, for error messages ("inline_query", ...)."""
    if isinstance(update, Update):
        for kind in Update.ALL_TYPES:
            if getattr(update, kind, None) is not None:
                return kind
        return "update"
    return type(update).__name__


# -- reading keys back ----------------------------------------------------------------

_BUILT_IN = re.compile(
    r"(?:(?P<space>business:(?P<connection>[^:]+):|guest:))?"
    r"(?:chat:(?P<chat>-?\d+)(?::user:(?P<member>-?\d+))?(?::topic:(?P<topic>-?\d+))?"
    r"|user:(?P<user>-?\d+))"
)


def describe_key(key: str, prefix: str = "") -> str:
    """Say in words what a built-in key means; custom keys are returned as they are.

    ``prefix`` is the fragment's, when the caller knows it.
    """
    text = key[len(prefix) :] if prefix and key.startswith(prefix) else key
    match = _BUILT_IN.fullmatch(text)
    if match is None:
        return key
    space, connection = match["space"] or "", match["connection"]
    via = f" via connection {connection}" if connection else ""
    if match["user"] is not None:
        if connection:
            return f"user {match['user']} via business connection {connection}"
        return f"guest user {match['user']}" if space else f"user {match['user']}"
    chat = f"{space.split(':', 1)[0] + ' ' if space else ''}chat {match['chat']}"
    member, topic = match["member"], match["topic"]
    if member is not None and topic is not None:
        return f"topic {topic} of user {member} in {chat}{via}"
    if member is not None:
        return f"user {member} in {chat}{via}"
    if topic is not None:
        return f"topic {topic} of {chat}{via}"
    return chat + via


def chat_id_of(key: str) -> int | None:
    """The chat id a built-in per-chat key belongs to, or ``None`` for other keys."""
    if not key.startswith(CHAT_PREFIX):
        return None
    head = key[len(CHAT_PREFIX) :].split(":", 1)[0]
    try:
        return int(head)
    except ValueError:
        return None


def storable_key(text: str) -> bool:
    """Whether every database can store ``text`` as it is (no NUL, no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def chat_key_of(resolver: object) -> Callable[[int], str] | None:
    """How a resolver embeds a chat id: its ``chat_key`` (built-in keys by default)."""
    return getattr(resolver, "chat_key", chat_key)


def is_under(key: str, head: str) -> bool:
    """Whether ``key`` is ``head`` or continues it after a colon."""
    return key == head or key.startswith(head + ":")


def rekey(key: str, old_head: str, new_head: str) -> str | None:
    """``key`` moved from under ``old_head`` to ``new_head``; ``None`` if not under it.

    A key is under a head when it is the head or continues it after a colon, so the
    keys of chat -40 never include those of chat -401.
    """
    if not is_under(key, old_head):
        return None
    return new_head + key[len(old_head) :]


def rekey_chat(key: str, old_chat_id: int, new_chat_id: int) -> str | None:
    """Rewrite a key of chat ``old_chat_id`` for ``new_chat_id``; ``None`` if not that chat's."""
    return rekey(key, chat_key(old_chat_id), chat_key(new_chat_id))
