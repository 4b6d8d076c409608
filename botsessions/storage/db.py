"""The Django database storage: sessions as rows of :class:`botsessions.models.Session`.

Reads are one ``SELECT`` for all fragments of an update (it also answers whether the
update was already committed); a commit is one transaction that records the update and
applies every change with a revision check, so nothing is found-then-inserted and no
concurrent change is overwritten. Statements are plain SQL over Django's connection:
they run on whatever database Django is configured with, inside its transactions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    connections,
    router,
    transaction,
)
from django.db.backends.utils import CursorWrapper
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..dbthread import run_db
from ..errors import SessionConflict, StorageError
from .base import Change, SessionStorage, StorageKey, StoredSession, UpdateMark, Write

_MARK_REVISION = -1


class DatabaseStorage(SessionStorage):
    """Sessions in the database Django is configured with (the default storage)."""

    #: On PostgreSQL, commit an update as one statement (one round trip, see
    #: :meth:`_commit_in_one_statement`) rather than BEGIN, a statement per row, COMMIT.
    one_statement_commits: bool = True

    def __init__(self, using: str | None = None) -> None:
        self._using = using
        self._sql: dict[tuple[Any, ...], str] = {}

    @property
    def using(self) -> str:
        """The database alias: the one given, or where the router writes sessions."""
        if self._using is None:
            from ..models import Session

            return router.db_for_write(Session)
        return self._using

    def connect(self) -> None:
        """Open this thread's connection now (raises ``DatabaseError`` when it cannot)."""
        connections[self.using].ensure_connection()

    # -- the contract -------------------------------------------------------------

    async def read(self, key: StorageKey) -> StoredSession | None:
        return (await self.read_many([key]))[key]

    async def read_many(
        self, keys: Sequence[StorageKey]
    ) -> dict[StorageKey, StoredSession | None]:
        records, _ = await self.load(keys, None)
        return records

    async def load(
        self, keys: Sequence[StorageKey], mark: UpdateMark | None
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        """Read ``keys`` and whether ``mark`` was already committed, in one statement."""
        return await run_db(lambda: self.load_sync(keys, mark))

    async def write(
        self, key: StorageKey, record: StoredSession, *, expected_revision: int | None = None
    ) -> None:
        await self.commit([Write(key, record, expected_revision)])

    async def delete(self, key: StorageKey, *, expected_revision: int | None = None) -> None:
        from .base import Delete

        await self.commit([Delete(key, expected_revision)])

    async def keys(self, bot_id: int | None = None) -> AsyncIterator[StorageKey]:
        from ..models import Session

        def page(after: int) -> list[tuple[int, int, str, str]]:
            rows = Session.objects.using(self.using).filter(pk__gt=after).order_by("pk")
            if bot_id is not None:
                rows = rows.filter(bot_id=bot_id)
            return list(rows.values_list("pk", "bot_id", "fragment", "key")[:500])

        after = 0
        while True:
            batch = await run_db(functools.partial(page, after))
            for pk, bot, fragment, key in batch:
                yield StorageKey(bot, fragment, key)
                after = pk
            if len(batch) < 500:
                return

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        return await run_db(lambda: self.commit_sync(changes, mark))

    async def was_processed(self, mark: UpdateMark) -> bool:
        _, processed = await self.load([], mark)
        return processed

    async def rename(self, pairs: Iterable[tuple[StorageKey, StorageKey]]) -> list[StorageKey]:
        pairs = list(pairs)
        return await run_db(lambda: self.rename_sync(pairs))

    async def rename_chat(
        self, bot_id: int, fragment: str, old_chat_id: int, new_chat_id: int
    ) -> list[StorageKey]:
        from ..keys import chat_key, rekey_chat
        from ..models import Session

        def find() -> list[tuple[StorageKey, StorageKey]]:
            old = chat_key(old_chat_id)
            rows = Session.objects.using(self.using).filter(bot_id=bot_id, fragment=fragment)
            names = (
                rows.filter(key=old)
                .values_list("key", flat=True)
                .union(rows.filter(key__startswith=old + ":").values_list("key", flat=True))
            )
            return [
                (StorageKey(bot_id, fragment, name), StorageKey(bot_id, fragment, new))
                for name in names
                if (new := rekey_chat(name, old_chat_id, new_chat_id)) is not None
            ]

        def move() -> list[StorageKey]:
            return self.rename_sync(find())

        return await run_db(move)

    # -- the blocking halves, run on a database thread ---------------------------

    def load_sync(
        self, keys: Sequence[StorageKey], mark: UpdateMark | None
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        records: dict[StorageKey, StoredSession | None] = dict.fromkeys(keys)
        if not keys and mark is None:
            return records, False
        connection = connections[self.using]
        params: list[Any] = []
        for key in keys:
            params += [key.bot_id, key.fragment, key.key]
        if mark is not None:
            params += [mark.bot_id, mark.update_id]
        try:
            direct = _direct(connection)
            sql = self._statement(connection, ("select", len(keys), mark is not None), direct)
            with _cursor(connection, direct) as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
        except DatabaseError as exc:
            raise StorageError(f"reading sessions failed: {exc}") from exc
        processed = False
        for bot_id, fragment, key, data, version, expires_at, revision in rows:
            if revision == _MARK_REVISION:
                processed = True
                continue
            records[StorageKey(bot_id, fragment, key)] = StoredSession(
                data=data if isinstance(data, str) else _json_text(data),
                version=None if version is None else Decimal(str(version)),
                expires_at=_aware(expires_at),
                revision=int(revision),
            )
        return records, processed

    def commit_sync(self, changes: Sequence[Change], mark: UpdateMark | None) -> bool:
        if not changes and mark is None:
            return True
        connection = connections[self.using]
        now = timezone.now()
        stage = "mark"
        try:
            if _direct(connection):
                if (
                    self.one_statement_commits
                    and connection.vendor == "postgresql"
                    and all(change.expected_revision is not None for change in changes)
                ):
                    return self._commit_in_one_statement(connection, changes, mark, now)
                with _cursor(connection, True) as cursor:
                    cursor.execute(_begin_statement(connection))
                    try:
                        self._record(connection, cursor, mark, now, True)
                        stage = "changes"
                        for change in changes:
                            self._apply(cursor, change, now)
                        cursor.execute("COMMIT")
                    except BaseException:
                        _roll_back(cursor)
                        raise
            else:
                with transaction.atomic(using=self.using), connection.cursor() as cursor:
                    self._record(connection, cursor, mark, now, False)
                    stage = "changes"
                    for change in changes:
                        self._apply(cursor, change, now)
        except IntegrityError as exc:
            if stage == "mark":
                return False
            raise SessionConflict(f"session was created by another writer: {exc}") from exc
        except DatabaseError as exc:
            raise StorageError(f"saving sessions failed: {exc}") from exc
        return True

    def _commit_in_one_statement(
        self,
        connection: Any,
        changes: Sequence[Change],
        mark: UpdateMark | None,
        now: datetime,
    ) -> bool:
        """PostgreSQL: the record and every change in one statement, one round trip.

        A lone statement is a transaction of its own, so no BEGIN or COMMIT travels.
        Each change is a data-modifying ``WITH`` part, gated on the record's insert, so
        a duplicate update changes nothing. A revision check that matched no row makes
        the final ``SELECT`` divide by zero, which aborts the whole statement: that is
        how a conflict undoes the record and the other changes.
        """
        ops = connection.ops
        stamp = ops.adapt_datetimefield_value(now)
        kinds: list[tuple[str, bool]] = []
        params: list[Any] = []
        if mark is not None:
            params += [mark.bot_id, mark.update_id, stamp]
        for change in changes:
            key = change.key
            guarded = bool(change.expected_revision)
            where = [key.bot_id, key.fragment, key.key]
            if guarded:
                where.append(change.expected_revision)
            if not isinstance(change, Write):
                kinds.append(("delete", guarded))
                params += where
                continue
            record = change.record
            values = [
                record.data,
                ops.adapt_decimalfield_value(record.version, 20, 6),
                ops.adapt_datetimefield_value(record.expires_at),
                record.revision,
                stamp,
            ]
            if change.expected_revision == 0:
                kinds.append(("insert", False))
                params += [*where, *values, stamp]
            else:
                kinds.append(("update", True))
                params += [*values, *where]
        sql = self._statement(connection, ("one statement", mark is not None, *kinds), True)
        try:
            with _cursor(connection, True) as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
        except IntegrityError as exc:
            raise SessionConflict(f"session was created by another writer: {exc}") from exc
        except DataError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "22012":  # division_by_zero
                raise SessionConflict("a session was changed by another writer") from exc
            raise
        return bool(row[0])

    def _record(
        self, connection: Any, cursor: Any, mark: UpdateMark | None, now: datetime, direct: bool
    ) -> None:
        """Insert the exactly-once record (a duplicate raises ``IntegrityError``)."""
        if mark is not None:
            cursor.execute(
                self._statement(connection, ("mark",), direct),
                [mark.bot_id, mark.update_id, connection.ops.adapt_datetimefield_value(now)],
            )

    def rename_sync(self, pairs: Sequence[tuple[StorageKey, StorageKey]]) -> list[StorageKey]:
        from ..models import Session

        moved: list[StorageKey] = []
        try:
            with transaction.atomic(using=self.using):
                rows = Session.objects.using(self.using)
                for old, new in pairs:
                    if rows.filter(bot_id=new.bot_id, fragment=new.fragment, key=new.key).exists():
                        continue
                    count = rows.filter(
                        bot_id=old.bot_id, fragment=old.fragment, key=old.key
                    ).update(
                        bot_id=new.bot_id,
                        fragment=new.fragment,
                        key=new.key,
                        updated_at=timezone.now(),
                    )
                    if count:
                        moved.append(new)
        except DatabaseError as exc:
            raise StorageError(f"moving sessions failed: {exc}") from exc
        return moved

    # -- SQL ------------------------------------------------------------------------
    # Statements depend only on the database and the shape of the call: built once each.

    def _tables(self, connection: Any) -> tuple[str, str]:
        from ..models import ProcessedUpdate, Session

        q = connection.ops.quote_name
        return q(Session._meta.db_table), q(ProcessedUpdate._meta.db_table)

    def _statement(self, connection: Any, shape: tuple[Any, ...], direct: bool) -> str:
        """The SQL of ``shape``, for Django's cursor or (``direct``) the driver's own."""
        cache_key = (connection.alias, direct, *shape)
        sql = self._sql.get(cache_key)
        if sql is None:
            sql = self._build(connection, shape)
            if direct and connection.vendor == "sqlite":
                sql = sql.replace("%s", "?")  # what Django's SQLite cursor does per call
            self._sql[cache_key] = sql
        return sql

    def _build(self, connection: Any, shape: tuple[Any, ...]) -> str:
        q = connection.ops.quote_name
        table, marks = self._tables(connection)
        match = f"{q('bot_id')} = %s AND {q('fragment')} = %s AND {q('key')} = %s"
        data_slot = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        kind = shape[0]
        if kind == "one statement":
            return self._build_one_statement(q, table, marks, shape[1], shape[2:])
        if kind == "select":
            _, key_count, with_mark = shape
            columns = ", ".join(
                q(name)
                for name in (
                    "bot_id",
                    "fragment",
                    "key",
                    "data",
                    "version",
                    "expires_at",
                    "revision",
                )
            )
            parts = []
            if key_count:
                either = " OR ".join(f"({match})" for _ in range(key_count))
                parts.append(f"SELECT {columns} FROM {table} WHERE {either}")
            if with_mark:
                parts.append(
                    f"SELECT {q('bot_id')}, '', '', NULL, NULL, NULL, {_MARK_REVISION} "
                    f"FROM {marks} WHERE {q('bot_id')} = %s AND {q('update_id')} = %s"
                )
            return " UNION ALL ".join(parts)
        if kind == "mark":
            return (
                f"INSERT INTO {marks} ({q('bot_id')}, {q('update_id')}, {q('processed_at')}) "
                "VALUES (%s, %s, %s)"
            )
        guarded = shape[1]
        where = f"{match} AND {q('revision')} = %s" if guarded else match
        if kind == "delete":
            return f"DELETE FROM {table} WHERE {where}"
        if kind == "insert":
            return (
                f"INSERT INTO {table} ({q('bot_id')}, {q('fragment')}, {q('key')}, "
                f"{q('data')}, {q('version')}, {q('expires_at')}, {q('revision')}, "
                f"{q('updated_at')}, {q('created_at')}) "
                f"VALUES (%s, %s, %s, {data_slot}, %s, %s, %s, %s, %s)"
            )
        revision_slot = "%s" if guarded else f"{q('revision')} + 1"
        return (
            f"UPDATE {table} SET {q('data')} = {data_slot}, {q('version')} = %s, "
            f"{q('expires_at')} = %s, {q('revision')} = {revision_slot}, "
            f"{q('updated_at')} = %s WHERE {where}"
        )

    @staticmethod
    def _build_one_statement(
        q: Callable[[str], str],
        table: str,
        marks: str,
        with_mark: bool,
        kinds: Sequence[tuple[str, bool]],
    ) -> str:
        """The statement of :meth:`_commit_in_one_statement` (PostgreSQL only)."""
        match = f"{q('bot_id')} = %s::bigint AND {q('fragment')} = %s AND {q('key')} = %s"
        gate = " AND EXISTS (SELECT 1 FROM recorded)" if with_mark else ""
        parts = []
        if with_mark:
            parts.append(
                f"recorded AS (INSERT INTO {marks} ({q('bot_id')}, {q('update_id')}, "
                f"{q('processed_at')}) VALUES (%s::bigint, %s::bigint, %s::timestamptz) "
                "ON CONFLICT DO NOTHING RETURNING 1)"
            )
        recorded = "(SELECT count(*) FROM recorded)" if with_mark else "1"
        checks = []
        for index, (kind, guarded) in enumerate(kinds):
            name = f"change{index}"
            where = f"{match} AND {q('revision')} = %s::bigint" if guarded else match
            if kind == "delete":
                parts.append(f"{name} AS (DELETE FROM {table} WHERE {where}{gate} RETURNING 1)")
            elif kind == "insert":
                parts.append(
                    f"{name} AS (INSERT INTO {table} ({q('bot_id')}, {q('fragment')}, "
                    f"{q('key')}, {q('data')}, {q('version')}, {q('expires_at')}, "
                    f"{q('revision')}, {q('updated_at')}, {q('created_at')}) "
                    "SELECT %s::bigint, %s, %s, %s::jsonb, %s::numeric, %s::timestamptz, "
                    "%s::bigint, %s::timestamptz, %s::timestamptz"
                    f"{' WHERE EXISTS (SELECT 1 FROM recorded)' if with_mark else ''} "
                    "RETURNING 1)"
                )
            else:
                parts.append(
                    f"{name} AS (UPDATE {table} SET {q('data')} = %s::jsonb, "
                    f"{q('version')} = %s::numeric, {q('expires_at')} = %s::timestamptz, "
                    f"{q('revision')} = %s::bigint, {q('updated_at')} = %s::timestamptz "
                    f"WHERE {where}{gate} RETURNING 1)"
                )
            if guarded:
                # 1 / 0 when the update was recorded but this row had moved on.
                checks.append(f"1 / ((SELECT count(*) FROM {name}) + 1 - {recorded})")
        select = f"SELECT {', '.join([recorded, *checks])}"
        return f"WITH {', '.join(parts)} {select}" if parts else select

    def _apply(self, cursor: Any, change: Change, now: datetime) -> None:
        connection = connections[self.using]
        direct = not isinstance(cursor, CursorWrapper)
        ops = connection.ops
        key = change.key
        guarded = bool(change.expected_revision)
        where_params: list[Any] = [key.bot_id, key.fragment, key.key]
        if guarded:
            where_params.append(change.expected_revision)
        if not isinstance(change, Write):
            cursor.execute(self._statement(connection, ("delete", guarded), direct), where_params)
            if guarded and cursor.rowcount == 0:
                raise SessionConflict(f"session {key} was changed by another writer")
            return
        record = change.record
        stamp = ops.adapt_datetimefield_value(now)
        values = [
            record.data,
            ops.adapt_decimalfield_value(record.version, 20, 6),
            ops.adapt_datetimefield_value(record.expires_at),
        ]
        if change.expected_revision == 0:
            cursor.execute(
                self._statement(connection, ("insert", False), direct),
                [*where_params, *values, record.revision, stamp, stamp],
            )
            return
        revision = [record.revision] if guarded else []
        cursor.execute(
            self._statement(connection, ("update", guarded), direct),
            [*values, *revision, stamp, *where_params],
        )
        if cursor.rowcount == 0:
            if change.expected_revision is None:
                # An unconditional write of a row that does not exist yet creates it.
                self._apply(cursor, Write(key, record, 0), now)
                return
            raise SessionConflict(f"session {key} was changed by another writer")


def _direct(connection: Any) -> bool:
    """Whether statements may skip Django's cursor and go to the driver's connection.

    Django's cursor converts placeholders, wraps errors and logs queries on every call,
    which costs more than the session's SQL itself. It is needed when someone watches
    the queries (``DEBUG``, ``CaptureQueriesContext``, execute wrappers) or when the
    caller has a transaction open (savepoints, broken-transaction checks); otherwise
    the driver's cursor on the same connection does the same work, errors still
    translated by Django.
    """
    connection.close_if_health_check_failed()  # as Django's cursor() would
    if connection.connection is None:
        connection.ensure_connection()
    return connection.autocommit and not (
        connection.in_atomic_block or connection.execute_wrappers or connection.queries_logged
    )


def _cursor(connection: Any, direct: bool) -> Any:
    """Django's cursor, or (``direct``) the driver's own, its errors still Django's."""
    return _driver_cursor(connection) if direct else connection.cursor()


@contextlib.contextmanager
def _driver_cursor(connection: Any) -> Iterator[Any]:
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()


def _begin_statement(connection: Any) -> str:
    if connection.vendor == "sqlite":
        mode = getattr(connection, "transaction_mode", None)
        return f"BEGIN {mode}" if mode else "BEGIN"
    return "BEGIN"


def _roll_back(cursor: Any) -> None:
    """Undo an unfinished commit; the error that interrupted it is the one reported."""
    with contextlib.suppress(Exception):  # the connection may be gone
        cursor.execute("ROLLBACK")


def _aware(value: Any) -> datetime | None:
    """Normalise what the driver returns for a datetime column to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
        if value is None:
            return None
    if timezone.is_naive(value):
        return value.replace(tzinfo=UTC)
    return value


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_default: DatabaseStorage | None = None


def default_database_storage() -> DatabaseStorage:
    """The storage shared by every fragment that names none (one commit per update)."""
    global _default
    if _default is None:
        _default = DatabaseStorage()
    return _default
