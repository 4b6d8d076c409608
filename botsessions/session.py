"""The session engine: one update's sessions, from key to load to compare to commit.

An :class:`UpdateSessions` is made for each update that some handler will handle. It
resolves the keys of every fragment, takes their locks, reads the strict fragments (and
whether the update was already committed) before the handlers run, serves lazy
fragments when they are first awaited, and at the end writes only the fragments whose
data really changed, all in one commit per storage. Nothing is written when a handler
failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Generator, Iterator
from datetime import UTC, datetime
from typing import Any

from .config import Fragment, Sessions
from .errors import (
    SessionDataError,
    SessionKeyError,
    StoredDataError,
)
from .keys import update_kind
from .locks import KeyLocks
from .storage.base import (
    Change,
    Delete,
    SessionStorage,
    StorageKey,
    StoredSession,
    UpdateMark,
    Write,
)

logger = logging.getLogger("botsessions")

MAX_KEY_LENGTH = 255


def utcnow() -> datetime:
    return datetime.now(UTC)


class FragmentSession:
    """One fragment's data during one update, and what became of it.

    ``accessed`` says whether a handler read it, ``assigned`` whether one replaced it;
    the data itself is compared with what was loaded to tell whether it was modified.
    """

    def __init__(self, name: str, fragment: Fragment, key: StorageKey | None, kind: str) -> None:
        self.name = name
        self.fragment = fragment
        self.key = key
        self.storage: SessionStorage | None = fragment.resolve_storage() if key else None
        self._kind = kind
        self.loaded = False
        self.accessed = False
        self.assigned = False
        self.value: Any = None
        self.snapshot: str | None = None  # serialized data as loaded; None when absent
        self.revision = 0  # stored revision; 0 when no row exists
        self.expired = False  # a stored row existed but had expired
        self.migrated = False  # loaded data was upgraded and must be stored
        self._load_task: asyncio.Task[None] | None = None
        self.bad_key: str | None = None  # why the resolved key was refused

    # -- what handlers see ------------------------------------------------------

    def require_key(self) -> StorageKey:
        if self.key is None:
            where = f" fragment {self.name!r}" if self.name else ""
            if self.bad_key is not None:
                raise SessionKeyError(
                    f"the session key of{where or ' this session'} is unusable: {self.bad_key}"
                )
            raise SessionKeyError(
                f"this {self._kind} update has no session{where}: its key resolver "
                f"({getattr(self.fragment.key, '__name__', self.fragment.key)!r}) "
                "returned None"
            )
        return self.key

    def get(self) -> Any:
        """The data, for strict fragments (already loaded before the handlers ran)."""
        self.require_key()
        self.accessed = True
        return self.value

    def set(self, value: Any) -> None:
        """Replace the data; ``None`` deletes the session when the update completes."""
        self.require_key()
        self.assigned = True
        self.value = value

    def awaitable(self) -> Awaitable[Any]:
        """The data as an awaitable, for lazy fragments.

        The read starts on access, as it does in grammY, so a read that a handler starts
        and never awaits is still finished before the update commits.
        """
        self.require_key()
        self.accessed = True
        if not self.loaded and not self.assigned and self._load_task is None:
            self._load_task = asyncio.ensure_future(self._read_one())
        return _LazyValue(self)

    async def load_lazily(self) -> Any:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)
        if inspect.isawaitable(self.value):
            self.value = await self.value
        return self.value

    async def _read_one(self) -> None:
        assert self.key is not None and self.storage is not None
        records, _ = await self.storage.load([self.key], None)
        record = records.get(self.key)
        if self.assigned:
            # A value assigned while the read was in flight wins; keep the revision only.
            self.revision = record.revision if record is not None else 0
            self.loaded = True
            return
        try:
            await self.accept(record)
        except StoredDataError as exc:
            logger.error(
                "botsessions: session %s (bot %s, fragment %r, key %r) could not be loaded: %s",
                self.key,
                self.key.bot_id,
                self.key.fragment,
                self.key.key,
                exc,
            )
            raise

    async def settle(self) -> None:
        """Wait for a read still in flight and for an assigned awaitable."""
        if self._load_task is not None:
            await self._load_task
        if inspect.isawaitable(self.value):
            self.value = await self.value

    # -- loading ------------------------------------------------------------------

    async def accept(self, record: StoredSession | None, now: datetime | None = None) -> None:
        """Take a stored record (or its absence) as this update's starting data."""
        fragment = self.fragment
        self.revision = record.revision if record is not None else 0
        self.loaded = True
        expires_at = record.expires_at if record is not None else None
        if expires_at is not None and expires_at <= (now or utcnow()):
            record = None  # reads as absent; the row is deleted or replaced at commit
            self.expired = True
        if record is None:
            self.value = await _call_initial(fragment)
        else:
            try:
                data = fragment.serializer.loads(record.data)
            except Exception as exc:
                raise StoredDataError(f"stored data cannot be decoded: {exc}") from exc
            migrations = fragment.data_migrations
            if migrations is not None and record.version != migrations.latest:
                data = migrations.upgrade(data, record.version)
                self.migrated = True
            self.value = data
        # Serialized anew rather than kept as stored: the database may reformat JSON text.
        self.snapshot = _fingerprint(fragment, self.value)

    # -- saving -------------------------------------------------------------------

    def change(self, now: datetime) -> Change | None:
        """What to store for this fragment, or ``None`` if nothing changed."""
        if self.key is None or not (self.loaded or self.assigned):
            return None
        expected = self.revision if self.loaded else None
        if self.value is None:
            if self.loaded and self.revision == 0:
                return None
            return Delete(self.key, expected)
        unchanged = self.snapshot is not None and (
            _fingerprint(self.fragment, self.value) == self.snapshot
        )
        if unchanged and not self.migrated:
            return Delete(self.key, expected) if self.expired else None
        # Changed: now the full check, which refuses what JSON would not give back.
        text = self.fragment.serializer.dumps(self.value)
        migrations = self.fragment.data_migrations
        ttl = self.fragment.ttl
        record = StoredSession(
            data=text,
            version=migrations.latest if migrations is not None else None,
            expires_at=now + ttl if ttl is not None else None,
            revision=(expected or 0) + 1,
        )
        return Write(self.key, record, expected)


class _LazyValue:
    """What a lazy ``context.session`` returns: await it (as often as you like)."""

    __slots__ = ("_fragment",)

    def __init__(self, fragment: FragmentSession) -> None:
        self._fragment = fragment

    def __await__(self) -> Generator[Any, None, Any]:
        return self._fragment.load_lazily().__await__()


class UpdateSessions:
    """All fragments of one update, with their locks and the commit at the end."""

    def __init__(
        self, sessions: Sessions, bot_id: int, update: object, locks: KeyLocks | None
    ) -> None:
        self.sessions = sessions
        self.bot_id = bot_id
        self.update = update
        kind = update_kind(update)
        self.fragments: dict[str, FragmentSession] = {}
        for name, fragment in sessions.fragments.items():
            raw = fragment.key(update)
            key = None if raw is None else StorageKey(bot_id, name, f"{fragment.prefix}{raw}")
            state = FragmentSession(name, fragment, key, kind)
            if key is not None and (not isinstance(raw, str) or len(key.key) > MAX_KEY_LENGTH):
                # The key column holds 255 characters; refuse here rather than fail the write.
                state.key = None
                state.storage = None
                state.bad_key = (
                    f"{raw!r:.80} is not a string of at most {MAX_KEY_LENGTH} characters"
                )
            self.fragments[name] = state
        update_id = getattr(update, "update_id", None)
        self.mark = UpdateMark(bot_id, update_id) if isinstance(update_id, int) else None
        self._locks = locks if sessions.locking else None
        self._held: list[StorageKey] = []
        self.already_processed = False

    def __iter__(self) -> Iterator[FragmentSession]:
        return iter(self.fragments.values())

    @property
    def single(self) -> FragmentSession:
        return self.fragments[""]

    async def begin(self) -> None:
        """Lock every key, then read the strict fragments and the exactly-once record."""
        if self._locks is not None:
            self._held = await self._locks.acquire(f.key for f in self if f.key is not None)
        strict = [f for f in self if f.key is not None and not f.fragment.lazy]
        by_storage: dict[int, list[FragmentSession]] = defaultdict(list)
        for fragment in strict:
            by_storage[id(fragment.storage)].append(fragment)
        # The exactly-once record is read with the primary storage's strict fragments; when
        # it has none, a redelivery is still caught when its commit finds the record.
        primary = self._primary_storage()
        now = utcnow()
        for group in by_storage.values():
            storage = group[0].storage
            assert storage is not None
            mark = self.mark if storage is primary else None
            records, processed = await storage.load([f.key for f in group], mark)  # type: ignore[misc]
            self.already_processed = self.already_processed or processed
            if processed:
                return
            for fragment in group:
                try:
                    await fragment.accept(records.get(fragment.key), now)  # type: ignore[arg-type]
                except StoredDataError as exc:
                    key = fragment.key
                    assert key is not None
                    logger.error(
                        "botsessions: session %s (bot %s, fragment %r, key %r) could not be "
                        "loaded: %s",
                        key,
                        key.bot_id,
                        key.fragment,
                        key.key,
                        exc,
                    )
                    raise

    def _primary_storage(self) -> SessionStorage | None:
        """The storage that records the update for exactly-once processing.

        It is the storage of the first fragment with a key, so the same update always
        checks and records in the same place.
        """
        for fragment in self:
            if fragment.storage is not None:
                return fragment.storage
        return None

    def assign_all(self, value: Any) -> None:
        """``context.session = None`` on a multi session deletes every fragment."""
        if value is not None:
            raise TypeError(
                "a multi session can only be assigned None (to delete every fragment); "
                "assign its fragments one by one instead"
            )
        for fragment in self:
            if fragment.key is not None:
                fragment.assigned = True
                fragment.value = None

    async def commit(self) -> int | None:
        """Store what changed; return how many fragments, or ``None`` for a duplicate."""
        now = utcnow()
        changes: dict[int, tuple[SessionStorage, list[Change]]] = {}
        for fragment in self:
            await fragment.settle()
            try:
                change = fragment.change(now)
            except SessionDataError as exc:
                raise SessionDataError(f"{fragment.key}: {exc}") from exc
            if change is not None:
                assert fragment.storage is not None
                if not self.sessions.locking:
                    # Documented as last write wins: no revision check either.
                    change = dataclasses.replace(change, expected_revision=None)
                changes.setdefault(id(fragment.storage), (fragment.storage, []))[1].append(change)
        if not changes:
            return 0
        primary = self._primary_storage()
        assert primary is not None
        # The primary storage commits first, with the record, even with nothing of its own.
        batches = [(primary, changes.pop(id(primary), (primary, []))[1])]
        batches += list(changes.values())
        count = 0
        for index, (storage, batch) in enumerate(batches):
            committed = await storage.commit(batch, self.mark if index == 0 else None)
            if index == 0 and not committed:
                return None
            count += len(batch)
        return count

    def release(self) -> None:
        if self._locks is not None and self._held:
            self._locks.release(self._held)
            self._held = []


async def _call_initial(fragment: Fragment) -> Any:
    if fragment.initial is None:
        return None
    value = fragment.initial()
    if inspect.isawaitable(value):
        value = await value
    return value


def _fingerprint(fragment: Fragment, data: Any) -> str | None:
    """The data's text for comparison (``None`` if it cannot be encoded at all)."""
    serializer = fragment.serializer
    encode = getattr(serializer, "encode", serializer.dumps)
    try:
        return encode(data)
    except (SessionDataError, TypeError, ValueError):
        return None
