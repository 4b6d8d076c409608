"""What the session machinery sends to the database, as tests compare it, and a deadlock
to send it into."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.db import connection, transaction


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


def deadlock_with_another_connection(first: int, second: int, other_done: threading.Event) -> None:
    """Write two purchases, ``first`` then ``second``, in a savepoint, while another
    connection writes them the other way round: a deadlock, whose victim is this side.

    The other transaction writes 50 rows first, so MariaDB (which rolls back the smaller
    transaction) picks this one; PostgreSQL picks the one that waited first, this one
    too. ``other_done`` is set once the other connection has finished.
    """
    from botproject.models import Purchase

    other_holds_second = threading.Event()
    this_holds_first = threading.Event()

    def other() -> None:
        try:
            with transaction.atomic():
                Purchase.objects.bulk_create(
                    Purchase(chat_id=1, user_id=1, item="filler") for _ in range(50)
                )
                Purchase.objects.filter(pk=second).update(item="other")
                other_holds_second.set()
                this_holds_first.wait(5)
                time.sleep(0.5)  # let this one wait first (PostgreSQL: its check comes first)
                Purchase.objects.filter(pk=first).update(item="other")
        except Exception:
            pass  # PostgreSQL may time out waiting instead; this side's error is the test's
        finally:
            connection.close()
            other_done.set()

    threading.Thread(target=other, daemon=True).start()
    with transaction.atomic():  # a savepoint, as Django asks of code that catches errors
        Purchase.objects.filter(pk=first).update(item="this")
        this_holds_first.set()
        other_holds_second.wait(5)
        Purchase.objects.filter(pk=second).update(item="this")
