"""Per-key locks: waiting in turn, and cancellation that never strands a key."""

from __future__ import annotations

import asyncio

from botsessions.locks import KeyLocks
from botsessions.storage.base import StorageKey

A = StorageKey(1, "chat", "chat:1")
B = StorageKey(1, "user", "user:1")


async def take(locks: KeyLocks, keys: list[StorageKey]) -> list[StorageKey]:
    ordered = sorted(set(keys))
    return await locks.acquire_rest(ordered, locks.take_free(ordered))


def test_waiters_get_a_key_in_the_order_they_came():
    async def scenario() -> list[str]:
        locks = KeyLocks()
        order: list[str] = []
        await take(locks, [A])

        async def waiter(name: str) -> None:
            await take(locks, [A, B])
            order.append(name)
            await asyncio.sleep(0)
            locks.release([A, B])

        tasks = [asyncio.ensure_future(waiter(n)) for n in ("first", "second", "third")]
        await asyncio.sleep(0.01)
        assert order == []  # all wait for A
        locks.release([A])
        await asyncio.gather(*tasks)
        assert len(locks) == 0
        return order

    assert asyncio.run(scenario()) == ["first", "second", "third"]


def test_a_cancelled_waiter_leaves_nothing_held():
    async def scenario() -> None:
        locks = KeyLocks()
        await take(locks, [B])
        waiting = asyncio.ensure_future(take(locks, [A, B]))  # gets A, waits for B
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert await asyncio.wait_for(take(locks, [A]), 1) == [A]  # A was given back
        locks.release([A, B])
        assert len(locks) == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_just_after_the_hand_over_passes_the_key_on():
    async def scenario() -> None:
        locks = KeyLocks()
        await take(locks, [A])
        first = asyncio.ensure_future(take(locks, [A]))
        second = asyncio.ensure_future(take(locks, [A]))
        await asyncio.sleep(0.01)
        locks.release([A])  # A is handed to the first waiter...
        first.cancel()  # ...which is cancelled before it could run
        await asyncio.gather(first, return_exceptions=True)
        assert await asyncio.wait_for(second, 1) == [A]
        locks.release([A])
        assert len(locks) == 0

    asyncio.run(scenario())
