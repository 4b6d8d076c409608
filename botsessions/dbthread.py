"""Where an update's database work runs.

Django's database connections belong to threads, and the ORM must not be called from
an event loop. A synchronous caller (the webhook view, a test) that waits for an update
lends its own thread to the update's database work, so every query of that update runs
on the caller's connection and inside whatever transaction or test case the caller has
open:

- when the caller's thread is itself running the loop (see :mod:`botsessions.sharedloop`),
  the job runs right there, with no thread switch;
- when another thread runs the loop, the job is queued to the waiting caller, which runs
  it and hands the result back.

Without a waiting caller (long polling), jobs run on a small pool of worker threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import connections

T = TypeVar("T")

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "botsessions_caller_thread", default=None
)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class Caller:
    """A thread waiting for an update: its identity and the queue of work sent to it."""

    __slots__ = ("gone", "inbox", "lock", "thread")

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        # Set once the caller stops waiting; jobs of tasks that outlived its update
        # (fire-and-forget) then go to the worker pool instead.
        self.gone = False
        self.lock = threading.Lock()
        # Database jobs (a callable and the future of its result), or the loop's signals.
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def send(self, item: Any) -> bool:
        """Queue a job to this thread; ``False`` when it no longer waits for any."""
        with self.lock:
            if self.gone:
                return False
            self.inbox.put(item)
            return True

    def leave(self) -> None:
        """Stop taking jobs, and run those that were queued before."""
        with self.lock:
            self.gone = True
        self.serve_queued()

    def serve_queued(self) -> None:
        """Run the jobs already queued, dropping the loop's signals; don't wait for more."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                self.serve(item)

    def serve(self, item: Any) -> None:
        """Run a database job that was queued to this thread."""
        job, future = item
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(job())
        except BaseException as exc:  # handed to the coroutine awaiting the job
            future.set_exception(exc)


def serving(caller: Caller | None) -> contextvars.Context:
    """A copy of the current context in which ``caller`` serves the database jobs."""
    context = contextvars.copy_context()
    context.run(_caller.set, caller)
    return context


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


def _run_inline(job: Callable[[], T]) -> T:
    """Run ``job`` on this thread, which is running the event loop for its own caller.

    Django refuses database calls while a loop is running in the thread, to protect
    loops that serve many unrelated tasks. This loop is the caller's, lent to its update,
    and blocking it for the query is exactly what the caller waits for anyway; the loop
    is hidden from the check only for the duration of the (synchronous) job.
    """
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        return job()
    finally:
        asyncio.events._set_running_loop(loop)


async def run_db(job: Callable[[], T]) -> T:
    """Run a blocking database function for the current update and await its result."""
    caller = _caller.get()
    if caller is not None and not caller.gone:
        if caller.thread == threading.get_ident():
            return _run_inline(job)
        future: Future[T] = Future()
        if caller.send((job, future)):
            return await asyncio.wrap_future(future)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_worker_pool(), _run_pooled, job)
