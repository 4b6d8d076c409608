"""One session in whatever storage its fragment uses: find it, read it, reset it, delete it.

The admin's page for sessions outside the database (Redis, storages of your own) and the
``showsession``, ``resetsession`` and ``deletesession`` commands are thin layers over
these functions. They go through the storage contract (``read_many``, ``keys_under``,
``commit``), so they work on every storage, the database's included, and never take a
session's lock: a reset or a delete is a compare-and-set on the revision the operator
was shown, so it never overwrites a write the bot made meanwhile, and a bot holding the
older data fails its own compare-and-set (a 503, then a redelivery that reads the fix).

Each call runs on a short-lived event loop of its own, even under ASGI (never the bot's:
a storage's connections of that loop are the bot's), and closes what the storage opened
for it (:meth:`~botsessions.storage.base.SessionStorage.close_for_loop`). A storage
failing in any way there (a connection error of its client library, a loop error) is a
:class:`~botsessions.errors.StorageError`, which the admin and the commands report as an
unreachable storage.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from asgiref.sync import async_to_sync

from .bots import session_configs
from .config import Fragment
from .display import shown_data
from .errors import SessionConflict, SessionError, StorageError, StoredDataError
from .keys import chat_key, storable_key
from .maintenance import initial_data
from .session import MAX_KEY_LENGTH
from .storage.base import (
    Delete,
    SessionStorage,
    StorageKey,
    StoredSession,
    Write,
    on_short_lived_loop,
)

logger = logging.getLogger("botsessions")

T = TypeVar("T")

#: The most sessions a search returns.
MAX_FOUND = 100

_TELEGRAM_ID = re.compile(r"-?\d{1,20}")


class BadLookup(Exception):
    """A bot, fragment or key that cannot be looked up: the message says why, in one line."""


class SessionChanged(Exception):
    """The session changed (or went) after the operator read it: nothing was done."""


@dataclass(frozen=True)
class FragmentRef:
    """A configured fragment of a bot, with the storage that holds its sessions."""

    alias: str
    bot_id: int
    name: str
    fragment: Fragment

    @property
    def storage(self) -> SessionStorage:
        return self.fragment.resolve_storage()

    @property
    def label(self) -> str:
        """``default (123456) · chat``; ``-`` for the fragment of a single session."""
        return f"{self.alias} ({self.bot_id}) · {self.name or '-'}"

    def key(self, text: str) -> StorageKey:
        return StorageKey(self.bot_id, self.name, text)


@dataclass(frozen=True)
class Found:
    """One stored session, as read, or why its stored value cannot be read."""

    ref: FragmentRef
    key: str
    record: StoredSession | None
    problem: str | None = None

    @property
    def expired(self) -> bool:
        expires_at = self.record.expires_at if self.record is not None else None
        return expires_at is not None and expires_at <= datetime.now(UTC)

    @property
    def revision(self) -> int | None:
        """The revision to compare-and-set against; ``None`` for unreadable data."""
        return self.record.revision if self.record is not None else None


def configured_fragments(*, in_database: bool | None = None) -> list[FragmentRef]:
    """Every fragment of every configured bot with sessions, by alias and name.

    ``in_database=False`` keeps the fragments whose storage is not the database the
    admin's session list reads (the admin's page for other storages: Redis, or a
    ``DatabaseStorage(using=...)`` of another database), ``True`` only that one's.
    """
    from django.db import router

    from .models import Session
    from .storage.db import DatabaseStorage

    # The list reads db_for_read: a replica of db_for_write, where a router has one.
    listed = {router.db_for_read(Session), router.db_for_write(Session)}
    refs = []
    for bot_id, (alias, sessions) in sorted(session_configs().items(), key=lambda i: i[1][0]):
        for name, fragment in sessions.fragments.items():
            ref = FragmentRef(alias, bot_id, name, fragment)
            storage = ref.storage
            listed_here = isinstance(storage, DatabaseStorage) and storage.using in listed
            if in_database is None or listed_here == in_database:
                refs.append(ref)
    return refs


def fragment_ref(
    bot: str | int, name: str, refs: Sequence[FragmentRef] | None = None
) -> FragmentRef:
    """The fragment ``name`` of the bot with this alias (a ``str``) or id (an ``int``).

    ``-`` names the fragment of a single session. Raises :class:`BadLookup` naming
    what is configured when there is no such bot or fragment.
    """
    name = "" if name == "-" else name
    refs = configured_fragments() if refs is None else refs
    bots = [r for r in refs if (r.alias if isinstance(bot, str) else r.bot_id) == bot]
    if not bots:
        known = ", ".join(sorted({r.alias for r in refs})) or "none"
        raise BadLookup(f"no bot {_short(bot)} with sessions here (bots: {known})")
    for ref in bots:
        if ref.name == name:
            return ref
    names = ", ".join(r.name or "-" for r in bots)
    raise BadLookup(
        f"bot {bots[0].alias!r} has no fragment {_short(name or '-')} (fragments: {names})"
    )


def check_key(text: str) -> str:
    """``text`` if a storage can hold it as a key, else :class:`BadLookup`."""
    if not text or len(text) > MAX_KEY_LENGTH or not storable_key(text):
        raise BadLookup(
            f"{_short(text)} is not a session key: 1 to {MAX_KEY_LENGTH} characters, "
            "no NUL or lone surrogate"
        )
    return text


def read_session(ref: FragmentRef, key: str) -> Found | None:
    """The session stored under ``key`` (``None`` when there is none)."""
    check_key(key)
    found = _run(ref.storage, functools.partial(_read, ref, [key]))
    return found[0] if found else None


def find_sessions(refs: Sequence[FragmentRef], term: str) -> tuple[list[Found], bool]:
    """The sessions a search for ``term`` finds in ``refs``, and whether there were more.

    ``term`` is a key, with or without the fragment's prefix, or a Telegram id: a chat's
    id finds the chat's own key and its users' and topics' keys in it (``chat:C…``), a
    user's id their own key (``user:U``). One read per storage for the keys themselves,
    and a key search (a ``SCAN`` in Redis) per fragment for a chat's other keys.
    """
    term = term.strip()
    if not term or len(term) > MAX_KEY_LENGTH or not storable_key(term):
        return [], False
    found: list[Found] = []
    for ref in refs:
        found += _run(ref.storage, functools.partial(_search, ref, term))
        if len(found) > MAX_FOUND:
            return found[:MAX_FOUND], True
    return found, False


def reset_session(ref: FragmentRef, key: str, *, revision: int | None) -> bool:
    """Give the session its fragment's initial data; ``False`` when that is ``None``
    and the session was deleted instead.

    ``revision`` is the one the operator was shown (``None`` for a stored value that
    could not be read, which is then replaced whatever it is). Raises
    :class:`SessionChanged` when the session has another revision now, and
    :class:`~botsessions.errors.SessionDataError` when the initial data cannot be stored.
    """
    check_key(key)
    plan = initial_data(ref.fragment)
    storage_key = ref.key(key)
    if plan.deletes or plan.text is None:
        _change(ref, Delete(storage_key, revision))
        return False
    record = StoredSession(
        data=plan.text,
        version=plan.version,
        expires_at=plan.expires_at(datetime.now(UTC)),
        revision=(revision or 0) + 1,
    )
    _change(ref, Write(storage_key, record, revision))
    return True


def delete_session(ref: FragmentRef, key: str, *, revision: int | None) -> None:
    """Delete the session, if it still has ``revision`` (``None``: whatever it holds)."""
    check_key(key)
    _change(ref, Delete(ref.key(key), revision))


def shown_json(text: str) -> str:
    """Stored data as a page or a terminal shows it: indented JSON when Python reads it."""
    return shown_data(text, indent=2)


# -- the async halves, each on a loop of its own ---------------------------------------


def _run(storage: SessionStorage, work: Callable[[], Awaitable[T]]) -> T:
    async def call() -> T:
        # Reset at the end: asgiref copies the context back to the caller's thread.
        token = on_short_lived_loop.set(True)
        try:
            return await work()
        finally:
            try:
                await storage.close_for_loop()
            except Exception:  # the loop ends anyway; the work's outcome is what counts
                logger.warning(
                    "botsessions: closing %r's connections failed", storage, exc_info=True
                )
            on_short_lived_loop.reset(token)

    try:
        return async_to_sync(call, force_new_loop=True)()
    except SessionError:
        raise
    except Exception as exc:
        # Not only StorageError: a client failing otherwise (a connection bound to
        # another loop, a closed loop) is as unreachable for the operator.
        logger.warning("botsessions: %r failed", storage, exc_info=True)
        raise StorageError(f"{storage!r} failed: {type(exc).__name__}: {exc}") from exc


async def _read(ref: FragmentRef, keys: Sequence[str]) -> list[Found]:
    """The stored ones of ``keys``; a value that cannot be read is found with its problem."""
    storage = ref.storage
    wanted = [ref.key(key) for key in dict.fromkeys(keys)]
    try:
        records = await storage.read_many(wanted)
    except StoredDataError:
        records = {}
        problems: dict[StorageKey, str] = {}
        for key in wanted:  # one by one, to tell which
            try:
                records[key] = await storage.read(key)
            except StoredDataError as exc:
                problems[key] = str(exc)
        return [
            Found(ref, key.key, records.get(key), problems.get(key))
            for key in wanted
            if records.get(key) is not None or key in problems
        ]
    return [Found(ref, key.key, records[key]) for key in wanted if records[key] is not None]


async def _search(ref: FragmentRef, term: str) -> list[Found]:
    prefix = ref.fragment.prefix
    candidates = [term]
    if prefix and not term.startswith(prefix):
        candidates.append(prefix + term)
    if _TELEGRAM_ID.fullmatch(term):
        number = int(term)
        head = prefix + chat_key(number)
        candidates += [head, f"{prefix}user:{number}"]
        under = await ref.storage.keys_under(ref.bot_id, {ref.name: head})
        candidates += sorted(key.key for key in under)[: MAX_FOUND + 1]
    candidates = [c for c in candidates if len(c) <= MAX_KEY_LENGTH and storable_key(c)]
    return await _read(ref, candidates)


def _change(ref: FragmentRef, change: Write | Delete) -> None:
    async def commit() -> None:
        await ref.storage.commit([change], None)

    try:
        _run(ref.storage, commit)
    except SessionConflict as exc:
        raise SessionChanged(
            f"session {change.key.key!r} changed after it was read; nothing was done"
        ) from exc


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"
