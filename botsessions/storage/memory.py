"""An in-memory storage for tests and development.

It keeps serialized text, never the caller's objects, so mutating a dict after it was
written cannot change what is stored. Everything is lost when the process ends.

``load`` and ``commit`` work on the dict directly; a subclass that wants to see every
read or write overrides them, not the single-row calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ..errors import SessionConflict
from .base import Change, Delete, SessionStorage, StorageKey, StoredSession, UpdateMark, Write

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MemoryStorage(SessionStorage):
    """Sessions in a dict; ``ttl`` (optional) expires entries that long after their write.

    ``clock`` tells the time for that ``ttl`` only: the expiry a fragment's own ``ttl``
    stamps on its data is the engine's to judge, and is kept as it was written.
    """

    def __init__(self, ttl: timedelta | None = None, *, clock: Clock = _utcnow) -> None:
        self.ttl = ttl
        self.clock = clock
        self._rows: dict[StorageKey, StoredSession] = {}
        self._ends: dict[StorageKey, datetime] = {}  # by ``clock``, for this storage's ttl
        self._marks: set[UpdateMark] = set()

    async def read(self, key: StorageKey) -> StoredSession | None:
        return self._current(key, self.clock())

    async def write(
        self, key: StorageKey, record: StoredSession, *, expected_revision: int | None = None
    ) -> None:
        self._check_revision(key, expected_revision)
        self._store(key, record, expected_revision)

    async def delete(self, key: StorageKey, *, expected_revision: int | None = None) -> None:
        self._check_revision(key, expected_revision)
        self._drop(key)

    async def keys(self, bot_id: int | None = None) -> AsyncIterator[StorageKey]:
        for key in list(self._rows):
            if bot_id is None or key.bot_id == bot_id:
                yield key

    async def load(
        self,
        keys: Sequence[StorageKey],
        mark: UpdateMark | None,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        now = self.clock()
        records = {key: self._current(key, now) for key in keys}
        return records, mark is not None and mark in self._marks

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        # Nothing here awaits, so checking everything first makes the commit atomic.
        if mark is not None and mark in self._marks:
            return False
        for change in changes:
            self._check_revision(change.key, change.expected_revision)
        for change in changes:
            if isinstance(change, Write):
                self._store(change.key, change.record, change.expected_revision)
            elif isinstance(change, Delete):
                self._drop(change.key)
        if mark is not None:
            self._marks.add(mark)
        return True

    async def was_processed(self, mark: UpdateMark) -> bool:
        return mark in self._marks

    def _current(self, key: StorageKey, now: datetime) -> StoredSession | None:
        """The row of ``key``, dropped and ``None`` once this storage's ttl has run out."""
        end = self._ends.get(key)
        if end is not None and end <= now:
            self._drop(key)
            return None
        return self._rows.get(key)

    def _store(self, key: StorageKey, record: StoredSession, expected: int | None) -> None:
        """Keep ``record`` (its revision already checked), numbered as set."""
        if expected is None:
            current = self._rows.get(key)
            record = replace(record, revision=(current.revision if current else 0) + 1)
        self._rows[key] = record
        if self.ttl is not None:
            self._ends[key] = self.clock() + self.ttl

    def _drop(self, key: StorageKey) -> None:
        self._rows.pop(key, None)
        self._ends.pop(key, None)

    def _check_revision(self, key: StorageKey, expected: int | None) -> None:
        if expected is None:
            return
        current = self._rows.get(key)
        if (current.revision if current is not None else 0) != expected:
            raise SessionConflict(f"session {key} was changed by another writer")
