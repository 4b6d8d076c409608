"""Session keys and fragment names compare byte for byte on every database.

SQLite (``BINARY``) and PostgreSQL (deterministic collations break ties byte by byte;
``varchar`` never pads) already compare them exactly, so nothing changes there.
MySQL and MariaDB compare text with the column's collation, whose default ignores
case and trailing spaces, so ``chat:A`` and ``chat:a `` would be one session. Their
columns get a binary collation that does not pad: ``utf8mb4_nopad_bin`` on MariaDB,
``utf8mb4_0900_bin`` on MySQL 8. This rebuilds the table there; keys that were one
session before stay one row each, as no two rows could differ only by case before.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

# Binary and without padding, in order of preference; each server has one of them.
NO_PAD_BINARY = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
COLUMNS = (("fragment", 64), ("key", 255))


def _no_pad_binary(schema_editor: Any) -> str:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT collation_name FROM information_schema.collations "
            "WHERE collation_name IN (%s, %s)",
            NO_PAD_BINARY,
        )
        available = {row[0] for row in cursor.fetchall()}
    for name in NO_PAD_BINARY:
        if name in available:
            return name
    raise RuntimeError(
        "this MySQL/MariaDB server has neither utf8mb4_nopad_bin nor utf8mb4_0900_bin; "
        "session keys cannot be compared exactly (MariaDB 10.2+ or MySQL 8 has one)"
    )


def _alter(apps: Any, schema_editor: Any, collation: str | None) -> None:
    if schema_editor.connection.vendor != "mysql":
        return
    quote = schema_editor.quote_name
    table = apps.get_model("botsessions", "Session")._meta.db_table
    clause = f" CHARACTER SET utf8mb4 COLLATE {collation}" if collation else ""
    changes = ", ".join(
        f"MODIFY {quote(column)} varchar({length}){clause} NOT NULL" for column, length in COLUMNS
    )
    schema_editor.execute(f"ALTER TABLE {quote(table)} {changes}")


def exact(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "mysql":
        _alter(apps, schema_editor, _no_pad_binary(schema_editor))


def table_default(apps: Any, schema_editor: Any) -> None:
    _alter(apps, schema_editor, None)


class Migration(migrations.Migration):
    dependencies = [("botsessions", "0001_initial")]

    # DDL: MySQL cannot run it inside a transaction.
    operations = [migrations.RunPython(exact, table_default, atomic=False, elidable=False)]
