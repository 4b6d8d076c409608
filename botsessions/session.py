"""The session engine: one update's sessions, from key to load to compare to commit.

An :class:`UpdateSessions` is made for each update that some handler will handle. It
resolves the keys of every fragment, takes their locks, reads the strict fragments (and
whether the update was already committed) before the handlers run, serves lazy
fragments when they are first awaited, and at the end writes only the fragments whose
data really changed, all in one commit per storage. Nothing is written when a handler
failed.

This runs for every update, so what does not depend on the update (the order in which
keys are locked, each fragment's encoder, whether any fragment expires) is worked out
once per :class:`~botsessions.config.Sessions`, in a :class:`Plan`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeGuard

from .conf import settings
from .config import Fragment, Sessions, database_storage
from .errors import (
    LockTimeout,
    SessionDataError,
    SessionError,
    SessionKeyError,
    StorageError,
    StoredDataError,
)
from .keys import chat_key, chat_key_of, rekey, storable_key, update_kind
from .locks import KeyLocks
from .serializers import (
    MAX_DATA_SIZE,
    MAX_NESTING,
    DataclassSerializer,
    JSONSerializer,
    deeper_than,
    json_encode,
)
from .storage.base import (
    Change,
    Delete,
    SessionStorage,
    StorageKey,
    StoredSession,
    UpdateMark,
    Write,
)
from .unit import UnitOfWork, current_unit
from .versioning import DataMigrations

logger = logging.getLogger("botsessions")

MAX_KEY_LENGTH = 255
# Each fragment remembers this many of its keys, so that an update of a known chat
# reuses its StorageKey (dict lookups then match it by identity).
KEY_CACHE_SIZE = 4096

# A JSON escape of the NUL character: \u0000 after an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Values that are certainly not awaitable: no need to ask inspect.
_PLAIN_TYPES = frozenset((dict, list, str, int, float, bool, type(None)))


def is_internal(name: str) -> bool:
    """Whether a fragment is kept out of ``context.session``: a name with a dot, which a
    session's fragment cannot have (PTB's state, :mod:`botsessions.persistence`)."""
    return "." in name


def utcnow() -> datetime:
    return datetime.now(UTC)


def _is_awaitable(value: Any) -> TypeGuard[Awaitable[Any]]:
    return type(value) not in _PLAIN_TYPES and inspect.isawaitable(value)


class FragmentPlan:
    """What the engine needs of one fragment, looked up once rather than per update."""

    __slots__ = ("encode", "fragment", "keys", "lazy", "loads", "name", "storage", "verify")

    def __init__(self, name: str, fragment: Fragment) -> None:
        self.name = name
        self.fragment = fragment
        self.storage = fragment.storage  # None: resolved per update (the database's)
        serializer = fragment.serializer
        self.encode: Callable[[Any], str] = (
            json_encode
            if getattr(type(serializer), "encode", None) is JSONSerializer.encode
            else getattr(serializer, "encode", serializer.dumps)
        )
        # JSONSerializer.dumps is encode + verify: once the data is encoded to compare
        # it, verifying that text is all that is left to do.
        self.verify: Callable[[Any, str], str] | None = (
            serializer.verify
            if isinstance(serializer, JSONSerializer)
            and type(serializer).dumps is JSONSerializer.dumps
            else None
        )
        self.loads: Callable[[str], Any] = serializer.loads
        self.lazy = fragment.lazy
        self.keys: dict[str, StorageKey] = {}  # key text → its StorageKey (bounded)

    def key(self, bot_id: int, text: str) -> StorageKey:
        """The StorageKey of ``text``, the same object each time while it is cached."""
        key = self.keys.get(text)
        if key is None or key.bot_id != bot_id:
            key = StorageKey(bot_id, self.name, text)
            if len(self.keys) >= KEY_CACHE_SIZE:
                self.keys.clear()
            self.keys[text] = key
        return key


class Plan:
    """The per-update constants of a :class:`Sessions`."""

    __slots__ = ("any_ttl", "fragments", "lock_order", "mixed", "source")

    def __init__(self, sessions: Sessions) -> None:
        self.source = dict(sessions.fragments)
        self.fragments = tuple(FragmentPlan(n, f) for n, f in self.source.items())
        # The keys of one update share their bot and differ by fragment name, so sorted
        # keys (the locking order) are the fragments sorted by name.
        names = [plan.name for plan in self.fragments]
        self.lock_order = tuple(sorted(range(len(names)), key=names.__getitem__))
        self.any_ttl = any(plan.fragment.ttl is not None for plan in self.fragments)
        # Fragments in more than one storage (None: the database's, resolved per update).
        self.mixed = len({id(plan.storage) for plan in self.fragments}) > 1


def plan_of(sessions: Sessions) -> Plan:
    """The sessions' plan, rebuilt if its fragments were changed since."""
    plan: Plan | None = sessions.engine_plan
    if plan is None or plan.source != sessions.fragments:
        plan = sessions.engine_plan = Plan(sessions)
    return plan


class FragmentSession:
    """One fragment's data during one update, and what became of it.

    ``accessed`` says whether a handler read it, ``assigned`` whether one replaced it;
    the data itself is compared with what was loaded to tell whether it was modified.
    """

    __slots__ = (
        "_load_task",
        "_owner",
        "_plan",
        "_update",
        "accessed",
        "assigned",
        "bad_key",
        "expired",
        "fragment",
        "key",
        "loaded",
        "migrated",
        "name",
        "revision",
        "snapshot",
        "storage",
        "stored_version",
        "value",
    )

    def __init__(
        self,
        plan: FragmentPlan,
        key: StorageKey | None,
        update: object,
        storage: SessionStorage | None = None,
        owner: UpdateSessions | None = None,
    ) -> None:
        self.name = plan.name
        self._owner = owner
        self.fragment = plan.fragment
        self.key = key
        if key is not None and storage is None:
            storage = plan.fragment.resolve_storage()
        self.storage: SessionStorage | None = None if key is None else storage
        self._plan = plan
        self._update = update  # only to name its kind in an error
        self.loaded = False
        self.accessed = False
        self.assigned = False
        self.value: Any = None
        self.snapshot: str | None = None  # serialized data as loaded; None when absent
        self.revision = 0  # stored revision; 0 when no row exists
        self.stored_version: Decimal | None = None  # the version of the data as loaded
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
                f"this {update_kind(self._update)} update has no session{where}: its key "
                f"resolver ({getattr(self.fragment.key, '__name__', self.fragment.key)!r}) "
                "returned None"
            )
        return self.key

    def get(self) -> Any:
        """The data, for strict fragments (already loaded before the handlers ran)."""
        if self.key is None:
            self.require_key()
        self.accessed = True
        return self.value

    def set(self, value: Any) -> None:
        """Replace the data; ``None`` deletes the session when the update completes."""
        if self.key is None:
            self.require_key()
        if isinstance(value, _LazyValue) and value._fragment is self:
            return  # ``context.session = context.session``: it stays what it is
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
        if _is_awaitable(self.value):
            self.value = await self.value
        return self.value

    async def _read_one(self) -> None:
        assert self.key is not None and self.storage is not None
        owner = self._owner
        with storage_failure("reading sessions"):
            if owner is None:
                records, _ = await self.storage.load([self.key], None)
            else:
                async with owner.locks_for_read(self.storage) as lock:
                    records, _ = await self.storage.load([self.key], None, lock=lock)
        record = records.get(self.key)
        if self.assigned:
            # A value assigned while the read was in flight wins; keep the revision only
            # (and the version, for a fragment without migrations).
            self.revision = record.revision if record is not None else 0
            expired = record is not None and _expired(record)
            self.stored_version = record.version if record is not None and not expired else None
            self.loaded = True
            return
        try:
            await self.accept(record)
        except StoredDataError as exc:
            _log_bad_row(self.key, exc)
            raise

    async def settle(self) -> None:
        """Wait for a read still in flight (an assigned awaitable is awaited before, by
        :meth:`UpdateSessions.await_assigned`: it is the handler's code)."""
        if self._load_task is not None:
            await self._load_task

    # -- loading ------------------------------------------------------------------

    async def accept(self, record: StoredSession | None, now: datetime | None = None) -> None:
        """Take a stored record (or its absence) as this update's starting data."""
        if self.take(record, now):
            self.start_with(await _call_initial(self.fragment))

    def take(self, record: StoredSession | None, now: datetime | None = None) -> bool:
        """Take what it can of a record; ``True`` when the initial data is still needed."""
        self.revision = record.revision if record is not None else 0
        self.loaded = True
        if record is None:
            return True
        if _expired(record, now):
            # Reads as absent; the row is deleted or replaced at commit.
            self.expired = True
            return True
        migrations = self.fragment.data_migrations
        # Without migrations (a release from before them, or one that dropped them) the
        # data is read as it is, and written back with its version: the migrations of a
        # release that has them never run twice on it.
        self.stored_version = record.version
        if migrations is None or record.version == migrations.latest:
            data = self._decode(self._plan.loads, record)
        else:
            data = self._upgrade(record, migrations)
            self.migrated = True
        self.start_with(data)
        return False

    def _upgrade(self, record: StoredSession, migrations: DataMigrations) -> Any:
        """Decode and upgrade old data. Dataclass data is upgraded as the stored JSON,
        and built from what the migrations return: an old shape need not fit the class."""
        serializer = self.fragment.serializer
        if not isinstance(serializer, DataclassSerializer):
            return migrations.upgrade(self._decode(self._plan.loads, record), record.version)
        data = migrations.upgrade(self._decode(serializer.loads_plain, record), record.version)
        try:
            return serializer.build(data)
        except Exception as exc:
            name = serializer.cls.__name__
            raise StoredDataError(f"migrated data does not fit {name}: {exc}") from exc

    @staticmethod
    def _decode(loads: Callable[[str], Any], record: StoredSession) -> Any:
        try:
            return loads(record.data)
        except Exception as exc:
            raise StoredDataError(f"stored data cannot be decoded: {exc}") from exc

    def start_with(self, value: Any) -> None:
        """Make ``value`` the data as loaded."""
        self.value = value
        # Serialized anew rather than kept as stored: the database may reformat JSON text.
        try:
            self.snapshot = self._plan.encode(value)
        except (SessionDataError, TypeError, ValueError):
            self.snapshot = None  # cannot be encoded at all

    # -- saving -------------------------------------------------------------------

    def change(self, now: datetime | None = None) -> Change | None:
        """What to store for this fragment, or ``None`` if nothing changed."""
        key = self.key
        if key is None or not (self.loaded or self.assigned):
            return None
        expected = self.revision if self.loaded else None
        value = self.value
        if value is None:
            if self.loaded and self.revision == 0:
                return None
            return Delete(key, expected)
        plan = self._plan
        text = None
        if self.snapshot is not None:
            try:
                text = plan.encode(value)
            except (SessionDataError, TypeError, ValueError):
                text = None  # cannot be encoded at all: dumps() says why
            if text == self.snapshot and not self.migrated:
                return Delete(key, expected) if self.expired else None
        # Changed: now the full check, which refuses what JSON would not give back.
        if text is not None and plan.verify is not None:
            text = plan.verify(value, text)
        else:
            try:
                dumped = self.fragment.serializer.dumps(value)
            except SessionDataError:
                raise
            except Exception as exc:  # a serializer of the project's own may raise anything
                raise SessionDataError(
                    f"the serializer could not store the data: {type(exc).__name__}: {exc}"
                ) from exc
            text = self._foreign_text(dumped)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                # A lone surrogate ("\ud800") is valid in Python and in JSON input, but
                # no database can store it as text.
                raise SessionDataError(
                    f"session data holds text no database can store: {exc}"
                ) from exc
        if "\\u0000" in text and _NUL_ESCAPE.search(text):
            # PostgreSQL's jsonb refuses the NUL character: refused everywhere, alike.
            raise SessionDataError("session data holds a NUL character, which is not stored")
        if "e+" in text and _holds_float_from_1e16(text):
            # PostgreSQL's jsonb keeps 1e+16 as the decimal 10000000000000000, which reads
            # back as an int: refused everywhere, alike, rather than changed on one database.
            raise SessionDataError(
                "session data holds a float of 1e16 or more, which PostgreSQL would give back "
                "as an int; store it as an int or a string"
            )
        if text.count("[") + text.count("{") > MAX_NESTING and deeper_than(value, MAX_NESTING):
            # MariaDB refuses deeper JSON: refused everywhere, alike (the admin's rule too).
            raise SessionDataError(f"session data nests deeper than {MAX_NESTING} levels")
        if len(text) > MAX_DATA_SIZE // 4 and (size := len(text.encode("utf-8"))) > MAX_DATA_SIZE:
            # MariaDB would refuse the statement: refused everywhere, alike.
            raise SessionDataError(
                f"session data is {size:,} bytes of JSON, more than the {MAX_DATA_SIZE:,} "
                "a session may hold"
            )
        fragment = self.fragment
        migrations = fragment.data_migrations
        ttl = fragment.ttl
        record = StoredSession(
            text,
            migrations.latest if migrations is not None else self.stored_version,
            (now or utcnow()) + ttl if ttl is not None else None,
            (expected or 0) + 1,
        )
        return Write(key, record, expected)

    def _foreign_text(self, text: object) -> str:
        """What a serializer other than JSONSerializer gave, checked before it is stored."""
        if not isinstance(text, str):
            raise SessionDataError(
                f"the serializer's dumps() returned {type(text).__name__}, not str"
            )
        if self.storage is not None and self.storage.keeps_json_only:
            try:
                json.loads(text, parse_constant=_not_json)  # NaN and Infinity are not JSON
            except ValueError as exc:
                raise SessionDataError(
                    f"the serializer's dumps() returned text that is not JSON, which "
                    f"{type(self.storage).__name__} cannot keep: {exc}"
                ) from None
        return text


def _expired(record: StoredSession, now: datetime | None = None) -> bool:
    expires_at = record.expires_at
    return expires_at is not None and expires_at <= (now or utcnow())


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


class _FloatFrom1e16(Exception):
    """Found by :func:`_holds_float_from_1e16` (an exception to stop parsing early)."""


def _refuse_exponent(literal: str) -> float:
    if "e+" in literal or "E+" in literal:
        raise _FloatFrom1e16
    return float(literal)


def _holds_float_from_1e16(text: str) -> bool:
    """Whether JSON ``text`` holds a float Python writes with a positive exponent (1e16 and
    up). Text that is not JSON (a serializer of one's own) holds none."""
    try:
        json.loads(text, parse_float=_refuse_exponent)
    except _FloatFrom1e16:
        return True
    except ValueError:
        return False
    return False


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
        plan = self._plan = plan_of(sessions)
        self.fragments: dict[str, FragmentSession] = {}
        states: list[FragmentSession] = []
        self._primary: SessionStorage | None = None
        for fragment_plan in plan.fragments:
            name = fragment_plan.name
            raw = fragment_plan.fragment.key(update)
            if raw is None:
                state = FragmentSession(fragment_plan, None, update)
            else:
                text = f"{fragment_plan.fragment.prefix}{raw}"
                if (
                    isinstance(raw, str)
                    and 0 < len(text) <= MAX_KEY_LENGTH
                    and (text in fragment_plan.keys or storable_key(text))
                ):
                    key = fragment_plan.key(bot_id, text)
                    state = FragmentSession(
                        fragment_plan, key, update, fragment_plan.storage, self
                    )
                    if self._primary is None:
                        self._primary = state.storage
                else:
                    # The key column holds 255 characters, and no database stores a NUL
                    # or a lone surrogate: refuse here rather than fail the write.
                    state = FragmentSession(fragment_plan, None, update)
                    state.bad_key = (
                        f"{raw!r:.80} is not a string of 1 to {MAX_KEY_LENGTH} characters "
                        "without NUL or lone surrogates"
                    )
            states.append(state)
            self.fragments[name] = state
        self._states = states
        if self._primary is None:
            # No fragment has a key (or there is none: DjangoPersistence storing nothing):
            # the update is still recorded where sessions live.
            first = plan.fragments[0] if plan.fragments else None
            self._primary = (
                database_storage()
                if first is None
                else first.storage or first.fragment.resolve_storage()
            )
        if plan.mixed:
            # The record lives in the storage that commits with the handlers' rows, so
            # that storages outside the transaction never get ahead of it.
            for fragment_plan in plan.fragments:
                storage = fragment_plan.storage or fragment_plan.fragment.resolve_storage()
                if storage.commits_with_unit():
                    self._primary = storage
                    break
        # Every key in each storage, locked together on that storage's first read.
        self._unlocked: dict[int, list[StorageKey]] = {}
        # The storages in one order for every update of these sessions, whichever
        # fragments have keys in this one: that of their first fragment (locks_for_read).
        self._storages: dict[int, SessionStorage] = {}
        if sessions.locking:
            for index in plan.lock_order:
                fragment_plan = plan.fragments[index]
                storage = fragment_plan.storage or fragment_plan.fragment.resolve_storage()
                self._storages.setdefault(id(storage), storage)
                state = states[index]
                if state.key is not None and state.fragment.lock:
                    self._unlocked.setdefault(id(storage), []).append(state.key)
        self._taking_locks = asyncio.Lock()
        # Rows beside the fragments' own (PTB's migrate_chat_data): read and locked with
        # the storage's first read; their records and the changes to them, for the commit.
        self._extra_reads: dict[int, list[StorageKey]] = {}
        self.extra_records: dict[StorageKey, StoredSession | None] = {}
        self.extra_changes: list[tuple[SessionStorage, Change]] = []
        update_id = getattr(update, "update_id", None)
        self.mark = UpdateMark(bot_id, update_id) if isinstance(update_id, int) else None
        self._locks = locks if sessions.locking else None
        self._held: list[StorageKey] = []
        # The storages asked to lock keys (with those keys), to unlock at the end.
        self._locked_in: list[tuple[SessionStorage | None, list[StorageKey]]] = []
        self.already_processed = False
        self.is_multi = sessions.is_multi
        self.view: Any = None  # the MultiSession handlers see, made on first use

    def __iter__(self) -> Iterator[FragmentSession]:
        return iter(self._states)

    def also_read(self, storage: SessionStorage, keys: list[StorageKey]) -> None:
        """Read and lock ``keys`` too, with the storage's first read (before :meth:`begin`);
        their records land in :attr:`extra_records`."""
        if not keys:
            return
        self._extra_reads.setdefault(id(storage), []).extend(keys)
        if self.sessions.locking:
            self._unlocked.setdefault(id(storage), []).extend(keys)
            self._storages.setdefault(id(storage), storage)

    @property
    def single(self) -> FragmentSession:
        return self.fragments[""]

    def first_read(self, storage: SessionStorage | None) -> list[StorageKey]:
        """The keys to lock with this read: all of the storage's keys, on its first read.

        Taking every key of the update at once, in one order, means two updates never
        wait for each other in a cycle. The price: an update locks a lazy fragment's
        key even when it never awaits it (unless every fragment in that storage is
        lazy and untouched: then no key is locked or read, only the exactly-once record).
        """
        keys = self._unlocked.pop(id(storage), [])
        if keys:
            self._locked_in.append((storage, keys))
        return keys

    @contextlib.asynccontextmanager
    async def locks_for_read(
        self, storage: SessionStorage | None
    ) -> AsyncIterator[list[StorageKey]]:
        """:meth:`first_read`'s keys, to lock with the read the block makes, once those of
        every storage before this one in the sessions' order are locked (without a
        read): whichever lazy fragment a handler awaits first, updates lock their
        storages in one order, never in a cycle. Reads of one update that run at once
        (lazy fragments gathered) take their locks one after the other."""
        if id(storage) not in self._unlocked:  # locked already, or nothing to lock
            if self._taking_locks.locked():
                # Another read of this update is taking locks, maybe this storage's.
                async with self._taking_locks:
                    pass
            yield []
            return
        async with self._taking_locks:
            for earlier_id, earlier in self._storages.items():
                if earlier_id == id(storage):
                    break
                keys = self.first_read(earlier)
                if keys:
                    with storage_failure("locking sessions"):
                        await earlier.load([], None, lock=keys)
            yield self.first_read(storage)

    def in_lock_order(self, storages: Iterable[SessionStorage]) -> list[SessionStorage]:
        """``storages`` in the order every update of these sessions locks them."""
        rank = {storage_id: n for n, storage_id in enumerate(self._storages)}
        return sorted(storages, key=lambda storage: rank.get(id(storage), len(rank)))

    async def hold_keys(self) -> None:
        """Take this process's locks of every key, before any lock in the database.

        Same-key updates of one process wait for each other here, on the loop, rather
        than each holding a database connection while it waits.
        """
        locks = self._locks
        if locks is None or self._held:
            return
        keys: list[StorageKey] = []
        for index in self._plan.lock_order:
            state = self._states[index]
            if state.key is not None and state.fragment.lock:
                keys.append(state.key)
        if self._extra_reads:
            keys = sorted({*keys, *(k for extra in self._extra_reads.values() for k in extra)})
        taken = locks.take_free(keys)
        if taken == len(keys):
            self._held = keys
            return
        unit = current_unit()
        timeout = unit.remaining() if unit is not None else settings.LOCK_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                self._held = await locks.acquire_rest(keys, taken)
        except TimeoutError:
            raise LockTimeout.budget_spent(settings.LOCK_TIMEOUT) from None

    async def begin(self) -> None:
        """Lock every key, then read the strict fragments and the exactly-once record."""
        states = self._states
        await self.hold_keys()
        strict = [f for f in states if f.key is not None and not f._plan.lazy]
        primary = self._primary
        if self.mark is not None and not any(f.storage is primary for f in strict):
            # Redeliveries are caught before the handlers run, also when nothing is read.
            assert primary is not None
            with storage_failure("reading sessions"):
                _, processed = await primary.load([], self.mark)
            if processed:
                self.already_processed = True
                return
        if not strict:
            return
        groups = [strict]
        storage = strict[0].storage
        for fragment in strict:
            if fragment.storage is not storage:
                by_storage: dict[int, list[FragmentSession]] = {}
                for fragment in strict:
                    by_storage.setdefault(id(fragment.storage), []).append(fragment)
                groups = list(by_storage.values())
                break
        # The exactly-once record is read with the primary storage's strict fragments.
        now = None
        for group in groups:
            storage = group[0].storage
            assert storage is not None
            mark = self.mark if storage is primary else None
            extra = self._extra_reads.pop(id(storage), [])
            with storage_failure("reading sessions"):
                async with self.locks_for_read(storage) as lock:
                    records, processed = await storage.load(
                        [*(f.key for f in group if f.key is not None), *extra], mark, lock=lock
                    )
            if processed:
                self.already_processed = True
                return
            for key in extra:
                self.extra_records[key] = records.get(key)
            for fragment in group:
                record = records.get(fragment.key)  # type: ignore[arg-type]
                if now is None and record is not None and record.expires_at is not None:
                    now = utcnow()
                try:
                    if fragment.take(record, now):
                        fragment.start_with(await _call_initial(fragment.fragment))
                except StoredDataError as exc:
                    _log_bad_row(fragment.key, exc)  # type: ignore[arg-type]
                    raise

    async def move_chat(self, old_chat_id: int, new_chat_id: int) -> list[StorageKey]:
        """Move every fragment's per-chat sessions of a group to its supergroup.

        A fragment's rows of a chat are its keys under the key its resolver gives the
        whole chat, prefix included (:func:`~botsessions.keys.chat_key_of`). The rows
        are moved under the locks of both chats' keys, taken together with this
        update's own keys (after this process's locks of those, as :meth:`begin`).
        """
        await self.hold_keys()
        plain = (chat_key(old_chat_id), chat_key(new_chat_id))
        by_storage: dict[int, tuple[SessionStorage, dict[str, tuple[str, str]]]] = {}
        for fragment in self._plan.fragments:
            embed = chat_key_of(fragment.fragment.key)
            if embed is None:
                continue
            old_head, new_head = embed(old_chat_id), embed(new_chat_id)
            for head in (old_head, new_head):
                if not isinstance(head, str):
                    raise SessionKeyError(
                        f"the key.chat_key of fragment {fragment.name!r} returned "
                        f"{type(head).__name__}, not str"
                    )
            prefix = fragment.fragment.prefix
            pair = (prefix + old_head, prefix + new_head)
            storage = fragment.storage or fragment.fragment.resolve_storage()
            by_storage.setdefault(id(storage), (storage, {}))[1][fragment.name] = pair
        moved: list[StorageKey] = []
        storages = self.in_lock_order(storage for storage, _ in by_storage.values())
        with storage_failure("moving sessions"):
            for storage in storages:
                heads = by_storage[id(storage)][1]
                # Built-in keys without a prefix: the storage's own search (one query in the
                # database). Others: found by their heads, then locked with the rest.
                names = [name for name, pair in heads.items() if pair == plain]
                others = {name: pair for name, pair in heads.items() if pair != plain}
                pairs: list[tuple[StorageKey, StorageKey]] = []
                if others:
                    found = await storage.keys_under(
                        self.bot_id, {name: old for name, (old, _) in others.items()}
                    )
                    for key in found:
                        old_head, new_head = others[key.fragment]
                        new = rekey(key.key, old_head, new_head)
                        if new is not None and len(new) > MAX_KEY_LENGTH:
                            logger.warning(
                                "botsessions: session %s of bot %s not moved to chat %s: "
                                "its key there would be longer than %d characters",
                                key.key,
                                key.bot_id,
                                new_chat_id,
                                MAX_KEY_LENGTH,
                            )
                        elif new is not None:
                            pairs.append((key, StorageKey(key.bot_id, key.fragment, new)))
                async with self.locks_for_read(storage) as own:
                    lock = [*own, *(key for pair in pairs for key in pair)]
                    if pairs:
                        self._locked_in.append((storage, lock))
                    if names:
                        moved += await storage.rename_chat(
                            self.bot_id, names, old_chat_id, new_chat_id, lock=lock
                        )
                    elif lock:
                        await storage.load([], None, lock=lock)
                if pairs:
                    moved += await storage.rename(pairs)
        return moved

    def assign_all(self, value: Any) -> None:
        """``context.session = None`` on a multi session deletes every fragment."""
        if value is not None:
            raise TypeError(
                "a multi session can only be assigned None (to delete every fragment); "
                "assign its fragments one by one instead"
            )
        for fragment in self._states:
            if fragment.key is not None and not is_internal(fragment.name):
                fragment.assigned = True
                fragment.value = None

    async def commit(self) -> int | None:
        """Store what changed; return how many fragments, or ``None`` for a duplicate."""
        now = utcnow() if self._plan.any_ttl else None
        primary = self._primary
        own: list[Change] = []  # the primary storage's changes
        others: dict[int, tuple[SessionStorage, list[Change]]] = {}
        locking = self.sessions.locking
        for fragment in self._states:
            if fragment._load_task is not None:
                await fragment.settle()
            try:
                change = fragment.change(now)
            except SessionDataError as exc:
                raise SessionDataError(f"{fragment.key}: {exc}") from exc
            if change is None:
                continue
            if not locking:
                # Documented as last write wins: no revision check either.
                change = dataclasses.replace(change, expected_revision=None)
            storage = fragment.storage
            assert storage is not None
            if storage is primary:
                own.append(change)
            else:
                others.setdefault(id(storage), (storage, []))[1].append(change)
        for storage, change in self.extra_changes:
            if storage is primary:
                own.append(change)
            else:
                others.setdefault(id(storage), (storage, []))[1].append(change)
        unit = current_unit()
        must_record = unit is not None and unit.needs_record
        if not own and not others and not must_record:
            return 0
        assert primary is not None
        database = self._record_storage(primary, unit)
        with storage_failure("saving sessions"):
            if database is None or unit is None:
                # The primary storage commits first, with the record, even with nothing of its
                # own: an update whose handlers wrote rows must not write them again.
                if not await primary.commit(own, self.mark):
                    return None
                for storage, batch in others.values():
                    # Committed with its record in the primary storage, the update is
                    # done: a failure here cannot be undone, only reported.
                    try:
                        await storage.commit(batch, None)
                    except Exception as exc:  # a storage of your own may raise anything
                        update_id = self.mark.update_id if self.mark is not None else None
                        logger.error(
                            "botsessions: update %s is committed in %r, but its sessions in "
                            "%r could not be saved and are lost: %s",
                            update_id,
                            primary,
                            storage,
                            exc,
                        )
            else:
                # The record commits in the update's transaction, with the handlers' rows and
                # the database's fragments; storages outside it (Redis) follow its COMMIT, so
                # that a failed COMMIT leaves them untouched for the redelivery.
                if not await database.commit(own if primary is database else [], self.mark):
                    return None
                deferred = [] if primary is database else [(primary, own, self.mark)]
                for storage, batch in others.values():
                    if storage.commits_with_unit():
                        await storage.commit(batch, None)
                    else:
                        deferred.append((storage, batch, None))
                for storage, batch, mark in deferred:
                    self._commit_when_ended(unit, storage, batch, mark)
                if deferred and self._held:
                    # Same-key updates of this process wait until those commits are done.
                    held, self._held = self._held, []
                    unit.when_ended(lambda committed: self._release_held(held))
        return len(own) + sum(len(batch) for _, batch in others.values())

    @staticmethod
    def _record_storage(primary: SessionStorage, unit: UnitOfWork | None) -> SessionStorage | None:
        """The storage that commits in the update's transaction and keeps its record:
        the primary one when it does (a fragment in the database), else the database's
        when the handlers wrote rows there; ``None`` when neither."""
        if unit is None:
            return None
        if primary.commits_with_unit():
            return primary
        if unit.wrote:
            database = database_storage()
            if database.commits_with_unit():
                return database
        return None

    async def _release_held(self, held: list[StorageKey]) -> None:
        assert self._locks is not None
        self._locks.release(held)

    def _commit_when_ended(
        self,
        unit: UnitOfWork,
        storage: SessionStorage,
        batch: list[Change],
        mark: UpdateMark | None = None,
    ) -> None:
        """Commit ``batch`` once the unit's transaction has committed; then unlock.

        Until then the storage keeps its locks (they are not given back with the
        others'), so the commit still finds them held, and the update keeps its keys in
        this process. After a rollback nothing is written and the locks are given back.
        A commit failing after the database's cannot be undone: it is logged, and the
        update stays committed (a redelivery is taken as a duplicate), so those
        fragments' changes are lost.
        """
        keys: list[StorageKey] = []
        kept = []
        for entry in self._locked_in:
            if entry[0] is storage:
                keys += entry[1]
            else:
                kept.append(entry)
        self._locked_in = kept
        update_id = self.mark.update_id if self.mark is not None else None

        async def finish(committed: bool) -> None:
            try:
                if committed:
                    await storage.commit(batch, mark)
            except Exception as exc:
                logger.error(
                    "botsessions: update %s is committed in the database, but its sessions "
                    "in %r could not be saved and are lost: %s",
                    update_id,
                    storage,
                    exc,
                )
            finally:
                if keys:
                    await storage.unlock(keys)

        unit.when_ended(finish)

    async def await_assigned(self) -> None:
        """Await what handlers assigned as awaitables (raising what those raise)."""
        for fragment in self._states:
            if fragment.assigned and _is_awaitable(fragment.value):
                fragment.value = await fragment.value

    async def unlock_storages(self) -> None:
        """Give back the locks the update's storages took (Redis's; the database's end
        with the transaction)."""
        for fragment in self._states:
            # A lazy read a failed handler started and never awaited may still be on its
            # way: let it end (its outcome no longer matters), so that the locks it takes
            # are given back here rather than left to expire.
            if fragment._load_task is not None:
                with contextlib.suppress(Exception):
                    await fragment.settle()
        locked, self._locked_in = self._locked_in, []
        for storage, keys in locked:
            if storage is None:
                continue
            try:
                await storage.unlock(keys)
            except Exception:
                logger.exception("botsessions: giving back session locks failed")

    def release(self) -> None:
        if self._held:
            assert self._locks is not None
            self._locks.release(self._held)
            self._held = []


async def _call_initial(fragment: Fragment) -> Any:
    """A new session's data, its own: an ``initial`` that hands out shared objects (a
    shallow ``DEFAULTS.copy``) would let one chat's change reach another's new session."""
    if fragment.initial is None:
        return None
    value = fragment.initial()
    if _is_awaitable(value):
        value = await value
    try:
        return copy.deepcopy(value)
    except Exception:  # nothing a storage could hold either: the write will say why
        return value


@contextlib.contextmanager
def storage_failure(doing: str) -> Iterator[None]:
    """Whatever a storage raises is a failure of the storage: the update is retried.

    The built-in storages raise :class:`StorageError`; a storage of your own, a driver
    or a test's database guard may raise anything (``ConnectionError``, ``TimeoutError``,
    ``RuntimeError``). Taken for a handler's error, it would be acknowledged with its
    sessions unread or unsaved, and the update lost.
    """
    try:
        yield
    except SessionError:
        raise
    except Exception as exc:
        raise StorageError(f"{doing} failed: {type(exc).__name__}: {exc}") from exc


def _log_bad_row(key: StorageKey, exc: Exception) -> None:
    logger.error(
        "botsessions: session %s (bot %s, fragment %r, key %r) could not be loaded: %s",
        key,
        key.bot_id,
        key.fragment,
        key.key,
        exc,
    )
