"""``manage.py resetsession FRAGMENT KEY``: one session back to its initial data."""

from __future__ import annotations

from typing import Any

from ...lookup import reset_session
from ._sessioncommand import SessionCommand


class Command(SessionCommand):
    help = (
        "Gives one session (in the database, Redis or another storage) its fragment's "
        "initial data, unless the bot writes it meanwhile."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with self.plainly():
            ref, found = self.find(options)
            kept = reset_session(ref, found.key, revision=found.revision)
        what = "reset to its initial data" if kept else "deleted (its initial data is None)"
        self.stdout.write(self.style.SUCCESS(f"Session {found.key!r} of {ref.label} {what}."))
