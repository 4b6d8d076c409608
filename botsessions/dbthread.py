"""Where an update's database work runs.

Django's database connections belong to threads, and the ORM must not be called from
an event loop. While a synchronous caller (the webhook view, a test) waits for an
update to be processed, its own thread is idle: :func:`process_on_caller_thread` lends
it to the update, so every query of that update runs on the caller's connection and
inside whatever transaction or test case the caller has open. Without a waiting
caller (long polling), queries run on a small pool of worker threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import connections

T = TypeVar("T")

_caller: contextvars.ContextVar[_CallerThread | None] = contextvars.ContextVar(
    "botsessions_caller_thread", default=None
)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class _CallerThread:
    """A queue of database jobs that the waiting caller's thread runs."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )


def _fresh_connections() -> None:
    """Replace a pool thread's connection once it has failed.

    Pool threads are not requests: ``CONN_MAX_AGE`` would make them reconnect for every
    query, so they keep their connection and only drop it after an error left it unusable.
    A waiting caller is a request (or a test), and Django already looks after its own.
    """
    for connection in connections.all(initialized_only=True):
        if (
            connection.connection is not None
            and not connection.in_atomic_block
            and connection.errors_occurred
        ):
            connection.errors_occurred = False
            if not connection.is_usable():
                connection.close()


def _run_pooled(job: Callable[[], T]) -> T:
    _fresh_connections()
    return job()


def _worker_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="botsessions-db")
        return _pool


async def run_db(job: Callable[[], T]) -> T:
    """Run a blocking database function for the current update and await its result."""
    caller = _caller.get()
    if caller is None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_worker_pool(), _run_pooled, job)
    future: Future[T] = Future()
    caller.jobs.put((job, future))
    return await asyncio.wrap_future(future)


def process_on_caller_thread(
    coroutine_factory: Callable[[], Coroutine[Any, Any, T]],
    loop: asyncio.AbstractEventLoop | None = None,
) -> T:
    """Run a coroutine to completion while this thread serves its database work.

    With ``loop`` (a loop running in another thread) the coroutine runs there; without
    it, a private loop runs in a helper thread. Either way this thread only runs the
    database jobs the coroutine sends back, then returns its result or raises its error.
    """
    caller = _CallerThread()
    done: Future[T] = Future()

    async def wrapped() -> T:
        try:
            return await coroutine_factory()
        finally:
            caller.jobs.put(None)

    def start() -> Awaitable[T]:
        context = contextvars.copy_context()
        context.run(_caller.set, caller)
        return context.run(asyncio.ensure_future, wrapped())

    if loop is not None:

        def schedule() -> None:
            task = start()
            task.add_done_callback(lambda t: _settle(done, t))  # type: ignore[arg-type]

        loop.call_soon_threadsafe(schedule)
    else:

        def run_private_loop() -> None:
            async def main() -> T:
                return await start()

            try:
                done.set_result(asyncio.run(main()))
            except BaseException as exc:  # handed to the waiting caller
                done.set_exception(exc)

        threading.Thread(target=run_private_loop, name="botsessions-loop", daemon=True).start()

    while True:
        item = caller.jobs.get()
        if item is None:
            break
        job, future = item
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(job())
        except BaseException as exc:
            future.set_exception(exc)
    return done.result()


def _settle(done: Future[T], task: asyncio.Future[T]) -> None:
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        done.set_result(task.result())
