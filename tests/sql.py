"""What the session machinery sends to the database, as tests compare it."""

from __future__ import annotations

from typing import Any

from django.db import connection


def statements(captured: Any) -> list[str]:
    """The first word of each statement, without the savepoints of the test's transaction.

    Tests run inside a transaction, so the update's ``atomic`` becomes a savepoint here;
    in production it is a plain transaction (BEGIN/COMMIT are not statements Django logs).
    """
    words = [q["sql"].split()[0].upper() for q in captured.captured_queries]
    return [w for w in words if w not in {"SAVEPOINT", "RELEASE"}]


def lock_statements() -> list[str]:
    """The statements that lock an update's session keys on this database."""
    if connection.vendor == "sqlite":
        # The update's transaction took the write lock as it began (IMMEDIATE).
        return [] if connection.transaction_mode == "IMMEDIATE" else ["PRAGMA", "DELETE"]
    return {"postgresql": ["SELECT"], "mysql": ["SET", "SELECT"]}[connection.vendor]


def release_statements() -> list[str]:
    """The statements that give the locks back after the transaction (MariaDB only)."""
    return ["SET"] if connection.vendor == "mysql" else []


def locked(*rest: str) -> list[str]:
    """An update's statements: its key locks, ``rest``, then the locks given back."""
    return [*lock_statements(), *rest, *release_statements()]


def serializes_every_update() -> bool:
    """Whether the database runs one update at a time whatever its keys (SQLite)."""
    return connection.vendor == "sqlite"
