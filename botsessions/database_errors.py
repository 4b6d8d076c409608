"""What a database error means for the update, from the driver's codes behind it.

Django wraps every driver's errors in its own few classes, and the same class stands for
very different things: SQLite and MariaDB report a missing table as an
``OperationalError``, like a server that is down. The unit of work, the handlers' error
handling and runbot's retries each ask one question of such an error; the answers are
read here, from MySQL's error numbers, PostgreSQL's SQLSTATEs and SQLite's messages.
"""

from __future__ import annotations

import re

from django.db import Error, OperationalError

# MySQL/MariaDB's ER_LOCK_DEADLOCK, and ER_CHECKREAD (a write MariaDB's snapshot
# isolation refuses): InnoDB rolls back the victim's whole transaction, savepoints and
# all, where PostgreSQL fails only the statement.
_MYSQL_DEADLOCK = 1213
_ENDS_THE_TRANSACTION_ON_MYSQL = frozenset({_MYSQL_DEADLOCK, 1020})

# A deadlock's victim on PostgreSQL: deadlock_detected, or a serialization failure.
_DEADLOCK_SQLSTATES = frozenset({"40P01", "40001"})

# Reported as an OperationalError though no retry can cure it: the schema lacks what the
# query names, or the SQL is wrong (PostgreSQL reports these as ProgrammingError).
_SQLITE_NEVER_WORKS = re.compile(
    r"no such (table|column|function)|has no column named|syntax error", re.IGNORECASE
)
_MYSQL_NEVER_WORKS = frozenset({1054, 1064, 1146, 1305})  # unknown column, syntax, table, function


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of the driver error behind a Django database error (psycopg 3 or 2)."""
    cause = error.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def ends_the_transaction(sql: str, vendor: str, error: Error) -> bool:
    """Whether the statement's ``error`` says the transaction has ended on the server.

    Django cannot tell: it goes on as if the handler's savepoint still stood, and what
    the update writes next would commit without what it wrote before. A failed
    ``ROLLBACK TO SAVEPOINT`` says it on every database, whatever ended the transaction
    (a lost connection, too); the codes say it at once, also for a handler that caught
    the error without a savepoint.
    """
    if sql.startswith("ROLLBACK TO SAVEPOINT"):
        return True
    return vendor == "mysql" and _mysql_code(error) in _ENDS_THE_TRANSACTION_ON_MYSQL


def a_deadlock(error: BaseException) -> bool:
    """Whether ``error``, or a cause of it, is a deadlock the database resolved: the next
    try gets past the other update."""
    cause: BaseException | None = error
    while cause is not None:
        if getattr(cause, "sqlstate", None) in _DEADLOCK_SQLSTATES:
            return True
        if isinstance(cause, OperationalError) and cause.args[:1] == (_MYSQL_DEADLOCK,):
            return True
        cause = cause.__cause__
    return False


def never_works(error: BaseException) -> bool:
    """Whether an ``OperationalError`` is a query that can never work, not an outage."""
    if not isinstance(error, OperationalError):
        return False
    code = _mysql_code(error)
    return code in _MYSQL_NEVER_WORKS or bool(_SQLITE_NEVER_WORKS.search(str(error)))


def _mysql_code(error: BaseException) -> object:
    return error.args[0] if error.args else None
