"""The Django database storage: sessions as rows of :class:`botsessions.models.Session`.

Reads are one ``SELECT`` for all fragments of an update (it also answers whether the
update was already committed), after the update's keys are locked; the commit records
the update and applies every change with a revision check, so nothing is
found-then-inserted and no concurrent change is overwritten. Statements are plain SQL
through Django's cursor (so query logging, ``execute_wrapper`` and APM tools see them),
run by thread-sensitive ``sync_to_async``: inside an update, on its database thread and
in its transaction (see :mod:`botsessions.unit`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..errors import SessionConflict, StorageError, StoredDataError
from ..unit import UnitOfWork, current_unit
from ..versioning import VERSION_LIMIT
from .base import Change, Delete, SessionStorage, StorageKey, StoredSession, UpdateMark, Write

_MARK_REVISION = -1
#: What decoding a column that SQLite let hold anything raises (Decimal's errors included).
STORED_VALUE_ERRORS = (ValueError, TypeError, ArithmeticError)


class DatabaseStorage(SessionStorage):
    """Sessions in the database Django is configured with (the default storage)."""

    keeps_json_only = True  # the data column is JSON: a CHECK on SQLite and MariaDB

    def __init__(self, using: str | None = None) -> None:
        self._using = using
        self._sql: dict[tuple[Any, ...], str] = {}

    def __repr__(self) -> str:
        """``DatabaseStorage(using='default')``: the alias only, never its settings.

        Before the models are loaded (no router to ask), an unset alias shows as ``None``.
        """
        alias = self.using if self._using is not None or apps.models_ready else None
        return f"{type(self).__name__}(using={alias!r})"

    @property
    def using(self) -> str:
        """The database alias: the one given, or where the router writes sessions."""
        if self._using is None:
            from ..models import Session

            return router.db_for_write(Session)
        return self._using

    # -- the contract -------------------------------------------------------------

    async def read(self, key: StorageKey) -> StoredSession | None:
        return (await self.read_many([key]))[key]

    async def read_many(
        self, keys: Sequence[StorageKey]
    ) -> dict[StorageKey, StoredSession | None]:
        records, _ = await self.load(keys, None)
        return records

    async def load(
        self,
        keys: Sequence[StorageKey],
        mark: UpdateMark | None,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        """Lock ``lock``, then read ``keys`` and whether ``mark`` was committed (one SELECT)."""
        return await sync_to_async(self.load_sync)(keys, mark, lock)

    async def write(
        self, key: StorageKey, record: StoredSession, *, expected_revision: int | None = None
    ) -> None:
        await self.commit([Write(key, record, expected_revision)])

    async def delete(self, key: StorageKey, *, expected_revision: int | None = None) -> None:
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
            batch = await sync_to_async(page)(after)
            for pk, bot, fragment, key in batch:
                yield StorageKey(bot, fragment, key)
                after = pk
            if len(batch) < 500:
                return

    async def commit(self, changes: Sequence[Change], mark: UpdateMark | None = None) -> bool:
        unit = self._unit()
        if unit is not None:
            # Written by the unit's end, on its thread, right before the COMMIT.
            unit.write_at_end(functools.partial(self.commit_sync, list(changes), mark))
            return True
        return await sync_to_async(self.commit_sync)(changes, mark)

    def commits_with_unit(self) -> bool:
        return self._unit() is not None

    async def was_processed(self, mark: UpdateMark) -> bool:
        _, processed = await self.load([], mark)
        return processed

    async def rename(self, pairs: Iterable[tuple[StorageKey, StorageKey]]) -> list[StorageKey]:
        return await sync_to_async(self.rename_sync)(list(pairs), ())

    async def rename_chat(
        self,
        bot_id: int,
        fragments: Sequence[str],
        old_chat_id: int,
        new_chat_id: int,
        *,
        lock: Sequence[StorageKey] = (),
    ) -> list[StorageKey]:
        from ..keys import chat_key, rekey_chat
        from ..models import Session

        def find() -> list[tuple[StorageKey, StorageKey]]:
            old = chat_key(old_chat_id)
            rows = Session.objects.using(self.using).filter(
                bot_id=bot_id, fragment__in=list(fragments)
            )
            found = (
                rows.filter(key=old)
                .values_list("fragment", "key")
                .union(rows.filter(key__startswith=old + ":").values_list("fragment", "key"))
            )
            return [
                (StorageKey(bot_id, fragment, name), StorageKey(bot_id, fragment, new))
                for fragment, name in found
                if (new := rekey_chat(name, old_chat_id, new_chat_id)) is not None
            ]

        def move() -> list[StorageKey]:
            try:
                pairs = find()
            except DatabaseError as exc:
                raise StorageError(f"finding sessions to move failed: {exc}") from exc
            return self.rename_sync(pairs, lock)

        return await sync_to_async(move)()

    async def keys_under(self, bot_id: int, heads: Mapping[str, str]) -> list[StorageKey]:
        """One indexed query over the key column, instead of walking every key."""
        from django.db.models import Q

        from ..keys import is_under
        from ..models import Session

        def find() -> list[StorageKey]:
            wanted = Q()
            for fragment, head in heads.items():
                wanted |= Q(fragment=fragment, key=head)
                wanted |= Q(fragment=fragment, key__startswith=head + ":")
            rows = (
                Session.objects.using(self.using)
                .filter(wanted, bot_id=bot_id)
                .values_list("fragment", "key")
            )
            # LIKE may ignore case (SQLite): the exact test is made here.
            return [
                StorageKey(bot_id, fragment, key)
                for fragment, key in rows
                if is_under(key, heads[fragment])
            ]

        if not heads:
            return []
        try:
            return await sync_to_async(find)()
        except DatabaseError as exc:
            raise StorageError(f"finding sessions to move failed: {exc}") from exc

    # -- the blocking halves, run on the update's database thread ----------------

    def _unit(self, using: str | None = None) -> UnitOfWork | None:
        """The update's unit of work, when its transaction is on this storage's database."""
        unit = current_unit()
        if unit is None or unit.using != (using or self.using):
            return None
        return unit

    def load_sync(
        self,
        keys: Sequence[StorageKey],
        mark: UpdateMark | None,
        lock: Sequence[StorageKey] = (),
    ) -> tuple[dict[StorageKey, StoredSession | None], bool]:
        records: dict[StorageKey, StoredSession | None] = dict.fromkeys(keys)
        using = self.using
        connection = connections[using]
        try:
            unit = self._unit(using)
            if lock and unit is not None:
                unit.lock(list(lock))
            if not keys and mark is None:
                return records, False
            params: list[Any] = []
            for key in keys:
                params += [key.bot_id, key.fragment, key.key]
            if mark is not None:
                params += [mark.bot_id, mark.update_id]
            sql = self._statement(connection, ("select", len(keys), mark is not None))
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = cursor.fetchall()
        except (StorageError, StoredDataError):
            raise
        except DatabaseError as exc:
            raise StorageError(f"reading sessions failed: {exc}") from exc
        processed = False
        for bot_id, fragment, key, data, version, expires_at, revision in rows:
            if revision == _MARK_REVISION:
                processed = True
                continue
            storage_key = StorageKey(bot_id, fragment, key)
            try:
                records[storage_key] = StoredSession(
                    data=data if isinstance(data, str) else _json_text(data),
                    version=read_version(version),
                    expires_at=read_expiry(expires_at, connection.timezone or UTC),
                    revision=int(revision),
                )
            except STORED_VALUE_ERRORS as exc:
                raise StoredDataError(
                    f"session {storage_key} cannot be decoded: {type(exc).__name__}: {exc}"
                ) from exc
        return records, processed

    def commit_sync(self, changes: Sequence[Change], mark: UpdateMark | None) -> bool:
        """Record ``mark`` and apply ``changes`` in the update's transaction (or one of
        their own outside an update); ``False`` when the mark was already recorded."""
        if not changes and mark is None:
            return True
        using = self.using
        connection = connections[using]
        now = timezone.now()
        # Outside an update (the admin, a script) the commit is a transaction of its own.
        # Inside one, a duplicate record may spoil the transaction (PostgreSQL): the
        # update is then rolled back whole, which is what a duplicate needs anyway.
        own_transaction = (
            transaction.atomic(using=using)
            if self._unit(using) is None
            else contextlib.nullcontext()
        )
        stage = "mark"
        try:
            with own_transaction, connection.cursor() as cursor:
                if mark is not None:
                    cursor.execute(
                        self._statement(connection, ("mark",)),
                        [mark.bot_id, mark.update_id, _stamp(connection, now)],
                    )
                stage = "changes"
                for change in changes:
                    self._apply(connection, cursor, change, now)
        except IntegrityError as exc:
            if stage == "mark":
                return False
            raise SessionConflict(f"session was created by another writer: {exc}") from exc
        except DatabaseError as exc:
            raise StorageError(f"saving sessions failed: {exc}") from exc
        return True

    def rename_sync(
        self, pairs: Sequence[tuple[StorageKey, StorageKey]], lock: Sequence[StorageKey]
    ) -> list[StorageKey]:
        """Move rows to new keys under the locks of both (and of ``lock``)."""
        from ..models import Session

        moved: list[StorageKey] = []
        try:
            unit = self._unit()
            if unit is not None:
                unit.lock([*lock, *(key for pair in pairs for key in pair)])
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
        except StorageError:
            raise
        except DatabaseError as exc:
            raise StorageError(f"moving sessions failed: {exc}") from exc
        return moved

    # -- SQL ------------------------------------------------------------------------
    # Statements depend only on the database and the shape of the call: built once each.

    def _tables(self, connection: Any) -> tuple[str, str]:
        from ..models import ProcessedUpdate, Session

        q = connection.ops.quote_name
        return q(Session._meta.db_table), q(ProcessedUpdate._meta.db_table)

    def _statement(self, connection: Any, shape: tuple[Any, ...]) -> str:
        """The SQL of ``shape`` on ``connection``'s database."""
        cache_key = (connection.alias, *shape)
        sql = self._sql.get(cache_key)
        if sql is None:
            sql = self._sql[cache_key] = self._build(connection, shape)
        return sql

    def _build(self, connection: Any, shape: tuple[Any, ...]) -> str:
        q = connection.ops.quote_name
        table, marks = self._tables(connection)
        match = f"{q('bot_id')} = %s AND {q('fragment')} = %s AND {q('key')} = %s"
        data_slot = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        kind = shape[0]
        if kind == "select":
            _, key_count, with_mark = shape
            names = ("bot_id", "fragment", "key", "data", "version", "expires_at", "revision")
            columns = ", ".join(q(name) for name in names)
            if connection.vendor == "sqlite":
                # As text: decoded row by row (``read_expiry``), so a date a hand edit made
                # unreadable names its row, rather than failing the driver's fetch.
                columns = columns.replace(q("expires_at"), f"CAST({q('expires_at')} AS TEXT)")
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

    def _apply(self, connection: Any, cursor: Any, change: Change, now: datetime) -> None:
        ops = connection.ops
        key = change.key
        guarded = bool(change.expected_revision)
        where_params: list[Any] = [key.bot_id, key.fragment, key.key]
        if guarded:
            where_params.append(change.expected_revision)
        if not isinstance(change, Write):
            cursor.execute(self._statement(connection, ("delete", guarded)), where_params)
            if guarded and cursor.rowcount == 0:
                raise SessionConflict(f"session {key} was changed by another writer")
            return
        record = change.record
        stamp = _stamp(connection, now)
        values = [
            record.data,
            ops.adapt_decimalfield_value(record.version, 20, 6),
            ops.adapt_datetimefield_value(record.expires_at),
        ]
        if change.expected_revision == 0:
            cursor.execute(
                self._statement(connection, ("insert", False)),
                [*where_params, *values, record.revision, stamp, stamp],
            )
            return
        revision = [record.revision] if guarded else []
        cursor.execute(
            self._statement(connection, ("update", guarded)),
            [*values, *revision, stamp, *where_params],
        )
        if cursor.rowcount == 0:
            if change.expected_revision is None:
                # An unconditional write of a row that does not exist yet creates it.
                self._apply(connection, cursor, Write(key, record, 0), now)
                return
            raise SessionConflict(f"session {key} was changed by another writer")


def _stamp(connection: Any, now: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(now)


def read_version(value: Any) -> Decimal | None:
    """What the driver returns for the version column, as a ``Decimal``.

    On SQLite a hand edit can leave any text or number there: what the column could not
    hold elsewhere is refused (``ValueError`` or ``ArithmeticError``), not compared with
    versions.
    """
    if value is None:
        return None
    version = Decimal(str(value))
    if not version.is_finite() or version.copy_abs() >= VERSION_LIMIT:
        raise ValueError(f"version {str(value)[:40]!r} is not one the column holds")
    return version


def read_expiry(value: Any, zone: tzinfo) -> datetime | None:
    """What the driver returns for a datetime column, as an aware datetime.

    A naive one is in the connection's time zone (the database's ``TIME_ZONE``, UTC
    unless set), as Django wrote it; text that is no datetime is refused, not taken
    for "no expiry".
    """
    if value is None:
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            raise ValueError(f"expires_at {value[:40]!r} is not a datetime")
        value = parsed
    stamp: datetime = value
    if timezone.is_naive(stamp):
        return timezone.make_aware(stamp, zone).astimezone(UTC)
    return stamp


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
