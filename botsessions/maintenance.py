"""Bulk operations on stored sessions: reset to initial data, and delete.

Both walk a queryset in primary-key order, one batch of ids at a time, so that a
selection of a million rows never sits in memory and no statement holds locks for
long. Every change bumps ``revision`` in SQL, so a bot that read a row before the
operation fails its compare-and-set instead of overwriting the reset. The admin's
actions use these functions; so can a shell session or a management command.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from asgiref.sync import async_to_sync
from django.db import router, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from .bots import sessions_for_bot_id
from .conf import settings
from .config import Fragment
from .errors import SessionDataError
from .models import Session

FragmentKey = tuple[int, str]

BatchHook = Callable[[Literal["reset", "delete"], QuerySet[Session]], None]
"""Told of each batch's rows, in its transaction: after they are reset, before they are
deleted (so they can still be read). The admin writes its history entries with it."""


class UnknownConfiguration(Exception):
    """Some rows belong to a bot or fragment this project cannot build: nothing was reset."""

    def __init__(self, missing: Sequence[FragmentKey]) -> None:
        self.missing = sorted(missing)
        names = ", ".join(
            f"bot {bot_id} / {_fragment_name(name)}" for bot_id, name in self.missing
        )
        super().__init__(f"no session configuration is known for {names}")


@dataclass(frozen=True)
class InitialData:
    """What a reset writes for one fragment: its initial data, already validated.

    ``data`` is ``None`` when the fragment's initial data is ``None``: the reset then
    deletes the row, as the engine does when a handler assigns ``None``. ``text`` is the
    serializer's own output, for storages that keep text: a serializer that builds
    objects (a dataclass's) cannot take ``data``, which is already plain JSON.
    """

    data: Any
    version: Decimal | None
    fragment: Fragment
    text: str | None = None

    @property
    def deletes(self) -> bool:
        return self.data is None

    def expires_at(self, now: datetime) -> datetime | None:
        ttl = self.fragment.ttl
        return now + ttl if ttl is not None else None


@dataclass
class ResetResult:
    """How many rows a reset rewrote, deleted, or left alone (configuration gone)."""

    reset: int = 0
    deleted: int = 0
    skipped: int = 0
    skipped_fragments: set[FragmentKey] = field(default_factory=set)

    @property
    def changed(self) -> int:
        return self.reset + self.deleted


def fragment_config(bot_id: int, fragment: str) -> Fragment | None:
    """The configured fragment a row was written for, or ``None`` if unknown here."""
    sessions = sessions_for_bot_id(bot_id)
    if sessions is None:
        return None
    return sessions.fragments.get(fragment)


def initial_data(fragment: Fragment) -> InitialData:
    """Build the fragment's initial data as a reset stores it.

    It goes through the fragment's serializer like any write by the bot, so a reset
    can never store data the bot would refuse to read back. Whatever the project's
    ``initial`` or serializer raises becomes a
    :class:`~botsessions.errors.SessionDataError` saying so, which the admin and the
    commands report in one line, with nothing changed.
    """
    migrations = fragment.data_migrations
    version = migrations.latest if migrations is not None else None
    try:
        value = fragment.initial() if fragment.initial is not None else None
        if inspect.isawaitable(value):
            value = async_to_sync(_wait_for)(value)
    except Exception as exc:  # the project's own code: it may raise anything
        raise SessionDataError(f"the bot's initial data could not be made: {_named(exc)}") from exc
    if value is None:
        return InitialData(None, version, fragment)
    try:
        text = fragment.serializer.dumps(value)
        stored = json.loads(text)
    except Exception as exc:  # SessionDataError, or anything a serializer of its own raises
        problem = str(exc) if isinstance(exc, SessionDataError) else _named(exc)
        raise SessionDataError(f"the bot's initial data cannot be stored: {problem}") from exc
    return InitialData(stored, version, fragment, text)


def fragment_pairs(queryset: QuerySet[Session]) -> list[FragmentKey]:
    """The distinct (bot id, fragment) pairs of the rows in ``queryset``."""
    pairs = queryset.order_by().values_list("bot_id", "fragment").distinct()
    return sorted(pairs)


def unknown_fragments(queryset: QuerySet[Session]) -> list[FragmentKey]:
    """The (bot id, fragment) pairs in ``queryset`` that have no known configuration."""
    return [pair for pair in fragment_pairs(queryset) if fragment_config(*pair) is None]


def reset_sessions(
    queryset: QuerySet[Session],
    *,
    batch_size: int | None = None,
    check_configuration: bool = True,
    on_batch: BatchHook | None = None,
) -> ResetResult:
    """Give every session in ``queryset`` its fragment's initial data.

    The initial data of every fragment involved is built first, so an initial that
    raises, or that the serializer refuses, raises
    :class:`~botsessions.errors.SessionDataError` before any row changes. With
    ``check_configuration`` (the default), rows of an unknown bot or fragment make the
    call raise :class:`UnknownConfiguration`, also before any change; without it they
    are skipped and counted, as are rows whose configuration disappears while the reset
    runs.
    """
    plans = {pair: _plan(pair) for pair in fragment_pairs(queryset)}
    missing = [pair for pair, plan in plans.items() if plan is None]
    if check_configuration and missing:
        raise UnknownConfiguration(missing)
    result = ResetResult()
    rows = _writable(queryset)
    for batch in _batches(queryset, batch_size, "bot_id", "fragment"):
        groups: dict[FragmentKey, list[int]] = {}
        for pk, bot_id, name in batch:
            groups.setdefault((bot_id, name), []).append(pk)
        now = timezone.now()
        with transaction.atomic(using=rows.db):
            for pair, pks in groups.items():
                if pair not in plans:  # a row that appeared while the reset ran
                    plans[pair] = _plan(pair)
                plan = plans[pair]
                targets = rows.filter(pk__in=pks)
                if plan is None:
                    result.skipped += len(pks)
                    result.skipped_fragments.add(pair)
                elif plan.deletes:
                    if on_batch is not None:
                        on_batch("delete", targets)
                    result.deleted += _delete(targets)
                else:
                    result.reset += targets.update(
                        data=plan.data,
                        version=plan.version,
                        expires_at=plan.expires_at(now),
                        revision=F("revision") + 1,
                        updated_at=now,
                    )
                    if on_batch is not None:
                        on_batch("reset", targets)
    return result


def delete_sessions(
    queryset: QuerySet[Session],
    *,
    batch_size: int | None = None,
    on_batch: BatchHook | None = None,
) -> int:
    """Delete every session in ``queryset``, one batch of ids per statement."""
    rows = _writable(queryset)
    deleted = 0
    for batch in _batches(queryset, batch_size):
        targets = rows.filter(pk__in=[pk for (pk,) in batch])
        with transaction.atomic(using=rows.db):
            if on_batch is not None:
                on_batch("delete", targets)
            deleted += _delete(targets)
    return deleted


def _batches(
    queryset: QuerySet[Session], batch_size: int | None, *fields: str
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield (pk, *fields) tuples, ``batch_size`` at a time, in primary-key order.

    Each batch is a fresh ``WHERE pk > last ORDER BY pk LIMIT n`` query, so rows the
    caller deleted or changed in the previous batch never shift the next one.
    """
    size = batch_size or settings.ADMIN_BATCH_SIZE
    if size <= 0:
        raise ValueError("batch_size must be positive")
    ordered = queryset.order_by("pk")
    last: Any = None
    while True:
        page = ordered if last is None else ordered.filter(pk__gt=last)
        batch = list(page.values_list("pk", *fields)[:size])
        if batch:
            yield batch
        if len(batch) < size:
            return
        last = batch[-1][0]


def _plan(pair: FragmentKey) -> InitialData | None:
    config = fragment_config(*pair)
    return initial_data(config) if config is not None else None


def _writable(queryset: QuerySet[Session]) -> QuerySet[Session]:
    """A fresh, unfiltered queryset on the database writes of this model go to."""
    model = queryset.model
    return model._base_manager.using(router.db_for_write(model))


def _delete(queryset: QuerySet[Session]) -> int:
    deleted, _ = queryset.delete()
    return deleted


def _named(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fragment_name(name: str) -> str:
    return f"fragment {name!r}" if name else "the single session"


async def _wait_for(awaitable: Any) -> Any:
    return await awaitable
