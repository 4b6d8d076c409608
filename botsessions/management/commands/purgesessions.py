"""``manage.py purgesessions``: delete expired sessions and old exactly-once records."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import MAX_PURGE_BATCH_SIZE, settings
from ...lookup import configured_fragments
from ...purge import prune_processed_updates, purge_expired_sessions


class Command(BaseCommand):
    help = (
        "Deletes expired sessions and the exactly-once records older than Telegram's "
        "redelivery window, in batches. Run it from cron, like clearsessions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            default=None,
            metavar="N",
            help=(
                "Rows deleted per statement, from 1 to "
                f"{MAX_PURGE_BATCH_SIZE:,} (default: BOTSESSIONS_PURGE_BATCH_SIZE)."
            ),
        )

    def handle(self, *args: Any, batch_size: str | int | None, **options: Any) -> None:
        if batch_size is None:
            size = _batch_size(settings.PURGE_BATCH_SIZE, "BOTSESSIONS_PURGE_BATCH_SIZE")
        else:
            size = _batch_size(batch_size, "--batch-size")
        verbose = options["verbosity"] >= 1

        def report(kind: str) -> Any:
            def progress(done: int) -> None:
                if verbose:
                    self.stdout.write(f"  {kind}: {done} deleted so far")

            return progress

        databases = _storage_databases()
        sessions = purge_expired_sessions(
            batch_size=size, progress=report("sessions"), databases=databases
        )
        records = prune_processed_updates(
            batch_size=size, progress=report("records"), databases=databases
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {sessions} expired session(s) and {records} processed-update record(s)."
            )
        )
        if _uses_redis():
            # Redis's own key expiry removes them (botsessions.storage.redis).
            self.stdout.write(
                "Sessions and exactly-once records in Redis expire by themselves: "
                "they need no purging."
            )


def _storage_databases() -> list[str]:
    """The databases the configured bots' ``DatabaseStorage(using=...)`` write to."""
    from ...storage.db import DatabaseStorage

    storages = [ref.storage for ref in configured_fragments()]
    return list(dict.fromkeys(s.using for s in storages if isinstance(s, DatabaseStorage)))


def _uses_redis() -> bool:
    """Whether some configured fragment keeps its sessions in Redis."""
    try:
        from ...storage.redis import RedisStorage
    except ImportError:  # redis-py is not installed, so no storage is Redis
        return False
    refs = configured_fragments(in_database=False)
    return any(isinstance(ref.storage, RedisStorage) for ref in refs)


def _batch_size(value: object, name: str) -> int:
    """A batch size as a number, or a one-line CommandError (not argparse's usage)."""
    text = str(value).strip()
    number = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else 0
    if isinstance(value, bool) or not 0 < number <= MAX_PURGE_BATCH_SIZE:
        raise CommandError(
            f"{name} must be a whole number from 1 to {MAX_PURGE_BATCH_SIZE:,} "
            f"(got {text[:40]!r})."
        )
    return number
