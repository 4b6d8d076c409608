"""The storage contract every session storage fulfils.

A storage keeps serialized session text under a :class:`StorageKey`. Four calls are
required (``read``, ``write``, ``delete``, ``keys``); the batch calls have working
defaults built on them, and a storage overrides them when it can do better (one query
for several fragments, one transaction for a whole update).

Writes carry the revision the engine read (``0`` when it found nothing; revisions of
stored rows start at 1). A storage that can compare-and-set raises
:class:`~botsessions.errors.SessionConflict` when the stored revision moved on, so a
concurrent writer is detected instead of silently overwritten. A read error must be
raised, never reported as "no session": that would let initial data replace real data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

#: True while the admin or a session command runs a call on a short-lived event loop
#: of its own (:mod:`botsessions.lookup`). A connection bound to the bot's loop cannot
#: be used there, so a storage holding one opens that loop's own, and closes it in
#: :meth:`SessionStorage.close_for_loop`.
on_short_lived_loop: ContextVar[bool] = ContextVar("botsessions_short_lived_loop", default=False)


@dataclass(frozen=True, order=True)
class StorageKey:
    """Where one session fragment lives: which bot, which fragment, which key."""

    bot_id: int
    fragment: str
    key: str

    def __str__(self) -> str:
        return f"{self.bot_id}/{self.fragment}/{self.key}"


@dataclass(frozen=True)
class StoredSession:
    """One stored session fragment, as the storage keeps it."""

    data: str
    version: Decimal | None = None
    expires_at: datetime | None = None
    revision: int = 1


@dataclass(frozen=True)
class Write:
    """Store ``record`` if the stored revision is still ``expected_revision``.

    ``0`` means the engine found no row (so the write must create one); ``None`` means
    write unconditionally.
    """

    key: StorageKey
    record: StoredSession
    expected_revision: int | None


@dataclass(frozen=True)
class Delete:
    """Remove the row; ``expected_revision`` guards against deleting newer data."""

    key: StorageKey
    expected_revision: int | None


Change = Write | Delete


@dataclass(frozen=True)
class UpdateMark:
    """Identifies an update for exactly-once processing: one bot's ``update_id``."""

    bot_id: int
    update_id: int


class SessionStorage(ABC):
    """Base class of session storages; subclass it to plug in your own."""

    #: True for a storage that holds JSON only (a JSON column): the engine then refuses
    #: other text from a serializer of the project's own before it reaches the storage.
    keeps_json_only: ClassVar[bool] = False

    @abstractmethod
    async def read(self, key: StorageKey) -> StoredSession | None:
        """Return the stored fragment, or ``None`` when there is none."""

    @abstractmethod
    async def write(
        self, key: StorageKey, record: StoredSession, *, expected_revision: int | None = None
    ) -> None:
        """Store ``record`` (its ``revision`` is the new one)."""

    @abstractmethod
    async def delete(self, key: StorageKey, *, expected_revision: int | None = None) -> None:
        """Remove the fragment; deleting an absent key is not an error."""

    @abstractmethod
    def keys(self, bot_id: int | None = None) -> AsyncIterator[StorageKey]:
        """Iterate over every stored key (of one bot, when given)."""

    async def read_many(
        self, keys: Sequence[StorageKey]
    ) -> dict[StorageKey, StoredSession | None]:
        """Read several fragments; storages override this to use one round trip."""
        return {key: await self.read(key) for key in keys}

    async def load(
        self,
        keys: Sequence[StorageKey],
        mark: UpdateMark | None,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        """Read ``keys`` and tell whether ``mark`` was already committed.

        ``lock`` names every key of the update in this storage, on its first read: a
        storage that can lock them across processes does so first, until the update's
        transaction ends. The default cannot, and relies on revision checks.
        """
        records = await self.read_many(keys) if keys else {}
        return records, (await self.was_processed(mark)) if mark is not None else False

    def commits_with_unit(self) -> bool:
        """Whether :meth:`commit` joins the update's database transaction (its unit of work).

        Such a storage's writes commit or roll back with the rows the handlers write
        through the ORM. When a bot's fragments are in such a storage and in others, the
        engine keeps the exactly-once record there and commits the others only once that
        transaction has committed. The default: no (Redis, memory, your own).
        """
        return False

    async def close_for_loop(self) -> None:
        """Close what this storage opened for the running event loop.

        The admin and the session commands run each call on a short-lived loop of their
        own; a storage holding connections per loop (Redis) closes that loop's here. The
        default has nothing to close.
        """
        return None

    async def unlock(self, keys: Sequence[StorageKey]) -> None:
        """Give back the locks :meth:`load` took of ``keys``; the update has ended.

        The engine calls it once per update for each storage it asked to lock, whether
        the update committed or failed. It must not raise: a lock it cannot give back
        must expire by itself. The default does nothing (the database's locks end with
        the transaction).
        """
        return None

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        """Apply the changes of one update; return ``False`` if ``mark`` was already applied.

        The default applies changes one by one and cannot record ``mark``; storages
        that can, apply everything and record the mark atomically.
        """
        for change in changes:
            if isinstance(change, Write):
                await self.write(
                    change.key, change.record, expected_revision=change.expected_revision
                )
            else:
                await self.delete(change.key, expected_revision=change.expected_revision)
        return True

    async def was_processed(self, mark: UpdateMark) -> bool:
        """Whether an update's changes were already committed (only if marks are kept)."""
        return False

    async def rename_chat(
        self,
        bot_id: int,
        fragments: Sequence[str],
        old_chat_id: int,
        new_chat_id: int,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> list[StorageKey]:
        """Move every per-chat key of ``old_chat_id`` (chat, user in chat, topic) to the new id.

        All of ``fragments`` move in one call, so that a storage that locks keys locks the
        moved ones (old and new) together with ``lock``, the update's own keys.
        """
        from ..keys import rekey_chat

        pairs = []
        async for key in self.keys(bot_id):
            if key.fragment not in fragments:
                continue
            new_key = rekey_chat(key.key, old_chat_id, new_chat_id)
            if new_key is not None:
                pairs.append((key, StorageKey(bot_id, key.fragment, new_key)))
        return await self.rename(pairs)

    async def keys_under(self, bot_id: int, heads: Mapping[str, str]) -> list[StorageKey]:
        """The stored keys of each fragment ``f`` that are ``heads[f]`` or continue it
        after a colon.

        Chat migrations find a chat's rows this way in fragments with a prefix or a
        resolver of their own. The default walks :meth:`keys`; a storage that can look
        keys up by their beginning overrides it.
        """
        from ..keys import is_under

        found = []
        async for key in self.keys(bot_id):
            head = heads.get(key.fragment)
            if head is not None and is_under(key.key, head):
                found.append(key)
        return found

    async def rename(self, pairs: Iterable[tuple[StorageKey, StorageKey]]) -> list[StorageKey]:
        """Move fragments to new keys, never overwriting a key that exists; return the moved.

        Used for chat migrations. The default reads and writes one pair at a time.
        """
        moved = []
        for old, new in pairs:
            record = await self.read(old)
            if record is None or await self.read(new) is not None:
                continue
            await self.write(new, record, expected_revision=0)
            await self.delete(old, expected_revision=record.revision)
            moved.append(new)
        return moved
