"""Per-key locks: updates that share a session key run one after another.

Locks are taken for every key an update will use, in one sorted order, before its
sessions are read, and released after they are saved, so two updates can never
interleave a read-modify-write of the same session, and two updates that need the
same pair of keys cannot deadlock. Updates with different keys do not wait.

A key is held while it is in a dict; a future is queued only when an update has to
wait, and a release hands the key straight to the first waiter (first come, first
served). Without contention, taking and releasing a key is one dict operation each.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from .storage.base import StorageKey


class KeyLocks:
    """The keys currently held, each with the updates waiting for it (if any)."""

    def __init__(self) -> None:
        # key → None while held and nobody waits, else the queue of waiters' futures.
        self._held: dict[StorageKey, deque[asyncio.Future[None]] | None] = {}

    def take_free(self, ordered: Sequence[StorageKey]) -> int:
        """Take keys of ``ordered`` (sorted, no duplicates) up to the first held one.

        Returns how many were taken; when that is not all of them, the rest must be
        awaited with :meth:`acquire_rest` (or the taken ones released).
        """
        held = self._held
        count = 0
        for key in ordered:
            size = len(held)
            held.setdefault(key, None)
            if len(held) == size:  # someone holds it
                break
            count += 1
        return count

    async def acquire_rest(self, ordered: Sequence[StorageKey], taken: int) -> list[StorageKey]:
        """Wait for the keys of ``ordered`` after the first ``taken`` ones, in order."""
        held = self._held
        for index in range(taken, len(ordered)):
            key = ordered[index]
            size = len(held)
            waiters = held.setdefault(key, None)
            if len(held) == size:
                try:
                    await self._wait(key, waiters)
                except BaseException:
                    # Cancelled while waiting: give back what we hold.
                    self.release(list(ordered[:index]))
                    raise
        return list(ordered)

    async def _wait(self, key: StorageKey, waiters: deque[asyncio.Future[None]] | None) -> None:
        """Queue for a held key until its holder hands it over."""
        if waiters is None:
            waiters = self._held[key] = deque()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The key was handed over just before the cancellation: pass it on.
                self.release([key])
            elif future in waiters:  # a release may have skipped it already
                waiters.remove(future)
                if not waiters and self._held.get(key) is waiters:
                    self._held[key] = None
            raise

    def release(self, keys: list[StorageKey]) -> None:
        """Release keys taken by :meth:`take_free` and :meth:`acquire_rest`."""
        held = self._held
        for key in keys:
            waiters = held.pop(key)
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    # Hand the key over: it stays held, now by the waiter.
                    held[key] = waiters or None
                    future.set_result(None)
                    break

    def __len__(self) -> int:
        return len(self._held)
