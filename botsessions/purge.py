"""Removing what is no longer needed: expired sessions and old exactly-once records.

Expired sessions are otherwise deleted only when their key is read again; a chat that
never writes again would keep its row forever. Both purges delete in batches by
primary key, so a million expired rows never sit in memory or in one huge statement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import models, router, transaction
from django.utils import timezone

from .conf import MAX_PURGE_BATCH_SIZE, settings
from .models import ProcessedUpdate, Session

Progress = Callable[[int], None]


def purge_expired_sessions(
    *, now: datetime | None = None, batch_size: int | None = None, progress: Progress | None = None
) -> int:
    """Delete every session whose expiry has passed; return how many were deleted."""
    expired = Session.objects.filter(expires_at__lte=now or timezone.now())
    return _delete_in_batches(expired, batch_size, progress)


def prune_processed_updates(
    *, now: datetime | None = None, batch_size: int | None = None, progress: Progress | None = None
) -> int:
    """Forget exactly-once records older than the retention (Telegram's redelivery window)."""
    cutoff = (now or timezone.now()) - settings.PROCESSED_UPDATES_RETENTION
    old = ProcessedUpdate.objects.filter(processed_at__lt=cutoff)
    return _delete_in_batches(old, batch_size, progress)


def _delete_in_batches(
    queryset: models.QuerySet[models.Model], batch_size: int | None, progress: Progress | None
) -> int:
    size = batch_size or settings.PURGE_BATCH_SIZE
    if not 0 < size <= MAX_PURGE_BATCH_SIZE:
        raise ValueError(f"a batch size must be from 1 to {MAX_PURGE_BATCH_SIZE:,} (got {size})")
    using = router.db_for_write(queryset.model)
    total = 0
    while True:
        ids = list(queryset.using(using).order_by("pk").values_list("pk", flat=True)[:size])
        if not ids:
            return total
        with transaction.atomic(using=using):
            # Re-check the condition: a row written since the SELECT may no longer match.
            deleted, _ = queryset.using(using).filter(pk__in=ids).delete()
        total += deleted
        if progress is not None:
            progress(total)
        if len(ids) < size:
            return total
