"""Per-key locks: updates that share a session key run one after another.

Locks are taken for every key an update will use, in one sorted order, before its
sessions are read, and released after they are saved, so two updates can never
interleave a read-modify-write of the same session, and two updates that need the
same pair of keys cannot deadlock. Updates with different keys do not wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from .storage.base import StorageKey


class KeyLocks:
    """A lock per storage key, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[StorageKey, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, keys: Iterable[StorageKey]) -> list[StorageKey]:
        """Take the locks of ``keys`` (sorted, without duplicates); return what was taken."""
        taken: list[StorageKey] = []
        try:
            for key in sorted(set(keys)):
                lock, users = self._locks.get(key, (None, 0))
                if lock is None:
                    lock = asyncio.Lock()
                self._locks[key] = (lock, users + 1)
                taken.append(key)
                await lock.acquire()
        except BaseException:
            # Cancelled while waiting: give back what we hold and what we queued for.
            self._release(taken, held=taken[:-1])
            raise
        return taken

    def release(self, keys: list[StorageKey]) -> None:
        """Release locks taken by :meth:`acquire`."""
        self._release(keys, held=keys)

    def _release(self, keys: list[StorageKey], held: list[StorageKey]) -> None:
        for key in keys:
            lock, users = self._locks[key]
            if key in held:
                lock.release()
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
