"""One update, one unit of work: the transaction its sessions and handlers share.

The path of one update, as the webhook view runs it under WSGI:

1. The request thread decodes the update and calls :meth:`BotRunner.process
   <botsessions.runner.BotRunner.process>`. It hands :func:`run_in_unit` to the bot's
   event loop, which runs on a thread of its own for the life of the process (the PTB
   application and its HTTP client live there), and waits, running whatever
   synchronous work the update sends back to it: asgiref's ``CurrentThreadExecutor``.
2. On the loop, the update runs inside ``ThreadSensitiveContext(executor=...)``: every
   thread-sensitive ``sync_to_async`` call it makes (Django's async ORM, ``acreate``,
   ``aget``, ..., and the session storage) runs on the request thread, on its
   connection. The first of them opens the transaction (:meth:`UnitOfWork.run`), so an
   update that needs no database work costs no statement.
3. The session engine locks the update's keys in the database (:mod:`botsessions.dblocks`)
   and reads its sessions and exactly-once record; PTB runs the handlers; the engine
   works out what changed and leaves the writes to the unit.
4. Back on the request thread, :meth:`UnitOfWork.end` writes the sessions and the
   record, and commits; or rolls back when a handler raised, the update was already
   processed, or stored data was bad. Then the sends a handler asked for with
   ``context.on_commit`` go out, and the view answers.

So the session rows, the exactly-once record and every row the handlers wrote through
the ORM to that database commit together, or none of it does. Bot API calls made by
handlers, other databases and caches are outside the unit (a write to another database
is watched for all the same: the update is then recorded, and the write logged).

The async webhook view (ASGI) and long polling (``runbot``) run the same steps with
:func:`process_as_unit`: a database thread of the application's
(:class:`DatabaseThreads`), borrowed at the update's first database work, plays the
request thread's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import ThreadSensitiveContext
from django.core.exceptions import ImproperlyConfigured
from django.db import Error, close_old_connections, connections, transaction

from . import dblocks
from .conf import settings
from .database_errors import ends_the_transaction
from .errors import StorageError
from .outcome import Outcome
from .storage.base import StorageKey

if TYPE_CHECKING:
    from .ptb import SessionApplication

logger = logging.getLogger("botsessions")

AfterCommit = Awaitable[Any] | Callable[[], Awaitable[Any]]
#: Called on the bot's loop once the update's transaction has ended: with ``True`` when
#: it committed, ``False`` when it rolled back (see :meth:`UnitOfWork.when_ended`).
WhenEnded = Callable[[bool], Awaitable[None]]

_current: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar(
    "botsessions_unit", default=None
)


#: The other databases a handler was seen writing to (logged once per process).
_warned_elsewhere: set[str] = set()
#: First words of statements that write no data: reads, and what Django sends for a
#: transaction or a savepoint.
_NOT_WRITES = frozenset(
    ("SELECT", "SHOW", "EXPLAIN", "SET", "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT",
     "RELEASE")
)  # fmt: skip
#: The forms of those that do write: MariaDB's ``SET STATEMENT ... FOR`` a statement and
#: ``BEGIN NOT ATOMIC`` block, and ``EXPLAIN ANALYZE``, which runs the statement.
_WRITING_FORMS = re.compile(
    r"(?:SET\s+STATEMENT|BEGIN\s+NOT|EXPLAIN\b.*\bANALY[SZ]E)\b", re.I | re.S
)


def may_write(sql: str) -> bool:
    """Whether a statement may write data: anything but a read (a compound one in
    parentheses included), or a transaction's or savepoint's own statement.

    A read that writes all the same goes unseen: a ``SELECT`` of a function that writes
    (or ``SELECT ... INTO`` a new table), and a procedure run with ``callproc``, which
    Django runs past its cursor's wrappers.
    """
    text = sql.lstrip(" \t\r\n\f\v(")
    # The first word is all it takes, and none of those that write nothing is longer
    # than 9 letters: no need to split a long statement.
    words = text[:10].split(None, 1)
    if not words or words[0].upper() not in _NOT_WRITES:
        return True
    return _WRITING_FORMS.match(text) is not None


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
        #: When the update's lock waits must be over (one budget for all of them).
        self.deadline = time.monotonic() + settings.LOCK_TIMEOUT
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
        self._when_ended: list[WhenEnded] = []
        self.begun = False
        #: The error with which the transaction ended on the server, unknown to Django.
        self.rolled_back_by: Error | None = None
        self._began_on: object = None  # the driver's connection the transaction began on
        #: Whether :meth:`end` left sends registered with :meth:`after_commit` to send now.
        self.sends_due = False
        #: True while those sends run.
        self.sending = False

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
        self._began_on = connection.connection
        self._stack.enter_context(connection.execute_wrapper(self._watch))
        for alias in connections:
            if alias != self.using:
                try:
                    other = connections[alias]
                except ImproperlyConfigured:
                    continue  # its driver is not installed here: nothing can write to it
                self._stack.enter_context(other.execute_wrapper(self._elsewhere))
        self.begun = True

    def _watch(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        # Any statement that may have written: the update must then be recorded, so that a
        # redelivery does not write again.
        if not self._internal and may_write(sql):
            self.wrote = True
        try:
            return execute(sql, params, many, context)
        except Error as exc:
            if self.rolled_back_by is None and ends_the_transaction(
                sql, context["connection"].vendor, exc
            ):
                self.rolled_back_by = exc
            raise

    def _elsewhere(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        # A write to another database commits on its own, outside the unit: the update is
        # recorded all the same, so a redelivery does not write it twice, and the first
        # such write of each database is logged, as it stands even if the update fails.
        if may_write(sql):
            self.wrote = True
            alias = context["connection"].alias
            if alias not in _warned_elsewhere:
                _warned_elsewhere.add(alias)
                logger.warning(
                    "botsessions: a handler wrote to database %r, outside the update's unit "
                    "of work (database %r): those writes are kept even when the update "
                    "rolls back",
                    alias,
                    self.using,
                )
        return execute(sql, params, many, context)

    @contextlib.contextmanager
    def internal(self) -> Any:
        """Statements of the session machinery itself (locks) that are not writes."""
        self._internal = True
        try:
            yield
        finally:
            self._internal = False

    @property
    def needs_record(self) -> bool:
        """Whether the update must be recorded even if no session changed.

        It must when its handlers wrote anything, and when they asked for sends after
        the commit: a redelivery must neither write nor send again.
        """
        return self.wrote or bool(self._after_commit)

    @property
    def has_pending_writes(self) -> bool:
        return bool(self._pending_writes or self._when_ended)

    def remaining(self) -> float:
        """Seconds left of the update's lock-wait budget (``BOTSESSIONS_LOCK_TIMEOUT``)."""
        return max(0.001, self.deadline - time.monotonic())

    def lock(self, keys: list[StorageKey]) -> None:
        """Lock session keys in the database until the transaction ends."""
        connection = connections[self.using]
        if not dblocks.needed(connection):
            return  # SQLite in IMMEDIATE mode: the transaction holds the write lock already
        ids = [i for i in dblocks.lock_ids(keys) if i not in self.locked]
        if not ids:
            return
        with self.internal():
            dblocks.acquire(connection, ids, self.remaining())
        self.locked += ids

    def keep_so_far(self) -> None:
        """Keep what the transaction did so far even if the update is rolled back.

        For a chat migration's moves: they are the sessions' own bookkeeping, not the
        handlers' work, and an update whose handler fails is not delivered again, so
        rolling them back would leave the group's sessions behind for good. The rest of
        the update runs in a nested ``atomic`` block: rolling the update back rolls
        back that block (its ``on_commit`` callbacks with it, and Django's "needs
        rollback" state), and the moves commit alone. Only a transaction that ends without
        committing loses them; :meth:`end` then refuses the update, for a redelivery.
        """
        with self.internal():
            self._stack.enter_context(transaction.atomic(using=self.using))

    def write_at_end(self, write: Callable[[], bool]) -> None:
        """Run a storage's writes at the end, just before the commit, on this thread.

        The session rows and the exactly-once record are the last statements of the
        update anyway; written by :meth:`end`, they cost no extra trip between the loop
        and this thread. ``write`` returns ``False`` when the update was already recorded.
        """
        self._pending_writes.append(write)

    def when_ended(self, hook: WhenEnded) -> None:
        """Call ``hook`` on the loop once the transaction has ended, committed or not.

        For storages outside the transaction (Redis) whose writes must follow the
        database's: the engine commits them only after the COMMIT, and gives back their
        locks either way. :meth:`end` calls the hooks before the sends after commit.
        """
        self._when_ended.append(hook)

    def _run_when_ended(self, committed: bool) -> None:
        hooks, self._when_ended = self._when_ended, []
        if not hooks:
            return

        async def run_all() -> None:
            for hook in hooks:
                try:
                    await hook(committed)
                except Exception:
                    logger.exception("botsessions: finishing a storage after the commit failed")

        # end() runs on the update's database thread, never on the loop (hooks count as
        # pending writes for UnitExecutor.end), so the loop is free to run them.
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(run_all(), self.loop).result()

    def end(self, outcome: str | None) -> str:
        """Write what is pending, commit or roll back, and give back the locks.

        ``outcome`` is how the handlers ended (``None``: with an exception); the returned
        one is how the update ended. :attr:`sends_due` then says whether the sends
        registered with :meth:`after_commit` go out now; in an outer transaction of the
        caller's, they go out once that one commits instead. Raises when the writes or
        the commit fail: nothing of the update is kept then.
        """
        commit = outcome is not None and outcome in Outcome.COMMITTING
        if not self.begun and not (commit and self._pending_writes):
            # Nothing reached the database: nothing to commit, the sends are due at once.
            self.sends_due = commit and bool(self._after_commit)
            if not commit:
                self.discard_after_commit()
            self._run_when_ended(commit)
            return outcome or Outcome.HANDLER_FAILED
        connection = connections[self.using]
        token = _current.set(self)  # for the pending writes, which look the unit up
        committed = False
        try:
            try:
                if outcome is not None and (
                    self.rolled_back_by is not None or _lost(connection, self._began_on)
                ):
                    # Whatever the handler made of the error, nothing before it is left (a
                    # chat migration's moves included): only a redelivery can do it all,
                    # whatever the outcome (a failed handler's too: the moves). Ending with
                    # an exception, the update is not kept either way, and that is raised.
                    raise _refused_for(self.rolled_back_by or "its connection was lost")
                if commit and _spoiled(connection, self.using):
                    logger.error(
                        "botsessions: a handler caught a database error outside a savepoint "
                        "(transaction.atomic); the update is rolled back"
                    )
                    outcome, commit = Outcome.HANDLER_FAILED, False
                if commit and not all(self.run(write) for write in self._pending_writes):
                    # Recorded meanwhile by another delivery of the same update.
                    outcome, commit = Outcome.DUPLICATE, False
                if commit and self._after_commit:
                    self._waiting_for_commit = True
                    transaction.on_commit(self._on_commit, using=self.using)
                if not commit:
                    # The innermost block: the whole update, or what followed keep_so_far.
                    transaction.set_rollback(True, using=self.using)
            except BaseException:
                transaction.set_rollback(True, using=self.using)
                raise
            finally:
                self._pending_writes = []
                self._stack.close()
            # Committed, or (inside a transaction of the caller's) its savepoint released.
            committed = commit
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
                try:
                    if self._fresh_connections:
                        close_old_connections()
                finally:
                    # Whatever failed above: the storages outside the transaction follow
                    # it, and the update's keys are given back in this process.
                    self._run_when_ended(committed)
        self.sends_due, self._committed = self._committed, False
        if not commit or (not self.sends_due and not connection.in_atomic_block):
            self.discard_after_commit()  # rolled back: nothing may be sent
        return outcome or Outcome.HANDLER_FAILED

    def _on_commit(self) -> None:
        if self._waiting_for_commit:
            self._committed = True  # process_as_unit sends them on the loop
            return
        # An outer transaction of the caller's committed later, on its own thread.
        self.send_after_commit_here()

    # -- on the loop -------------------------------------------------------------

    def after_commit(self, send: AfterCommit) -> None:
        """Run ``send`` (an awaitable, or a function returning one) once the update commits."""
        self._after_commit.append(send)

    async def send_after_commit(self, executor: Executor) -> None:
        """Run the registered sends in order; a failure is logged and the rest still run.

        Their thread-sensitive calls (a send that reads through the async ORM) run on
        ``executor``: a thread whose connection is closed or kept as Django's rules say,
        never one asgiref would make for a request that has already ended.
        """
        pending, self._after_commit = self._after_commit, []
        self.sending = True  # a send given as a function may read the committed sessions
        try:
            async with ThreadSensitiveContext(executor=executor):
                for send in pending:
                    try:
                        await (send() if callable(send) else send)
                    except Exception:
                        logger.exception("botsessions: a send after commit failed (not retried)")
        finally:
            self.sending = False

    def send_after_commit_here(self) -> None:
        """:meth:`send_after_commit` on the update's loop, from a thread that waits for it
        and runs the sends' database calls meanwhile, on its own connection."""
        assert self.loop is not None
        executor = CurrentThreadExecutor(None)
        future = asyncio.run_coroutine_threadsafe(self.send_after_commit(executor), self.loop)
        executor.run_until_future(future)
        future.result()

    def discard_after_commit(self) -> None:
        for send in self._after_commit:
            if inspect.iscoroutine(send):
                send.close()  # never awaited, on purpose
        self._after_commit = []


class UnitExecutor(Executor):
    """The executor of an update's database work: one thread, inside the unit.

    Every call the update sends to its database thread (the storage's, and each
    thread-sensitive ``sync_to_async`` of its handlers) goes through
    :meth:`UnitOfWork.run`, so the first one opens the transaction. The thread is
    ``thread``: the waiting request thread's executor, or a :class:`BorrowedThread` of the
    application's, taken at the first call and given back by :meth:`end` (an update
    waiting for a key held in this process ties up no thread).
    """

    def __init__(self, unit: UnitOfWork, thread: Executor) -> None:
        self.unit = unit
        self._thread = thread

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._thread.submit(self.unit.run, fn, *args, **kwargs)

    async def end(self, outcome: str | None) -> str:
        """:meth:`UnitOfWork.end` on the unit's thread; a borrowed thread goes back."""
        thread = self._thread
        borrowed = thread if isinstance(thread, BorrowedThread) else None
        try:
            if borrowed is not None and not borrowed.taken and not self.unit.has_pending_writes:
                return self.unit.end(outcome)  # no database work: nothing to do there
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(thread, self.unit.end, outcome)
        finally:
            if borrowed is not None:
                await borrowed.give_back()


async def run_in_unit(
    application: SessionApplication, update: object, executor: UnitExecutor
) -> str:
    """Run the update's handlers with sessions inside the executor's unit of work.

    Returns the handlers' :class:`~botsessions.outcome.Outcome`; raises
    :class:`~botsessions.errors.StorageError` when the update must be delivered again.
    The caller ends the unit (:meth:`UnitOfWork.end`) either way.
    """
    unit = executor.unit
    unit.loop = asyncio.get_running_loop()
    token = _current.set(unit)
    try:
        async with ThreadSensitiveContext(executor=executor):
            return await application.process_update_with_sessions(update)
    finally:
        _current.reset(token)


async def process_as_unit(
    application: SessionApplication, update: object, *, fresh_connections: bool = False
) -> str:
    """Process ``update`` as one unit of work on a database thread of the application's.

    Returns how it ended; nothing of it is committed when this raises. The sends that
    handlers asked for after the commit have gone out when this returns.
    """
    unit = UnitOfWork(application.unit_database, fresh_connections=fresh_connections)
    executor = UnitExecutor(unit, BorrowedThread(application.database_threads))
    try:
        outcome = await run_in_unit(application, update, executor)
    except BaseException:
        await executor.end(None)
        raise
    outcome = await executor.end(outcome)
    if unit.sends_due:
        thread = BorrowedThread(application.database_threads, fresh_connections=fresh_connections)
        try:
            await unit.send_after_commit(thread)
        finally:
            await thread.give_back()
    return outcome


class BorrowedThread(Executor):
    """One of the application's database threads, borrowed at the first call (if any)
    and given back by :meth:`give_back`: an update's database work runs on it, and then
    the sends after its commit (their connection closed first with ``fresh_connections``,
    as Django does after a request; the unit closes its own)."""

    def __init__(self, threads: DatabaseThreads, *, fresh_connections: bool = False) -> None:
        self._threads = threads
        self._fresh_connections = fresh_connections
        self._thread: ThreadPoolExecutor | None = None

    @property
    def taken(self) -> bool:
        return self._thread is not None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._thread is None:
            self._thread = self._threads.take()
        return self._thread.submit(fn, *args, **kwargs)

    async def give_back(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            if self._fresh_connections:  # as Django does after a request (to the pool)
                await asyncio.get_running_loop().run_in_executor(thread, close_old_connections)
        finally:
            self._threads.give_back(thread)


class DatabaseThreads:
    """Threads for updates that no waiting thread brings (ASGI, long polling).

    An update borrows one, with its database connection, from its first database work
    to its end. Threads are made as needed; up to ``keep`` idle ones are kept.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    def take(self) -> ThreadPoolExecutor:
        """A thread for one update: the last one given back (its connection is warm)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="botsessions-db")

    def give_back(self, thread: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(thread)
                return
        _stop(thread)

    def shutdown(self) -> None:
        """Stop the idle threads, closing their connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for thread in idle:
            _stop(thread)


def _stop(thread: ThreadPoolExecutor) -> None:
    thread.submit(connections.close_all)
    thread.shutdown(wait=False)


def _lost(connection: Any, began_on: object) -> bool:
    """Whether the connection the transaction began on is gone, and the transaction with
    it (the handler that met the error caught it), however Django carried on."""
    raw = connection.connection
    if raw is None or raw is not began_on or connection.closed_in_transaction:
        return True
    # psycopg says ``closed``; PyMySQL and mysqlclient say ``open``; sqlite3 says neither.
    return bool(getattr(raw, "closed", False)) or not getattr(raw, "open", True)


def _refused_for(error: Error | str) -> StorageError:
    refusal = StorageError(
        f"the update's transaction ended on the database ({error}); nothing of it is "
        "kept and it must be delivered again"
    )
    if isinstance(error, Error):
        refusal.__cause__ = error
    return refusal


def _spoiled(connection: Any, using: str) -> bool:
    """Whether the transaction can only be rolled back: a handler caught a database
    error itself, without the savepoint Django asks for (``transaction.atomic``)."""
    if transaction.get_rollback(using=using):
        return True
    # PostgreSQL refuses every statement after an error, which Django does not track.
    info = getattr(connection.connection, "info", None)
    return connection.vendor == "postgresql" and getattr(info, "transaction_status", 0) == 3
