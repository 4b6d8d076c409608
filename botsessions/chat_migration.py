"""Moving per-chat sessions when Telegram turns a group into a supergroup.

Telegram sends two service messages: ``migrate_to_chat_id`` in the old group and
``migrate_from_chat_id`` in the new supergroup, in no guaranteed order. Whichever
arrives first moves the rows; the other finds nothing left to move. A row is never
moved onto a key the new chat already uses: that data stays where it is.
"""

from __future__ import annotations

import logging

from telegram import Update

from .session import UpdateSessions
from .storage.base import StorageKey

logger = logging.getLogger("botsessions")


def migration_of(update: Update) -> tuple[int, int] | None:
    """The (old chat id, new chat id) an update announces, if it announces one."""
    message = update.message or update.effective_message
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
