"""Counting what a storage was asked to do, for either storage the engine can use.

grammY's tests count storage calls; ours count them too, on the in-memory storage by
wrapping it, and on the database storage by reading the SQL Django executed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from botsessions.storage import MemoryStorage, SessionStorage, StorageKey, StoredSession
from botsessions.storage.base import Change, Delete, UpdateMark, Write


@dataclass
class Counts:
    reads: int = 0
    writes: int = 0
    deletes: int = 0


class RecordingStorage(MemoryStorage):
    """A memory storage that counts reads, writes and deletes, and can hold reads back."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts = Counts()
        self.read_gate: asyncio.Event | None = None
        self.read_started: asyncio.Event | None = None

    async def _reading(self, keys: int) -> None:
        self.counts.reads += keys
        if self.read_started is not None:
            self.read_started.set()
        if self.read_gate is not None:
            await self.read_gate.wait()

    async def read(self, key: StorageKey) -> StoredSession | None:
        await self._reading(1)
        return await super().read(key)

    async def load(
        self, keys: Sequence[StorageKey], mark: UpdateMark | None, *, lock: Any = ()
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        await self._reading(len(keys))
        return await super().load(keys, mark, lock=lock)

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        self.counts.writes += sum(isinstance(c, Write) for c in changes)
        self.counts.deletes += sum(isinstance(c, Delete) for c in changes)
        return await super().commit(changes, mark)

    def stored(self, key: StorageKey) -> StoredSession | None:
        return self._rows.get(key)


class RecordingRedisStorage:
    """A Redis storage that counts as the database is counted: a read per load of keys."""

    @staticmethod
    def make(prefix: str) -> SessionStorage:
        from botsessions.storage.redis import RedisStorage

        class Recording(RedisStorage):
            counts = Counts()

            async def load(self, keys: Any, mark: Any, *, lock: Any = ()) -> Any:
                if keys:
                    self.counts.reads += 1
                return await super().load(keys, mark, lock=lock)

            async def commit(self, changes: Sequence[Change], mark: Any = None) -> bool:
                self.counts.writes += sum(isinstance(c, Write) for c in changes)
                self.counts.deletes += sum(isinstance(c, Delete) for c in changes)
                return await super().commit(changes, mark)

        from .redis_support import URL

        storage = Recording(url=URL, prefix=prefix)
        storage.counts = Counts()
        return storage


_TABLE = "botsessions_session"


@dataclass
class Probe:
    """The storage to configure a fragment with (``None``: the database) and its counts."""

    kind: str
    storage: SessionStorage | None
    _capture: CaptureQueriesContext | None = field(default=None, repr=False)
    _own_queries: set[int] = field(default_factory=set, repr=False)

    def counts(self) -> Counts:
        if isinstance(self.storage, RecordingStorage) or self.kind == "redis":
            return self.storage.counts  # type: ignore[union-attr]
        assert self._capture is not None
        counts = Counts()
        start = self._capture.initial_queries
        for index, query in enumerate(self._capture.captured_queries, start):
            if index in self._own_queries:
                continue
            sql = query["sql"].lstrip().upper()
            if _TABLE.upper() not in sql:
                continue
            if sql.startswith("SELECT"):
                counts.reads += 1
            elif sql.startswith(("INSERT", "UPDATE")):
                counts.writes += 1
            elif sql.startswith("DELETE"):
                counts.deletes += 1
        return counts

    def stored_text(self, bot_id: int, fragment: str, key: str) -> str | None:
        """The stored data of a key as JSON text in our own canonical form, or None."""
        import json

        storage_key = StorageKey(bot_id, fragment, key)
        if isinstance(self.storage, RecordingStorage):
            record = self.storage.stored(storage_key)
            return None if record is None else record.data
        if self.kind == "redis":
            from asgiref.sync import async_to_sync

            from botsessions.storage.redis import RedisStorage

            from .redis_support import URL

            # A storage of its own, so that the test's look is not counted.
            plain = RedisStorage(url=URL, prefix=self.storage.prefix)  # type: ignore[union-attr]

            async def read() -> StoredSession | None:
                return await plain.read(storage_key)

            record = async_to_sync(read)()
            return None if record is None else record.data
        from botsessions.models import Session

        before = len(connection.queries)
        row = Session.objects.filter(bot_id=bot_id, fragment=fragment, key=key).first()
        self._own_queries.update(range(before, len(connection.queries)))
        if row is None:
            return None
        return json.dumps(row.data, separators=(",", ":"), ensure_ascii=False)


def start_probe(kind: str) -> Probe:
    if kind == "memory":
        return Probe(kind, RecordingStorage())
    if kind == "redis":
        from .redis_support import new_prefix, require_redis

        require_redis()
        return Probe(kind, RecordingRedisStorage.make(new_prefix()))
    capture = CaptureQueriesContext(connection)
    capture.__enter__()
    return Probe(kind, None, capture)


def stop_probe(probe: Probe) -> None:
    if probe.kind == "redis":
        from .redis_support import forget

        forget(probe.storage.prefix)  # type: ignore[union-attr]
    if probe._capture is not None:
        probe._capture.__exit__(None, None, None)


def table_statements(capture: CaptureQueriesContext) -> list[str]:
    """The SQL statements that touched botsessions' tables."""
    return [q["sql"] for q in capture.captured_queries if re.search("botsessions_", q["sql"])]
