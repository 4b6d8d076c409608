"""Moving per-chat sessions when Telegram turns a group into a supergroup.

Telegram sends two service messages: ``migrate_to_chat_id`` in the old group and
``migrate_from_chat_id`` in the new supergroup, in no guaranteed order. Whichever
arrives first moves the rows; the other finds nothing left to move. A row is never
moved onto a key the new chat already uses: that data stays where it is.

Every fragment takes part whose resolver embeds the chat id at the start of its keys:
the built-in ones do (``chat:-40…``, after the fragment's prefix), and a resolver of
your own says how it does with a ``chat_key`` attribute, a function from a chat id to
the key of that whole chat::

    def per_room(update):
        chat = update.effective_chat
        return None if chat is None else f"room:{chat.id}:{update.effective_user.id}"

    per_room.chat_key = lambda chat_id: f"room:{chat_id}"

Its keys of a chat are that key, or that key followed by ``:`` and anything. Without
the attribute a resolver is taken to use the built-in chat keys; ``chat_key = None``
keeps a fragment out of migrations. The ids come checked (:mod:`botsessions.key_parts`).
"""

from __future__ import annotations

import logging

from telegram import Update

from .session import UpdateSessions
from .storage.base import StorageKey

logger = logging.getLogger("botsessions")


def migration_of(update: Update) -> tuple[int, int] | None:
    """The (old chat id, new chat id) an update announces, if it announces one.

    Only a new message can announce one: Telegram sends both notices as service
    messages, and an edit, a business or guest message, or a button press never does.
    """
    message = update.message
    if message is None:
        return None
    if message.migrate_to_chat_id:
        return message.chat.id, message.migrate_to_chat_id
    if message.migrate_from_chat_id:
        return message.migrate_from_chat_id, message.chat.id
    return None


async def move_chat(
    sessions: UpdateSessions, old_chat_id: int, new_chat_id: int
) -> list[StorageKey]:
    """Move every per-chat key of ``old_chat_id`` in every fragment to ``new_chat_id``."""
    moved = await sessions.move_chat(old_chat_id, new_chat_id)
    if moved:
        logger.info(
            "botsessions: moved %d session(s) of bot %s from chat %s to %s",
            len(moved),
            sessions.bot_id,
            old_chat_id,
            new_chat_id,
        )
    return moved
