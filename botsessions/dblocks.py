"""Session-key locks held in the database, so that same-key updates wait for each other.

An update locks every database key it may use before it reads any of them, inside its
transaction, and keeps the locks until that transaction ends. This holds across every
process and host that shares the database. Each key becomes a 64-bit lock id (a hash);
an update takes all its ids in one statement, in ascending order, so two updates never
wait for each other in a cycle. Two keys that share an id only make their updates
wait for each other, which is safe.

What each database does, and what it costs:

- **PostgreSQL**: transaction-level advisory locks (``pg_advisory_xact_lock``), given
  back by COMMIT or ROLLBACK. ``lock_timeout`` is set for the transaction
  (``set_config(..., true)``), so it also bounds the handlers' row-lock waits. One
  statement per update.
- **MariaDB / MySQL**: named locks (``GET_LOCK``). They belong to the connection, not
  the transaction, so :func:`release` gives them back after the transaction ends.
  ``innodb_lock_wait_timeout`` is set for the duration of the update and restored
  after. Two statements to take the locks, one to give them back.
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
    ``timeout`` seconds in all (each lock waits its share); database errors (a deadlock,
    a lost connection) propagate, with nothing left held.
    """
    share = timeout / len(ids)
    vendor = connection.vendor
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            parts = ", ".join(["pg_advisory_xact_lock(%s)"] * len(ids))
            cursor.execute(
                f"SELECT set_config('lock_timeout', %s, true), {parts}",
                [f"{max(1, round(share * 1000))}ms", *ids],
            )
        elif vendor == "mysql":
            cursor.execute(
                "SET @botsessions_lock_wait = @@SESSION.innodb_lock_wait_timeout, "
                "SESSION innodb_lock_wait_timeout = %s",
                [max(1, math.ceil(timeout))],
            )
            # AND stops at the first lock not granted: the rest are not waited for.
            parts = " AND ".join(["GET_LOCK(%s, %s) = 1"] * len(ids))
            params: list[Any] = []
            for ident in ids:
                params += [_mysql_name(ident), share]
            try:
                cursor.execute(f"SELECT {parts}", params)
                granted = cursor.fetchone()[0]
            except BaseException:
                release(connection, ids)  # some may have been granted before the error
                raise
            if granted != 1:
                release(connection, ids)  # give back those granted before the refusal
                raise LockTimeout(f"session locks not granted within {timeout:g} s")
        elif vendor == "sqlite" and needed(connection):
            from .models import ProcessedUpdate

            table = connection.ops.quote_name(ProcessedUpdate._meta.db_table)
            cursor.execute(f"PRAGMA busy_timeout = {max(1, round(timeout * 1000))}")
            cursor.execute(f"DELETE FROM {table} WHERE 1 = 0")


def release(connection: Any, ids: list[int]) -> None:
    """Give back locks that outlive the transaction (MariaDB's); a no-op elsewhere."""
    if connection.vendor != "mysql" or not ids:
        return
    parts = " + ".join(["COALESCE(RELEASE_LOCK(%s), 0)"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SET SESSION innodb_lock_wait_timeout = "
            "COALESCE(@botsessions_lock_wait, @@GLOBAL.innodb_lock_wait_timeout), "
            f"@botsessions_released = {parts}",
            [_mysql_name(ident) for ident in ids],
        )


def _mysql_name(ident: int) -> str:
    return f"botsessions:{ident & 0xFFFFFFFFFFFFFFFF:016x}"
