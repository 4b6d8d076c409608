"""``manage.py purgesessions``: delete expired sessions and old exactly-once records."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...purge import prune_processed_updates, purge_expired_sessions


class Command(BaseCommand):
    help = (
        "Deletes expired sessions and the exactly-once records older than Telegram's "
        "redelivery window, in batches. Run it from cron, like clearsessions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Rows deleted per statement (default: BOTSESSIONS_PURGE_BATCH_SIZE).",
        )

    def handle(self, *args: Any, batch_size: int | None, **options: Any) -> None:
        if batch_size is not None and batch_size <= 0:
            raise CommandError("--batch-size must be a positive number")
        verbose = options["verbosity"] >= 1

        def report(kind: str) -> Any:
            def progress(done: int) -> None:
                if verbose:
                    self.stdout.write(f"  {kind}: {done} deleted so far")

            return progress

        sessions = purge_expired_sessions(batch_size=batch_size, progress=report("sessions"))
        records = prune_processed_updates(batch_size=batch_size, progress=report("records"))
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {sessions} expired session(s) and {records} processed-update record(s)."
            )
        )
        # Redis's own key expiry removes them (botsessions.storage.redis).
        self.stdout.write(
            "Sessions and exactly-once records in Redis expire by themselves: "
            "they need no purging."
        )
