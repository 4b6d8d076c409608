"""Per-key locks: waiting in turn, cancellation that never strands a key, and the
database's locks sharing one wait budget."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections, transaction

from botsessions import dblocks
from botsessions.dblocks import lock_ids
from botsessions.errors import LockTimeout
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


# -- the database's locks: one budget for all of an update's ids -------------------------

BUDGET = 2.0  # seconds for all eight locks together
SHORT_HOLD = 0.8  # over the budget's eighth (0.25 s), well under the budget


@pytest.fixture
def database() -> Any:
    """The test database's connection, where another connection's locks make it wait."""
    db = connections["default"]
    if db.vendor not in ("postgresql", "mysql"):
        pytest.skip("lock waits between connections: PostgreSQL and MariaDB only")
    return db


def eight_ids() -> list[int]:
    """Eight lock ids of this test's own (MariaDB's lock names are shared server-wide)."""
    run = uuid.uuid4().hex
    return lock_ids([StorageKey(1, "chat", f"chat:{run}:{n}") for n in range(8)])


@contextlib.contextmanager
def held_elsewhere(ident: int, seconds: float) -> Iterator[None]:
    """Another connection holds lock ``ident`` for ``seconds`` (or until the block ends)."""
    taken, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold() -> None:
        db = connections["default"]  # this thread's own connection
        try:
            with transaction.atomic():
                dblocks.acquire(db, [ident], 5)
                taken.set()
                done.wait(seconds)
            dblocks.release(db, [ident])
        except BaseException as exc:
            failures.append(exc)
        finally:
            taken.set()
            db.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    try:
        assert not failures
        yield
    finally:
        done.set()
        thread.join(10)
    assert not failures


def free_elsewhere(ids: list[int]) -> bool:
    """Whether another connection can take all of ``ids`` at once."""
    outcome: list[bool] = []

    def take() -> None:
        db = connections["default"]
        try:
            with transaction.atomic():
                dblocks.acquire(db, ids, 0.5)
            dblocks.release(db, ids)
            outcome.append(True)
        except LockTimeout:
            outcome.append(False)
        finally:
            db.close()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    return outcome == [True]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("position", [0, -1], ids=["first", "last"])
def test_one_lock_may_wait_for_most_of_the_budget(database: Any, position: int) -> None:
    """A lock held a while by another update is waited for with what is left of the
    budget, not with an eighth of it; the handlers' waits then get the whole budget."""
    ids = eight_ids()
    with held_elsewhere(ids[position], SHORT_HOLD):
        started = time.monotonic()
        with transaction.atomic():
            dblocks.acquire(database, ids, BUDGET)
            waited = time.monotonic() - started
            with database.cursor() as cursor:
                if database.vendor == "postgresql":
                    cursor.execute("SHOW lock_timeout")
                    assert cursor.fetchone()[0] == f"{BUDGET:g}s"
                else:
                    cursor.execute("SELECT @@SESSION.innodb_lock_wait_timeout")
                    assert cursor.fetchone()[0] == BUDGET
        dblocks.release(database, ids)
    assert SHORT_HOLD / 4 < waited < BUDGET  # it did wait, and in time


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("position", [0, -1], ids=["first", "last"])
def test_a_lock_held_past_the_budget_times_out_at_the_budget(database: Any, position: int) -> None:
    """All eight locks share the budget: the update gives up when it is spent, not
    sooner, not much later, and keeps none of the locks it was granted."""
    ids = eight_ids()
    with held_elsewhere(ids[position], 30):
        started = time.monotonic()
        with pytest.raises(LockTimeout), transaction.atomic():
            dblocks.acquire(database, ids, BUDGET)
        waited = time.monotonic() - started
        others = [i for i in ids if i != ids[position]]
        assert free_elsewhere(others)
    assert BUDGET * 0.8 < waited < BUDGET + 1.5
    assert free_elsewhere(ids)
