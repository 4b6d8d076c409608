"""Removing what is no longer needed: expired sessions and old exactly-once records.

Expired sessions are otherwise deleted only when their key is read again; a chat that
never writes again would keep its row forever. Both purges delete in batches by
primary key, so a million expired rows never sit in memory or in one huge statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from django.db import models, router, transaction
from django.utils import timezone

from .conf import MAX_PURGE_BATCH_SIZE, settings
from .models import ProcessedUpdate, Session

Progress = Callable[[int], None]


def purge_expired_sessions(
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    databases: Sequence[str] = (),
) -> int:
    """Delete every session whose expiry has passed; return how many were deleted.

    In the router's database for sessions and in ``databases`` (those a
    ``DatabaseStorage(using=...)`` writes to).
    """
    expired = Session.objects.filter(expires_at__lte=now or timezone.now())
    return _delete_in_batches(expired, batch_size, progress, databases)


def prune_processed_updates(
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    databases: Sequence[str] = (),
) -> int:
    """Forget exactly-once records older than the retention (Telegram's redelivery
    window), where :func:`purge_expired_sessions` purges."""
    cutoff = (now or timezone.now()) - settings.PROCESSED_UPDATES_RETENTION
    old = ProcessedUpdate.objects.filter(processed_at__lt=cutoff)
    return _delete_in_batches(old, batch_size, progress, databases)


def _delete_in_batches(
    queryset: models.QuerySet[models.Model],
    batch_size: int | None,
    progress: Progress | None,
    databases: Sequence[str],
) -> int:
    size = batch_size or settings.PURGE_BATCH_SIZE
    if not 0 < size <= MAX_PURGE_BATCH_SIZE:
        raise ValueError(f"a batch size must be from 1 to {MAX_PURGE_BATCH_SIZE:,} (got {size})")
    total = 0
    for using in dict.fromkeys([router.db_for_write(queryset.model), *databases]):
        while True:
            ids = list(queryset.using(using).order_by("pk").values_list("pk", flat=True)[:size])
            if not ids:
                break
            with transaction.atomic(using=using):
                # Re-check the condition: a row written since the SELECT may no longer match.
                deleted, _ = queryset.using(using).filter(pk__in=ids).delete()
            total += deleted
            if progress is not None:
                progress(total)
            if len(ids) < size:
                break
    return total
