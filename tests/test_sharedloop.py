"""The shared loop: run by the thread that needs it, handed on when that thread is done."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from django.db import connection

from botsessions.dbthread import run_db
from botsessions.sharedloop import SharedLoop, process_on_caller_thread


@pytest.fixture
def shared() -> Any:
    loop = SharedLoop()
    yield loop
    loop.close()


def in_threads(*targets: Any) -> list[Any]:
    """Run each target in its own thread; their results (or exceptions), in order."""
    results: list[Any] = [None] * len(targets)

    def call(index: int, target: Any) -> None:
        try:
            results[index] = target()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a thread never got its coroutine back"
    return results


def test_the_caller_runs_the_loop_and_its_database_jobs(shared, db):
    me = threading.get_ident()

    async def work() -> tuple[int, int, int]:
        on_loop = threading.get_ident()
        # A query from inside the loop: Django's async guard must not trip, and the
        # query runs on this thread's connection (inside the test's transaction).
        return on_loop, *await run_db(select_seven)

    assert shared.run(work) == (me, me, 7)
    # The guard still protects the loop outside the job.
    with pytest.raises(Exception, match="async context"):
        shared.run(_query_without_run_db)


def select_seven() -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 7")
        return threading.get_ident(), cursor.fetchone()[0]


async def _query_without_run_db() -> None:
    connection.cursor()


def test_errors_reach_the_caller_and_the_loop_stays_usable(shared):
    async def fail() -> None:
        raise KeyError("boom")

    async def fine() -> str:
        return "ok"

    with pytest.raises(KeyError, match="boom"):
        shared.run(fail)
    assert shared.run(fine) == "ok"


def test_a_second_thread_hands_its_coroutine_over_and_serves_its_own_jobs(shared):
    """While one thread runs the loop, another's coroutine runs on it concurrently."""
    arrived = {"a": threading.Event(), "b": threading.Event()}
    seen: dict[str, Any] = {}

    def update(me: str, other: str) -> Any:
        caller = threading.get_ident()
        return shared.run(lambda: handler(me, other, caller))

    async def handler(me: str, other: str, caller: int) -> str:
        arrived[me].set()
        # Each waits for the other, on the one loop: both must be in flight at once.
        while not arrived[other].is_set():
            await asyncio.sleep(0.001)
        job_thread = await run_db(threading.get_ident)
        seen[me] = (caller, job_thread)
        return me

    results = in_threads(lambda: update("a", "b"), lambda: update("b", "a"))
    assert results == ["a", "b"]
    for me in ("a", "b"):
        caller, job_thread = seen[me]
        assert job_thread == caller, "a database job ran on a thread other than its caller's"


def test_the_loop_is_handed_on_when_its_runner_finishes_first(shared):
    """The first thread's coroutine ends while the second's still needs the loop."""
    first_running = threading.Event()
    release_second = threading.Event()

    async def short() -> str:
        first_running.set()
        await asyncio.sleep(0.05)  # the second thread arrives meanwhile
        return "short"

    async def long() -> str:
        while not release_second.is_set():
            await asyncio.sleep(0.001)
        return "long"

    def second() -> str:
        first_running.wait(5)
        return shared.run(long)

    def first() -> str:
        result = shared.run(short)
        time.sleep(0.05)  # the first thread is gone: only the second can run the loop
        release_second.set()
        return result

    assert in_threads(first, second) == ["short", "long"]


def test_leftover_tasks_finish_without_another_caller(shared):
    finished = threading.Event()

    async def fire_and_forget() -> None:
        await asyncio.sleep(0.02)
        finished.set()

    async def handler() -> str:
        asyncio.get_running_loop().create_task(fire_and_forget())
        return "answered"

    assert shared.run(handler) == "answered"
    assert not finished.is_set()
    assert finished.wait(5), "a task left on the loop was never run"


def test_many_threads_at_once(shared):
    async def step(n: int) -> int:
        for _ in range(5):
            await asyncio.sleep(0)
        return await run_db(lambda: n * 2)

    # Many rounds: hand-overs race in many orders (a job queued just before the loop was
    # handed to its caller once went unserved).
    for _ in range(30):
        results = in_threads(*(lambda n=n: shared.run(lambda: step(n)) for n in range(16)))
        assert results == [n * 2 for n in range(16)]


def test_closed_loop_refuses_work(shared):
    async def nothing() -> None:
        return None

    shared.close()
    with pytest.raises(RuntimeError, match="closed"):
        shared.run(nothing)


def test_private_loop_for_one_call():
    async def value() -> int:
        return 42

    assert process_on_caller_thread(value) == 42


@pytest.mark.django_db(transaction=True)
def test_a_caller_inside_a_transaction_runs_the_loop_itself(shared):
    """Never handed over: the thread running the loop might be stuck on its row locks."""
    from django.db import transaction

    holder_running = threading.Event()
    release = threading.Event()
    ran_on: dict[str, int] = {}

    async def hold() -> None:
        holder_running.set()
        while not release.is_set():
            await asyncio.sleep(0.001)

    async def record() -> None:
        ran_on["atomic"] = threading.get_ident()

    def in_transaction() -> int:
        holder_running.wait(5)
        with transaction.atomic():
            me = threading.get_ident()
            timer = threading.Timer(0.1, release.set)  # the holder lets go later
            timer.start()
            shared.run(record)
            timer.join()
            return me

    results = in_threads(lambda: shared.run(hold), in_transaction)
    assert ran_on["atomic"] == results[1], "its coroutine ran on another thread's loop"
    assert release.is_set(), "it did not wait for the loop to be free"


def test_a_failing_factory_reaches_a_waiting_thread(shared):
    holder_running = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        holder_running.set()
        while not release.is_set():
            await asyncio.sleep(0.001)

    def broken_factory() -> Any:
        raise LookupError("no coroutine for you")

    def waiter() -> Any:
        holder_running.wait(5)
        threading.Timer(0.2, release.set).start()
        return shared.run(broken_factory)

    results = in_threads(lambda: shared.run(hold), waiter)
    assert isinstance(results[1], LookupError)


def test_a_task_outliving_its_update_queries_on_the_pool(shared, monkeypatch):
    """Its caller no longer waits for jobs: they must not be queued to it and lost."""
    from botsessions import dbthread

    pooled: list[int] = []
    monkeypatch.setattr(dbthread, "_run_pooled", lambda job: pooled.append(1) or job())
    finished = threading.Event()

    async def later() -> None:
        await asyncio.sleep(0.02)
        assert await run_db(lambda: 5) == 5
        finished.set()

    async def handler() -> None:
        asyncio.get_running_loop().create_task(later())

    shared.run(handler)
    assert finished.wait(5)
    assert pooled == [1]
