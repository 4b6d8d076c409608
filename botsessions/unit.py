"""One update, one unit of work: the transaction its sessions and handlers share.

The path of one update, as the webhook view runs it under WSGI:

1. The request thread decodes the update and calls :meth:`BotRunner.process
   <botsessions.runner.BotRunner.process>`, which opens the update's transaction on
   the thread's connection (:meth:`UnitOfWork.begin`: ``transaction.atomic`` on the
   sessions' database).
2. It hands :func:`run_in_unit` to the bot's event loop, which runs on a thread of its
   own for the life of the process (the PTB application and its HTTP client live
   there), and waits, running whatever synchronous work the update sends back to it:
   asgiref's ``CurrentThreadExecutor``.
3. On the loop, the update runs inside ``ThreadSensitiveContext(executor=...)``: every
   thread-sensitive ``sync_to_async`` call it makes (Django's async ORM, ``acreate``,
   ``aget``, ..., and the session storage) runs on the request thread, on its
   connection, in its transaction. The session engine locks the update's keys in the
   database (:mod:`botsessions.dblocks`) and reads its sessions and exactly-once record;
   PTB runs the handlers; the engine writes what changed and records the update if
   anything was written.
4. Back on the request thread, :meth:`UnitOfWork.end` commits, or rolls back when a
   handler raised, the update was already processed, or stored data was bad. Then the
   sends a handler asked for with ``context.on_commit`` go out, and the view answers.

So the session rows, the exactly-once record and every row the handlers wrote through
the ORM to that database commit together, or none of it does. Bot API calls made by
handlers, other databases and caches are outside the unit.

The async webhook view (ASGI) and long polling (``runbot``) run the same steps with
:func:`process_as_unit`: a database thread of the application's
(:class:`DatabaseThreads`) plays the request thread's part, one per update in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from asgiref.sync import ThreadSensitiveContext
from django.db import close_old_connections, connections, transaction

from . import dblocks
from .conf import settings
from .storage.base import StorageKey

if TYPE_CHECKING:
    from .ptb import SessionApplication

logger = logging.getLogger("botsessions")

AfterCommit = Awaitable[Any] | Callable[[], Awaitable[Any]]

_current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "botsessions_unit", default=None
)

#: How an update may end and still commit what it wrote (see :class:`~botsessions.ptb.Outcome`).
_COMMITTING = frozenset(("committed", "unchanged", "skipped"))
DUPLICATE = "duplicate"


def current_unit() -> UnitOfWork | None:
    """The unit of work of the update being processed, if any."""
    return _current.get()


class UnitOfWork:
    """The transaction of one update, on the database its sessions are stored in.

    Its methods run on the update's database thread (the request thread under WSGI),
    except :meth:`after_commit`, which handlers call on the loop.
    """

    def __init__(self, using: str, *, fresh_connections: bool = False) -> None:
        self.using = using
        #: Whether anything but a read ran in the transaction (session writes included).
        self.wrote = False
        self.locked: list[int] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._fresh_connections = fresh_connections
        self._stack = contextlib.ExitStack()
        self._internal = False
        self._after_commit: list[AfterCommit] = []
        self._waiting_for_commit = False
        self._committed = False
        self._pending_writes: list[Callable[[], bool]] = []
        self.begun = False
        #: Set by :meth:`end` when a pending write found the update already recorded.
        self.duplicate = False

    # -- on the database thread ------------------------------------------------------

    def run(self, job: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a piece of the update's database work, in its transaction.

        The transaction opens with the first of them, so an update that needs none (no
        handler wanted it, or its handlers only talk to the Bot API) costs no statement.
        """
        if not self.begun:
            self.begin()
        return job(*args, **kwargs)

    def begin(self) -> None:
        """Open the transaction and start watching its statements for writes."""
        if self._fresh_connections:
            close_old_connections()  # what Django does around each request
        connection = connections[self.using]
        self._stack.enter_context(transaction.atomic(using=self.using))
        self._stack.enter_context(connection.execute_wrapper(self._watch))
        self.begun = True

    def _watch(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        # Any statement that is not a plain read may have written: the update must then be
        # recorded, so that a redelivery does not write again.
        if not self._internal and sql.lstrip()[:6].upper() != "SELECT":
            self.wrote = True
        return execute(sql, params, many, context)

    @contextlib.contextmanager
    def internal(self) -> Any:
        """Statements of the session machinery itself (locks) that are not writes."""
        self._internal = True
        try:
            yield
        finally:
            self._internal = False

    def lock(self, keys: list[StorageKey]) -> None:
        """Lock session keys in the database until the transaction ends."""
        connection = connections[self.using]
        if not dblocks.needed(connection):
            return  # SQLite in IMMEDIATE mode: the transaction holds the write lock already
        ids = [i for i in dblocks.lock_ids(keys) if i not in self.locked]
        if not ids:
            return
        with self.internal():
            dblocks.acquire(connection, ids, settings.LOCK_TIMEOUT)
        self.locked += ids

    def write_at_end(self, write: Callable[[], bool]) -> None:
        """Run a storage's writes at the end, just before the commit, on this thread.

        The session rows and the exactly-once record are the last statements of the
        update anyway; written by :meth:`end`, they cost no extra trip between the loop
        and this thread. ``write`` returns ``False`` when the update was already recorded.
        """
        self._pending_writes.append(write)

    def end(self, commit: bool) -> bool:
        """Write what is pending, commit (or roll back), and give back the locks.

        Returns whether the sends registered with :meth:`after_commit` are due now; when
        the unit is nested in an outer transaction of the caller's, they go out once
        that one commits instead. Raises when the writes or the commit fail: nothing of
        the update is kept then.
        """
        if not self.begun and not (commit and self._pending_writes):
            # Nothing reached the database: nothing to commit, the sends are due at once.
            if not commit:
                self.discard_after_commit()
            return commit and bool(self._after_commit)
        connection = connections[self.using]
        token = _current.set(self)  # for the pending writes, which look the unit up
        try:
            try:
                if commit and not all(self.run(write) for write in self._pending_writes):
                    self.duplicate = True  # recorded meanwhile by another delivery
                    commit = False
                if commit and self._after_commit:
                    self._waiting_for_commit = True
                    transaction.on_commit(self._on_commit, using=self.using)
                if not commit:
                    transaction.set_rollback(True, using=self.using)
            except BaseException:
                transaction.set_rollback(True, using=self.using)
                raise
            finally:
                self._pending_writes = []
                self._stack.close()
        except BaseException:
            self.discard_after_commit()
            raise
        finally:
            _current.reset(token)
            self._waiting_for_commit = False
            try:
                if self.locked and connection.connection is not None:
                    with self.internal():
                        dblocks.release(connection, self.locked)
            finally:
                if self._fresh_connections:
                    close_old_connections()
        due, self._committed = self._committed, False
        if not commit or (not due and not connection.in_atomic_block):
            self.discard_after_commit()  # rolled back: nothing may be sent
        return due

    def _on_commit(self) -> None:
        if self._waiting_for_commit:
            self._committed = True  # process_as_unit sends them on the loop
            return
        # An outer transaction of the caller's committed later, on its own thread.
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.send_after_commit(), self.loop).result()

    # -- on the loop -------------------------------------------------------------

    def after_commit(self, send: AfterCommit) -> None:
        """Run ``send`` (an awaitable, or a function returning one) once the update commits."""
        self._after_commit.append(send)

    async def send_after_commit(self) -> None:
        """Run the registered sends in order; a failure is logged and the rest still run."""
        pending, self._after_commit = self._after_commit, []
        for send in pending:
            try:
                await (send() if callable(send) else send)
            except Exception:
                logger.exception("botsessions: a send after commit failed (not retried)")

    def discard_after_commit(self) -> None:
        for send in self._after_commit:
            if inspect.iscoroutine(send):
                send.close()  # never awaited, on purpose
        self._after_commit = []


class UnitExecutor(Executor):
    """The executor of an update's database work: ``inner``'s thread, inside ``unit``.

    Every call the update sends to its database thread (the storage's, and each
    thread-sensitive ``sync_to_async`` of its handlers) goes through
    :meth:`UnitOfWork.run`, so the first one opens the transaction.
    """

    def __init__(self, inner: Executor, unit: UnitOfWork) -> None:
        self._inner = inner
        self._unit = unit

    def submit(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        return self._inner.submit(self._unit.run, fn, *args, **kwargs)


def commits(outcome: str) -> bool:
    """Whether an update that ended with ``outcome`` keeps what it wrote."""
    return outcome in _COMMITTING


async def run_in_unit(
    application: SessionApplication, update: object, unit: UnitOfWork, executor: Executor
) -> str:
    """Run the update's handlers with sessions inside ``unit``, already begun.

    ``executor`` runs the update's database work: one call at a time, on the thread that
    began ``unit`` (its connection holds the transaction), which nothing else uses
    meanwhile. Returns the :class:`~botsessions.ptb.Outcome`; raises
    :class:`~botsessions.errors.StorageError` when the update must be delivered again.
    """
    unit.loop = asyncio.get_running_loop()
    token = _current.set(unit)
    try:
        async with ThreadSensitiveContext(executor=UnitExecutor(executor, unit)):
            return await application.process_update_with_sessions(update)
    finally:
        _current.reset(token)


async def process_as_unit(
    application: SessionApplication,
    update: object,
    executor: Executor,
    *,
    fresh_connections: bool = False,
) -> str:
    """Process ``update`` as one unit of work on ``executor``'s thread, from the loop.

    Begins and ends the transaction there, around :func:`run_in_unit`, then sends what
    handlers asked to send after the commit. Nothing is committed when this raises.
    """
    unit = UnitOfWork(application.unit_database, fresh_connections=fresh_connections)
    loop = asyncio.get_running_loop()
    try:
        outcome = await run_in_unit(application, update, unit, executor)
    except BaseException:
        await loop.run_in_executor(executor, unit.end, False)
        raise
    if await loop.run_in_executor(executor, unit.end, commits(outcome)):
        await unit.send_after_commit()
    return DUPLICATE if unit.duplicate else outcome


class DatabaseThreads:
    """Threads for updates that no waiting thread brings (long polling, a direct call).

    Each update in flight takes one thread, with its own database connection, for its
    whole unit of work, and gives it back after; there are as many as the application
    processes updates at once.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._free: asyncio.LifoQueue[ThreadPoolExecutor] | None = None

    @contextlib.asynccontextmanager
    async def thread(self) -> AsyncIterator[ThreadPoolExecutor]:
        """Borrow a thread for one update."""
        if self._free is None:
            self._free = asyncio.LifoQueue()  # the warmest thread (and connection) first
            for index in range(self._size):
                self._free.put_nowait(
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"botsessions-db{index}")
                )
        executor = await self._free.get()
        try:
            yield executor
        finally:
            self._free.put_nowait(executor)

    def shutdown(self) -> None:
        """Stop the threads (their connections close with them)."""
        if self._free is None:
            return
        while not self._free.empty():
            executor = self._free.get_nowait()
            executor.submit(connections.close_all)
            executor.shutdown(wait=True)
        self._free = None
