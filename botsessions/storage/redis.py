"""Sessions in Redis, through redis-py's asyncio client (``pip install botsessions[redis]``).

Every call that matters is one Lua script, so it is one round trip and atomic:

- ``load`` takes the locks of all of an update's keys in this storage (all or none, so
  two updates never wait for each other in a cycle), reads the fragments asked for and
  whether the update was already committed;
- ``commit`` checks that the update's exactly-once record is absent, that the locks of
  the keys it writes are still this update's, and every revision, then writes every
  fragment and the record, or nothing at all;
- ``unlock`` gives back only the locks whose token is still this update's.

A reply can be lost while its script runs all the same (Redis stalled past the socket
timeout). A commit that may have run that way is *settled* on a fresh connection: one
script gives back its locks that still hold its tokens (so, if it is still on its way,
it finds them gone and writes nothing) and tells whether it landed: its exactly-once
record exists, or, without one, its keys hold what it wrote. A read that may have taken
locks that way gives them back the same way.

A lock is a key holding a random token, with an expiry of ``BOTSESSIONS_LOCK_TIMEOUT``,
so a process that died holding one blocks its keys for that long at most; a live one
renews the locks it holds every third of that, however long its updates run. An update that
finds a key locked retries with a short, growing pause, within the update's lock-wait
budget; past it :class:`~botsessions.errors.LockTimeout` (the webhook's 503).

The updates of one process take turns on the engine's in-process key locks before they
come here, so one process holds a key for one update at a time, and this storage can
remember the token of each key it holds (and which update holds it: a chat migration,
which moves keys beside its own, waits for another update's).

Key names (``prefix`` is ``"botsessions:"`` by default; the braces make every key of a
bot land in one Redis Cluster slot, so the scripts may touch several of them)::

    {prefix}{BOT_ID}:s:{fragment}:{key}       the session: "revision|version|expiry ms|data"
    {prefix}{BOT_ID}:lock:{fragment}:{key}    its lock: a token
    {prefix}{BOT_ID}:done:{update_id}         an exactly-once record
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..backoff import Backoff
from ..conf import settings
from ..errors import LockTimeout, SessionConflict, StorageError, StoredDataError
from ..unit import current_unit
from .base import (
    Change,
    Delete,
    SessionStorage,
    StorageKey,
    StoredSession,
    UpdateMark,
    Write,
    on_short_lived_loop,
)

logger = logging.getLogger("botsessions")

# KEYS: the lock keys (ARGV[1] of them), the session keys to read, then the record's key
# when ARGV[2] is "1". ARGV: lock count, with record, expiry in ms, one token per lock.
_LOAD = """
local locks = tonumber(ARGV[1])
for i = 1, locks do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[3 + i] then return {0, i} end
end
for i = 1, locks do redis.call('SET', KEYS[i], ARGV[3 + i], 'PX', ARGV[3]) end
local out = {1, 0}
local last = #KEYS
if ARGV[2] == '1' then
  last = last - 1
  out[2] = redis.call('EXISTS', KEYS[#KEYS])
end
for i = locks + 1, last do
  local value = redis.pcall('GET', KEYS[i])
  if type(value) == 'table' and value.err then value = {value.err} end
  out[#out + 1] = value
end
return out
"""

# KEYS: the locks to check (ARGV[1] of them), the changed keys (ARGV[2]), then the
# record's key when ARGV[3] (its lifetime in seconds) is not empty. ARGV after those
# three: one token per lock, then per change: kind ("w" or "d"), expected revision
# ("" for none), new revision, the rest of the value, expiry in ms since the epoch ("").
# Returns 1 when committed, 0 for a recorded update, {-1, i}: lock i is not ours,
# {-2, i}: change i found another revision. A change with no expected revision replaces
# whatever the key holds, a value not in this format included (an operator's fix).
_COMMIT = """
local locks, changes, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if keep ~= '' and redis.call('EXISTS', KEYS[#KEYS]) == 1 then return 0 end
for i = 1, locks do
  if redis.call('GET', KEYS[i]) ~= ARGV[3 + i] then return {-1, i} end
end
local base = 3 + locks
local revisions = {}
for i = 1, changes do
  local at = base + (i - 1) * 5
  local key = KEYS[locks + i]
  local stored = redis.pcall('GET', key)
  local expected = ARGV[at + 2]
  local current = 0
  if type(stored) == 'table' then
    if expected ~= '' then return {-2, i} end
  elseif stored then
    current = tonumber(string.match(stored, '^(%d+)|'))
    if not current then
      if expected ~= '' then return {-2, i} end
      current = 0
    end
  end
  if expected ~= '' and tonumber(expected) ~= current then return {-2, i} end
  if expected == '' then revisions[i] = current + 1 else revisions[i] = ARGV[at + 3] end
end
for i = 1, changes do
  local at = base + (i - 1) * 5
  local key = KEYS[locks + i]
  if ARGV[at + 1] == 'd' then
    redis.call('DEL', key)
  elseif ARGV[at + 5] == '' then
    redis.call('SET', key, revisions[i] .. '|' .. ARGV[at + 4])
  else
    redis.call('SET', key, revisions[i] .. '|' .. ARGV[at + 4], 'PXAT', ARGV[at + 5])
  end
end
if keep ~= '' then redis.call('SET', KEYS[#KEYS], '1', 'EX', keep) end
return 1
"""

# KEYS: as the commit's. ARGV: lock count, "1" when the last key is the record, one token
# per lock, then per change: the revision it wrote ("" when the script chose it) and the
# rest of its value ("" for a delete). Deletes the locks still holding their token.
# Returns {locks deleted, whether the record exists, then per change 1 if its key holds
# what the commit wrote, else 0}.
_SETTLE = """
local locks = tonumber(ARGV[1])
local given_back = 0
for i = 1, locks do
  if redis.call('GET', KEYS[i]) == ARGV[2 + i] then
    redis.call('DEL', KEYS[i])
    given_back = given_back + 1
  end
end
local last, recorded = #KEYS, 0
if ARGV[2] == '1' then
  last = last - 1
  recorded = redis.call('EXISTS', KEYS[#KEYS])
end
local reply = {given_back, recorded}
for i = locks + 1, last do
  local at = 2 + locks + (i - locks - 1) * 2
  local revision, rest = ARGV[at + 1], ARGV[at + 2]
  local stored = redis.pcall('GET', KEYS[i])
  local holds = 0
  if type(stored) ~= 'string' then
    if rest == '' and not stored then holds = 1 end
  elseif rest ~= '' then
    local bar = string.find(stored, '|', 1, true)
    if bar and string.sub(stored, bar + 1) == rest
        and (revision == '' or string.sub(stored, 1, bar - 1) == revision) then
      holds = 1
    end
  end
  reply[#reply + 1] = holds
end
return reply
"""

# KEYS: locks; ARGV: their tokens. Deletes only the locks still holding their token.
_UNLOCK = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return 1
"""

# KEYS: locks; ARGV[1]: their lifetime in ms, then one token per lock. Renews each lock
# that still holds its token.
_EXTEND = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1 + i] then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
return 1
"""

#: The shortest pause between renewals of the locks held: a lock timeout of a few
#: milliseconds would otherwise have them renewed hundreds of times a second.
_RENEWAL_PAUSE_FLOOR = 0.02

#: Between attempts at a held lock: from 2 ms, doubling up to 50 ms.
_LOCK_BACKOFF = Backoff(first=0.002, cap=0.05)


class RedisStorage(SessionStorage):
    """Sessions in Redis: pass ``url`` (``"redis://host:6379/0"``) or ``client``.

    ``client`` is a ``redis.asyncio.Redis`` of yours, used as it is (on the bot's event
    loop), except by the admin and the session commands: their short-lived loops get a
    client of their own with its connection settings. With ``url``, the storage makes
    one client per event loop that uses it.
    ``prefix`` starts every key name, so several projects can share a database.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str = "botsessions:",
        **client_options: Any,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisStorage needs either url= or client=")
        self.url = url
        self.prefix = prefix
        self._client = client
        self._client_options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
        self._client_options.update(client_options)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._scripts: weakref.WeakKeyDictionary[Redis, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        #: The token of each key this process holds the lock of, and the update (its
        #: unit of work) that holds it.
        self._tokens: dict[StorageKey, str] = {}
        self._holders: dict[StorageKey, object] = {}
        #: Per event loop, the task that renews the locks this process holds.
        self._keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<RedisStorage {self.prefix!r}>"

    # -- the client and its scripts ----------------------------------------------------

    @property
    def client(self) -> Redis:
        """The client for the running event loop.

        A given client's connections are bound to the loop that opened them (the
        bot's), so a lookup's short-lived loop gets one made here instead.
        """
        if self._client is not None and not on_short_lived_loop.get():
            return self._client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A client holds its loop through its connections (and its scripts hold the
            # client), so weak keys alone never let go of a loop that has ended
            # (asyncio.run() in a loop of calls): such clients are dropped here, and their
            # sockets closed as they are collected.
            for ended in [known for known in self._clients if known.is_closed()]:
                self._scripts.pop(self._clients.pop(ended), None)
            client = self._clients[loop] = self._new_client()
        return client

    def _new_client(self) -> Redis:
        """A client of this storage's own: from ``url``, or with the given client's settings."""
        if self._client is None:
            assert self.url is not None
            return Redis.from_url(self.url, **self._client_options)
        pool = self._client.connection_pool
        return Redis.from_pool(
            ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
        )

    def _script(self, name: str, client: Redis) -> Any:
        scripts = self._scripts.get(client)
        if scripts is None:
            scripts = self._scripts[client] = {
                "load": client.register_script(_LOAD),
                "commit": client.register_script(_COMMIT),
                "unlock": client.register_script(_UNLOCK),
                "extend": client.register_script(_EXTEND),
            }
        return scripts[name]

    async def _run_afresh(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` on a client made for it, after a reply that never came: the
        connection that waited for it may still have it pending."""
        client = self._new_client()
        try:
            return await client.eval(script, len(keys), *keys, *args)
        finally:
            await client.aclose()

    async def _run(self, name: str, keys: list[str], args: list[Any], doing: str) -> Any:
        client = self.client
        try:
            return await self._script(name, client)(keys=keys, args=args, client=client)
        except (RedisError, OSError) as exc:
            raise StorageError(f"{doing} in Redis failed: {exc}") from exc

    # -- key names ---------------------------------------------------------------------

    def name(self, key: StorageKey) -> str:
        """The Redis key of a session."""
        return f"{self.prefix}{{{key.bot_id}}}:s:{key.fragment}:{key.key}"

    def lock_name(self, key: StorageKey) -> str:
        """The Redis key of a session's lock."""
        return f"{self.prefix}{{{key.bot_id}}}:lock:{key.fragment}:{key.key}"

    def mark_name(self, mark: UpdateMark) -> str:
        """The Redis key of an exactly-once record."""
        return f"{self.prefix}{{{mark.bot_id}}}:done:{mark.update_id}"

    def _parse(self, name: str) -> StorageKey | None:
        rest = name[len(self.prefix) :]
        bot, sep, rest = rest.partition("}:s:")
        fragment, sep2, key = rest.partition(":")
        if not (sep and sep2 and bot.startswith("{")):
            return None
        try:
            return StorageKey(int(bot[1:]), fragment, key)
        except ValueError:
            return None

    # -- the contract ------------------------------------------------------------------

    async def read(self, key: StorageKey) -> StoredSession | None:
        return (await self.read_many([key]))[key]

    async def read_many(
        self, keys: Sequence[StorageKey]
    ) -> dict[StorageKey, StoredSession | None]:
        records, _ = await self.load(keys, None)
        return records

    async def load(
        self,
        keys: Sequence[StorageKey],
        mark: UpdateMark | None,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        """Lock ``lock``, read ``keys`` and whether ``mark`` was committed, in one script.

        A held lock is retried until the update's lock-wait budget runs out.
        """
        wanted = list(dict.fromkeys(k for k in lock))
        holder = current_unit()
        if any(self._holders.get(k, holder) is not holder for k in wanted):
            # Keys another update of this process holds (a chat migration moves keys
            # beside its own): never taken over with its token, waited for.
            await self._released([k for k in wanted if self._holders.get(k, holder) is not holder])
        fresh = secrets.token_hex(16)
        tokens = [self._tokens.get(k, fresh) for k in wanted]
        names = [self.lock_name(k) for k in wanted]
        names += [self.name(k) for k in keys]
        if mark is not None:
            names.append(self.mark_name(mark))
        args: list[Any] = [len(wanted), "1" if mark is not None else "0"]
        args.append(_lock_lifetime_ms() if wanted else 0)
        args += tokens
        # Remembered before sending: a read whose reply is lost may have taken them.
        taking = {k: t for k, t in zip(wanted, tokens, strict=True) if k not in self._tokens}
        self._tokens.update(taking)
        self._holders.update(dict.fromkeys(taking, holder))
        try:
            reply = await self._run("load", names, args, "reading sessions")
            if reply[0] != 1:
                reply = await self._wait(names, args)
        except StorageError as exc:
            for key in taking:
                self._drop_token(key)
            if taking and _may_have_run(exc):
                await self._give_back(taking)
            raise
        if wanted:
            self._keep_locks()
        records = {key: _decode(key, value) for key, value in zip(keys, reply[2:], strict=True)}
        return records, bool(reply[1])

    def _drop_token(self, key: StorageKey) -> str | None:
        self._holders.pop(key, None)
        return self._tokens.pop(key, None)

    async def _released(self, keys: list[StorageKey]) -> None:
        """Wait, within the update's lock-wait budget, until this process's other updates
        have given back ``keys``."""
        waiting = _LockWait()
        while any(key in self._tokens for key in keys):
            await waiting.pause()

    def _keep_locks(self) -> None:
        """Renew the locks this process holds, while it holds them, from this loop.

        A lock expires ``BOTSESSIONS_LOCK_TIMEOUT`` after it is taken, so that a process
        that dies frees its keys that soon; a live one renews every lock it holds each
        third of that, so that an update that runs longer (a slow handler, a wait for a
        lock in the database) still holds its keys when it commits.
        """
        loop = asyncio.get_running_loop()
        keeper = self._keepers.get(loop)
        if keeper is None or keeper.done():
            self._keepers[loop] = loop.create_task(self._renew_locks())

    async def _renew_locks(self) -> None:
        keeper = asyncio.current_task()
        # redis-py may turn a cancellation during a call into an error of its own: a
        # keeper told to stop (its loop is closing) stops, whatever it was doing.
        while self._tokens and not (keeper is not None and keeper.cancelling()):
            lifetime = _lock_lifetime_ms()
            await asyncio.sleep(max(lifetime / 3000, _RENEWAL_PAUSE_FLOOR))
            by_bot: dict[int, list[tuple[StorageKey, str]]] = {}
            for key, token in list(self._tokens.items()):
                by_bot.setdefault(key.bot_id, []).append((key, token))
            for held in by_bot.values():  # one script per bot: its keys share a cluster slot
                try:
                    await self._run(
                        "extend",
                        [self.lock_name(key) for key, _ in held],
                        [lifetime, *(token for _, token in held)],
                        "renewing session locks",
                    )
                except StorageError as exc:
                    if keeper is not None and keeper.cancelling():
                        return
                    logger.warning("botsessions: %s; they expire unless renewed in time", exc)

    async def _give_back(self, taken: Mapping[StorageKey, str]) -> None:
        """Give back the locks a failed read may have taken, if they still hold its tokens."""
        try:
            await self._run_afresh(
                _UNLOCK, [self.lock_name(key) for key in taken], list(taken.values())
            )
        except (RedisError, OSError) as exc:
            logger.warning(
                "botsessions: giving back the locks of a failed read in Redis failed: %s; "
                "they expire by themselves",
                exc,
            )

    async def _wait(self, names: list[str], args: list[Any]) -> Any:
        waiting = _LockWait()
        while True:
            await waiting.pause()
            reply = await self._run("load", names, args, "reading sessions")
            if reply[0] == 1:
                return reply

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        """Apply every change and record ``mark`` in one script, or nothing.

        Refused with :class:`~botsessions.errors.SessionConflict` when a changed key's lock
        is no longer this process's (it expired, and maybe another update holds it now)
        or a revision moved on. When the reply is lost, the commit is settled (see the
        module's docstring): one that landed is a commit like any other.
        """
        if not changes and mark is None:
            return True
        held = [(c.key, self._tokens[c.key]) for c in changes if c.key in self._tokens]
        names = [self.lock_name(key) for key, _ in held]
        names += [self.name(c.key) for c in changes]
        args: list[Any] = [len(held), len(changes)]
        if mark is not None:
            names.append(self.mark_name(mark))
            args.append(max(1, int(settings.PROCESSED_UPDATES_RETENTION.total_seconds())))
        else:
            args.append("")
        args += [token for _, token in held]
        # Per change, what settling it looks for: the revision written ("" when the
        # script chooses it) and the rest of the value ("" for a delete).
        written: list[str] = []
        for change in changes:
            expected = "" if change.expected_revision is None else change.expected_revision
            if isinstance(change, Write):
                record = change.record
                version = "" if record.version is None else str(record.version)
                expiry = "" if record.expires_at is None else _millis(record.expires_at)
                rest = f"{version}|{expiry}|{record.data}"
                args += ["w", expected, record.revision, rest, expiry]
                written += ["" if expected == "" else str(record.revision), rest]
            else:
                args += ["d", expected, 0, "", ""]
                written += ["", ""]
        try:
            reply = await self._run("commit", names, args, "saving sessions")
        except StorageError as exc:
            if not _may_have_run(exc):
                raise
            locked = [c.key in self._tokens for c in changes]
            await self._settle(exc, names, held, written, locked, with_record=mark is not None)
            return True
        if reply == 1:
            return True
        if reply == 0:
            return False
        kind, index = int(reply[0]), int(reply[1])
        if kind == -1:
            key = held[index - 1][0]
            raise SessionConflict(f"the lock of session {key} expired before the commit")
        raise SessionConflict(f"session {changes[index - 1].key} was changed by another writer")

    async def _settle(
        self,
        failed: StorageError,
        names: list[str],
        held: list[tuple[StorageKey, str]],
        written: list[str],
        locked: list[bool],
        with_record: bool,
    ) -> None:
        """Return if the commit that failed with ``failed`` landed after all; raise if it
        did not, or if that cannot be told.

        ``names`` are the commit's keys, ``held`` its locks and tokens, ``written`` what
        each change wrote, ``locked`` whether each change's key was locked. Once its
        locks are given back it can no longer land late.
        """
        unknown = f"{failed}; the outcome is unknown: the changes may or may not have been saved"
        args = [len(held), "1" if with_record else "0", *(token for _, token in held)]
        try:
            reply = await self._run_afresh(_SETTLE, names, [*args, *written])
        except (RedisError, OSError) as exc:
            raise StorageError(f"{unknown} (settling it failed too: {exc})") from exc
        for key, _ in held:
            self._drop_token(key)  # given back
        given_back, recorded, *holding = (int(n) for n in reply)
        landed: bool | None
        if with_record:
            landed = True if recorded else (False if held else None)
        elif not held:
            landed = None  # no lock stops it from landing later
        elif all(holds for holds, lock in zip(holding, locked, strict=True) if lock):
            # Only locked keys tell: another writer may have changed an unlocked one since.
            landed = True
        else:
            # It did not land only if no other writer could have come since: every lock
            # was still ours.
            landed = False if given_back == len(held) else None
        if landed is None:
            raise StorageError(unknown) from failed.__cause__
        if not landed:
            raise failed

    async def unlock(self, keys: Sequence[StorageKey]) -> None:
        """Give back the locks of ``keys`` still holding this process's tokens."""
        held = [(k, self._tokens[k]) for k in dict.fromkeys(keys) if k in self._tokens]
        for key, _ in held:
            self._drop_token(key)
        if not held:
            return
        try:
            await self._run(
                "unlock",
                [self.lock_name(k) for k, _ in held],
                [token for _, token in held],
                "giving back locks",
            )
        except StorageError as exc:
            # They expire by themselves; the update itself is done.
            logger.warning("botsessions: %s; the locks expire by themselves", exc)

    async def write(
        self, key: StorageKey, record: StoredSession, *, expected_revision: int | None = None
    ) -> None:
        await self.commit([Write(key, record, expected_revision)])

    async def delete(self, key: StorageKey, *, expected_revision: int | None = None) -> None:
        await self.commit([Delete(key, expected_revision)])

    async def keys(self, bot_id: int | None = None) -> AsyncIterator[StorageKey]:
        bot = "*" if bot_id is None else str(bot_id)
        async for key in self._scan(f"{_glob(self.prefix)}{{{bot}}}:s:*"):
            yield key

    async def was_processed(self, mark: UpdateMark) -> bool:
        _, processed = await self.load([], mark)
        return processed

    async def keys_under(self, bot_id: int, heads: Mapping[str, str]) -> list[StorageKey]:
        """A SCAN for each head (its key, and keys continuing it after a colon)."""
        from ..keys import is_under

        found: list[StorageKey] = []
        for fragment, head in heads.items():
            start = self.name(StorageKey(bot_id, fragment, head))
            async for key in self._scan(_glob(start) + "*"):
                if key.fragment == fragment and is_under(key.key, head):
                    found.append(key)
        return found

    async def rename_chat(
        self,
        bot_id: int,
        fragments: Sequence[str],
        old_chat_id: int,
        new_chat_id: int,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> list[StorageKey]:
        """Find the chat's keys, lock them (old and new) with ``lock``, then move them.

        The moved keys' locks are given back at once, the update's own (``lock``) at
        its end.
        """
        from ..keys import chat_key, rekey_chat

        old = chat_key(old_chat_id)
        pairs = [
            (key, StorageKey(bot_id, key.fragment, new))
            for key in await self.keys_under(bot_id, dict.fromkeys(fragments, old))
            if (new := rekey_chat(key.key, old_chat_id, new_chat_id)) is not None
        ]
        own = set(lock)
        extra = [key for pair in pairs for key in pair if key not in own]
        await self.load([], None, lock=[*lock, *extra])
        try:
            return await self.rename(pairs)
        finally:
            # The moves are committed: the update keeps only its own keys' locks.
            await self.unlock(extra)

    async def rename(self, pairs: Iterable[tuple[StorageKey, StorageKey]]) -> list[StorageKey]:
        """Move each pair in one commit (created new, deleted old), never overwriting."""
        moved = []
        for old, new in pairs:
            try:
                records = await self.read_many([old, new])
            except StoredDataError as exc:
                # Bad stored data is left alone here too, and the other keys still move.
                logger.error("botsessions: session %s not moved to %s: %s", old, new, exc)
                continue
            record = records[old]
            if record is None or records[new] is not None:
                continue
            try:
                await self.commit([Write(new, record, 0), Delete(old, record.revision)])
            except SessionConflict:
                continue
            moved.append(new)
        return moved

    async def _scan(self, pattern: str) -> AsyncIterator[StorageKey]:
        client = self.client
        cursor: int = 0
        while True:
            try:
                cursor, names = await client.scan(cursor, match=pattern, count=500)
            except (RedisError, OSError) as exc:
                raise StorageError(f"listing sessions in Redis failed: {exc}") from exc
            for name in names:
                key = self._parse(name.decode() if isinstance(name, bytes) else name)
                if key is not None:
                    yield key
            if not cursor:
                return

    async def close_for_loop(self) -> None:
        """Close the client made for the running loop (never one passed as ``client``)."""
        keeper = self._keepers.pop(asyncio.get_running_loop(), None)
        if keeper is not None:
            keeper.cancel()
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            self._scripts.pop(client, None)
            await client.aclose()

    async def aclose(self) -> None:
        """Close the clients this storage made (not one passed as ``client``)."""
        for client in list(self._clients.values()):
            self._scripts.pop(client, None)
            await client.aclose()
        self._clients.clear()


class _LockWait:
    """Pauses between tries at a held lock, growing, within the update's lock-wait budget
    (counted from its first wait): past it, :class:`LockTimeout`."""

    def __init__(self) -> None:
        unit = current_unit()
        budget = unit.remaining() if unit is not None else settings.LOCK_TIMEOUT
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + budget
        self._attempts = 0

    async def pause(self) -> None:
        left = self._deadline - self._loop.time()
        if left <= 0:
            raise LockTimeout.budget_spent(settings.LOCK_TIMEOUT, " in Redis")
        self._attempts += 1
        await asyncio.sleep(min(left, _LOCK_BACKOFF.delay(self._attempts)))


def _lock_lifetime_ms() -> int:
    return max(1, int(settings.LOCK_TIMEOUT * 1000))  # PX 0 is refused


def _may_have_run(failed: StorageError) -> bool:
    """Whether the script behind ``failed`` may have run in Redis all the same.

    A timeout or a broken connection may come after the script was sent; a refused
    connection comes before it, and an error reply says what happened.
    """
    cause = failed.__cause__
    if isinstance(cause, RedisConnectionError | RedisTimeoutError):
        cause = cause.__context__  # redis-py's wrapping of the OSError, if any
        return not isinstance(cause, ConnectionRefusedError)
    return isinstance(cause, OSError) and not isinstance(cause, ConnectionRefusedError)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _glob(text: str) -> str:
    """``text`` matched literally by a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


_DIGITS = re.compile(r"[0-9]+")
_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:E[+-]?[0-9]+)?")


def _decode(key: StorageKey, value: Any) -> StoredSession | None:
    """A stored value as a record; raises :class:`StoredDataError` for one not ours."""
    if value is None:
        return None
    if isinstance(value, list):
        raise StoredDataError(f"session {key} holds no text in Redis: {value[0]!r}")
    try:
        text = value.decode() if isinstance(value, bytes) else value
        revision, version, expiry, data = text.split("|", 3)
        # As the scripts read them (ASCII digits), not as int() would ("-1", " 1", "1_0"):
        # a revision the commit script cannot read would refuse every write of the key.
        if not (
            _DIGITS.fullmatch(revision)
            and (not version or _VERSION.fullmatch(version))
            and (not expiry or _DIGITS.fullmatch(expiry))
        ):
            raise ValueError(f"unreadable revision, version or expiry in {text[:60]!r}")
        return StoredSession(
            data=data,
            version=Decimal(version) if version else None,
            expires_at=datetime.fromtimestamp(int(expiry) / 1000, UTC) if expiry else None,
            revision=int(revision),
        )
    except (UnicodeDecodeError, ValueError, InvalidOperation, OverflowError, OSError) as exc:
        # OverflowError, OSError: an expiry no datetime can hold (a tampered value).
        raise StoredDataError(f"session {key} is not in this storage's format: {exc}") from exc
