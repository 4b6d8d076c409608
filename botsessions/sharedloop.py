"""An event loop run by the threads that wait for it.

A request thread that hands its update to a loop in another thread, then serves the
update's queries and waits for the answer, pays a thread switch at every hand-over:
four or more per update, each costing more than the session's SQL. A
:class:`SharedLoop` has no thread of its own. The thread that needs it runs it: the
update's coroutine, PTB's dispatch and the session's queries all run on the request
thread, on its connection, without a switch.

Threads arriving while the loop is busy hand their coroutine to it and serve their
database jobs from their own thread, as before; when the running thread's update is
done it lets go and one of them carries on. Tasks still pending when no thread needs
the loop any more (a handler's fire-and-forget task) are finished by a helper thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from django.db import connections

from .dbthread import Caller, serving

T = TypeVar("T")

_WAKE = object()  # to a waiting thread: the loop is free, take it if nobody did
_DONE = object()  # to a waiting thread: your coroutine has finished


class SharedLoop:
    """One event loop, run in turn by the threads that have a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._runner: object | None = None  # the Caller (or helper) running the loop
        self._waiting: set[Caller] = set()
        self._helper: threading.Thread | None = None
        self._closed = False

    def run(
        self, coroutine_factory: Callable[[], Coroutine[Any, Any, T]], *, serve_db: bool = True
    ) -> T:
        """Run a coroutine to completion on this loop; return its result or raise its error.

        With ``serve_db`` the coroutine's database jobs (:func:`botsessions.dbthread.run_db`)
        run on this thread; without it they go to the worker pool.
        """
        caller = Caller()
        context = serving(caller if serve_db else None)
        with self._lock:
            if self._closed:
                raise RuntimeError("this loop was closed")
            runs_loop = self._runner is None
            if runs_loop:
                self._runner = caller
            else:
                self._waiting.add(caller)
        if not runs_loop and _in_transaction():
            # A caller with a transaction open must not wait for another thread to
            # finish its coroutine: that thread may be running a query stuck on this
            # transaction's row locks, and the locks only go once this caller is done.
            self._wait_for_the_loop(caller)
            runs_loop = True
        try:
            if runs_loop:
                try:
                    task = self.loop.create_task(coroutine_factory(), context=context)
                    return self.loop.run_until_complete(task)
                finally:
                    self._let_go()
            done: Future[T] = Future()

            def start() -> None:
                try:
                    task = self.loop.create_task(coroutine_factory(), context=context)
                except BaseException as exc:  # the factory failed: tell the waiting thread
                    done.set_exception(exc)
                    caller.inbox.put(_DONE)
                    return
                task.add_done_callback(lambda finished: _settle(done, finished, caller))

            self.loop.call_soon_threadsafe(start)
            try:
                self._wait(caller, done)
            finally:
                with self._lock:
                    self._waiting.discard(caller)
                    if self._runner is None:
                        # Woken to take over after its own coroutine had finished:
                        # pass the loop on (to others, or to the leftover tasks).
                        self._pass_on()
            return done.result()
        finally:
            caller.leave()

    def _wait_for_the_loop(self, caller: Caller) -> None:
        """Wait until no thread runs the loop, then run it (nothing is handed over)."""
        try:
            while True:
                if caller.inbox.get() is not _WAKE:
                    continue
                with self._lock:
                    if self._runner is None:
                        self._runner = caller
                        return
        finally:
            with self._lock:
                self._waiting.discard(caller)

    def _wait(self, caller: Caller, done: Future[Any]) -> None:
        """Serve database jobs until the coroutine is done, running the loop when free."""
        while True:
            item = caller.inbox.get()
            if item is _DONE:
                return
            if item is not _WAKE:
                caller.serve(item)
                continue
            with self._lock:
                if self._runner is not None or caller not in self._waiting:
                    continue
                self._runner = caller
                self._waiting.discard(caller)
            # Jobs queued while another thread ran the loop may still be behind this
            # signal; nothing new can arrive now that this thread runs the loop.
            caller.serve_queued()
            try:
                self.loop.run_until_complete(asyncio.wrap_future(done, loop=self.loop))
            finally:
                self._let_go()
            return

    def _let_go(self) -> None:
        """Stop running the loop; wake the waiting threads, or finish leftover tasks."""
        with self._lock:
            self._runner = None
            self._pass_on()

    def _pass_on(self) -> None:
        # Called with the lock held and no thread running the loop.
        if self._waiting:
            for caller in self._waiting:
                caller.inbox.put(_WAKE)
        elif not self._closed and asyncio.all_tasks(self.loop):
            self._runner = self
            self._helper = threading.Thread(
                target=self._finish_leftovers, name="botsessions-loop", daemon=True
            )
            self._helper.start()

    def _finish_leftovers(self) -> None:
        try:
            while pending := asyncio.all_tasks(self.loop):
                self.loop.run_until_complete(asyncio.wait(pending))
        finally:
            self._let_go()

    def close(self, timeout: float = 5) -> None:
        """Close the loop once no thread runs it; leftover tasks get ``timeout`` seconds."""
        with self._lock:
            self._closed = True
            helper = self._helper
        if helper is not None:
            helper.join(timeout)
        with self._lock:
            if self._runner is not None or self._waiting or self.loop.is_closed():
                return
            self._runner = self
        try:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        finally:
            with self._lock:
                self._runner = None


def _in_transaction() -> bool:
    """Whether this thread has a transaction open on any database it has connected to."""
    return any(c.in_atomic_block for c in connections.all(initialized_only=True))


def _settle(done: Future[T], task: asyncio.Task[T], caller: Caller) -> None:
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        done.set_result(task.result())
    caller.inbox.put(_DONE)


def process_on_caller_thread(
    coroutine_factory: Callable[[], Coroutine[Any, Any, T]], loop: SharedLoop | None = None
) -> T:
    """Run a coroutine to completion with its database work on this thread.

    With ``loop`` the coroutine runs on that shared loop; without it, on a private loop
    this thread runs and closes.
    """
    if loop is not None:
        return loop.run(coroutine_factory)
    private = SharedLoop()
    try:
        return private.run(coroutine_factory)
    finally:
        private.close()
