"""Session key resolvers: which session an update belongs to.

A resolver takes the update and returns a string key, or ``None`` when the update
has no session under that scheme (an inline query has no chat, for instance).

The built-in keys describe themselves (``chat:-4012345678``, ``user:111``,
``chat:-100…:user:111``, ``chat:-100…:topic:7``) so that the admin can say what a
row means and chat migrations can find every row of a chat. Telegram ids are
64-bit integers and travel as their exact decimal text.
"""

from __future__ import annotations

from collections.abc import Callable

from telegram import Update

KeyResolver = Callable[[object], "str | None"]

CHAT_PREFIX = "chat:"


def chat_key(chat_id: int) -> str:
    """The key of a whole chat, as :func:`per_chat` builds it."""
    return f"{CHAT_PREFIX}{chat_id}"


def per_chat(update: object) -> str | None:
    """One session per chat, shared by everyone in it (grammY's default)."""
    if not isinstance(update, Update) or update.effective_chat is None:
        return None
    return chat_key(update.effective_chat.id)


def per_user(update: object) -> str | None:
    """One session per user, the same in every chat they talk to the bot in."""
    if not isinstance(update, Update) or update.effective_user is None:
        return None
    return f"user:{update.effective_user.id}"


def per_user_in_chat(update: object) -> str | None:
    """One session for each user in each chat."""
    if not isinstance(update, Update):
        return None
    chat, user = update.effective_chat, update.effective_user
    if chat is None or user is None:
        return None
    return f"{chat_key(chat.id)}:user:{user.id}"


def per_topic(update: object) -> str | None:
    """One session per forum topic; messages outside any topic share the chat's session."""
    if not isinstance(update, Update) or update.effective_chat is None:
        return None
    message = update.effective_message
    if message is not None and message.is_topic_message and message.message_thread_id:
        return f"{chat_key(update.effective_chat.id)}:topic:{message.message_thread_id}"
    return chat_key(update.effective_chat.id)


def update_kind(update: object) -> str:
    """Name what kind of update this is, for error messages ("inline_query", ...)."""
    if isinstance(update, Update):
        for kind in Update.ALL_TYPES:
            if getattr(update, kind, None) is not None:
                return kind
        return "update"
    return type(update).__name__


def describe_key(key: str) -> str:
    """Say in words what a built-in key means; custom keys are returned as they are."""
    parts = key.split(":")
    names = {"chat": "chat", "user": "user", "topic": "topic"}
    if len(parts) % 2 or not all(p in names for p in parts[::2]):
        return key
    words = [f"{names[kind]} {value}" for kind, value in zip(parts[::2], parts[1::2], strict=True)]
    if len(words) == 2 and parts[2] == "user":
        return f"user {parts[3]} in chat {parts[1]}"
    if len(words) == 2 and parts[2] == "topic":
        return f"topic {parts[3]} of chat {parts[1]}"
    return ", ".join(words)


def chat_id_of(key: str) -> int | None:
    """The chat id a built-in per-chat key belongs to, or ``None`` for other keys."""
    if not key.startswith(CHAT_PREFIX):
        return None
    head = key[len(CHAT_PREFIX) :].split(":", 1)[0]
    try:
        return int(head)
    except ValueError:
        return None


def rekey_chat(key: str, old_chat_id: int, new_chat_id: int) -> str | None:
    """Rewrite a key of chat ``old_chat_id`` for ``new_chat_id``; ``None`` if not that chat's."""
    old = chat_key(old_chat_id)
    if key == old:
        return chat_key(new_chat_id)
    if key.startswith(old + ":"):
        return chat_key(new_chat_id) + key[len(old) :]
    return None
