"""Session-key locks held in the database, so that same-key updates wait for each other.

An update locks every database key it may use before it reads any of them, inside its
transaction, and keeps the locks until that transaction ends. This holds across every
process and host that shares the database. Each key becomes a 64-bit lock id (a hash);
an update takes all its ids in one statement, in ascending order, so two updates never
wait for each other in a cycle. Two keys that share an id only make their updates
wait for each other, which is safe.

The wait has one budget, the ``timeout`` given to :func:`acquire`, counted from the
start of the statement that takes the locks: each lock may wait for whatever of it the
locks before it left, so one lock held a while by another update may use most of it.

What each database does, and what it costs:

- **PostgreSQL**: transaction-level advisory locks (``pg_advisory_xact_lock``), given
  back by COMMIT or ROLLBACK. Before each lock the same statement sets ``lock_timeout``
  to what is left of the budget (``clock_timestamp()`` against
  ``statement_timestamp()``), and after the last one back to the whole budget, for the
  rest of the transaction (``set_config(..., true)``): so it also bounds each of the
  handlers' row-lock waits. Session locks not granted in time raise
  :class:`~botsessions.errors.LockTimeout`, as on MariaDB. One statement per update.
- **MariaDB / MySQL**: named locks (``GET_LOCK``). They belong to the connection, not
  the transaction, so :func:`release` gives them back after the transaction ends. The
  first statement sets ``innodb_lock_wait_timeout`` for the duration of the update
  (restored after; whole seconds, rounded up) and notes the budget's deadline; each
  ``GET_LOCK`` then waits until that deadline, read with ``SYSDATE(6)`` (the time of
  the call, where ``NOW()`` is the statement's start). MariaDB takes fractions of a
  second there; MySQL rounds the wait to whole seconds. Two statements to take the
  locks, one to give them back.
- **SQLite**: one writer at a time for the whole file, so all updates on the file run
  one after another, whatever their keys. With ``"transaction_mode": "IMMEDIATE"`` (what
  Django recommends, and the demo uses) the transaction takes the write lock as it
  begins, and the database's ``timeout`` option bounds the wait: no statement. Otherwise
  the update takes it first with a write that changes nothing, its wait bounded by
  ``busy_timeout``: two statements.

Any other database gets no locks; the revision check on every write still refuses a
lost update there (a 503, so Telegram redelivers).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from django.db import OperationalError

from .conf import settings
from .database_errors import sqlstate
from .errors import LockTimeout
from .storage.base import StorageKey


def lock_id(key: StorageKey) -> int:
    """The signed 64-bit lock id of a session key (the same in every process)."""
    digest = hashlib.blake2b(str(key).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_ids(keys: Iterable[StorageKey]) -> list[int]:
    """The lock ids of ``keys``, without duplicates, in the order they are taken."""
    return sorted({lock_id(key) for key in keys})


def needed(connection: Any) -> bool:
    """Whether locks must be taken on this connection's database (see the module's doc)."""
    vendor = connection.vendor
    if vendor == "sqlite":
        return connection.transaction_mode not in ("IMMEDIATE", "EXCLUSIVE")
    return vendor in ("postgresql", "mysql")


def acquire(connection: Any, ids: list[int], timeout: float) -> None:
    """Take the locks ``ids`` (sorted) in the connection's open transaction.

    Raises :class:`~botsessions.errors.LockTimeout` when they are not all granted within
    ``timeout`` seconds in all, counted from the start of the locking statement: one
    budget, not a share per lock, so a lock held briefly elsewhere is waited for even
    when it is the last of many. Other database errors (a deadlock, a lost connection)
    propagate, with nothing left held.
    """
    vendor = connection.vendor
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            budget_ms = max(1, round(timeout * 1000))
            # Select-list items run left to right: each lock waits for what is left.
            parts = ", ".join([f"{_PG_LEFT}, pg_advisory_xact_lock(%s)"] * len(ids))
            params: list[Any] = []
            for ident in ids:
                params += [budget_ms, ident]
            try:
                cursor.execute(
                    f"SELECT {parts}, set_config('lock_timeout', %s, true)",
                    [*params, f"{budget_ms}ms"],
                )
            except OperationalError as exc:
                if sqlstate(exc) != "55P03":  # lock_not_available
                    raise
                raise LockTimeout.budget_spent(settings.LOCK_TIMEOUT) from exc
        elif vendor == "mysql":
            cursor.execute(
                "SET @botsessions_lock_wait = @@SESSION.innodb_lock_wait_timeout, "
                "SESSION innodb_lock_wait_timeout = %s, "
                "@botsessions_lock_deadline = UNIX_TIMESTAMP(SYSDATE(6)) + %s",
                [max(1, math.ceil(timeout)), timeout],
            )
            # AND stops at the first lock not granted: the rest are not waited for. A
            # negative wait would be no limit at all, hence GREATEST.
            left = "GREATEST(0, @botsessions_lock_deadline - UNIX_TIMESTAMP(SYSDATE(6)))"
            parts = " AND ".join([f"GET_LOCK(%s, {left}) = 1"] * len(ids))
            try:
                cursor.execute(f"SELECT {parts}", [_mysql_name(ident) for ident in ids])
                granted = cursor.fetchone()[0]
            except BaseException:
                release(connection, ids)  # some may have been granted before the error
                raise
            if granted != 1:
                release(connection, ids)  # give back those granted before the refusal
                raise LockTimeout.budget_spent(settings.LOCK_TIMEOUT)
        elif vendor == "sqlite" and needed(connection):
            from .models import ProcessedUpdate

            table = connection.ops.quote_name(ProcessedUpdate._meta.db_table)
            cursor.execute(f"PRAGMA busy_timeout = {max(1, round(timeout * 1000))}")
            cursor.execute(f"DELETE FROM {table} WHERE 1 = 0")


# What is left of the budget (its milliseconds the parameter) as a lock_timeout: at
# least 1 ms, since 0 would mean no limit.
_PG_LEFT = (
    "set_config('lock_timeout', GREATEST(1, %s - FLOOR(EXTRACT(EPOCH FROM "
    "clock_timestamp() - statement_timestamp()) * 1000))::int || 'ms', true)"
)


def release(connection: Any, ids: list[int]) -> None:
    """Give back locks that outlive the transaction (MariaDB's); a no-op elsewhere."""
    if connection.vendor != "mysql" or not ids:
        return
    parts = " + ".join(["COALESCE(RELEASE_LOCK(%s), 0)"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            # CAST: on a session that never locked (Django reconnected after a lost
            # connection) the variable is an untyped NULL, which the SET refuses.
            "SET SESSION innodb_lock_wait_timeout = CAST(COALESCE("
            "@botsessions_lock_wait, @@GLOBAL.innodb_lock_wait_timeout) AS UNSIGNED), "
            f"@botsessions_released = {parts}",
            [_mysql_name(ident) for ident in ids],
        )


def _mysql_name(ident: int) -> str:
    return f"botsessions:{ident & 0xFFFFFFFFFFFFFFFF:016x}"
