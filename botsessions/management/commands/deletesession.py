"""``manage.py deletesession FRAGMENT KEY``: delete one session; its chat starts over."""

from __future__ import annotations

from typing import Any

from ...lookup import delete_session
from ._sessioncommand import SessionCommand


class Command(SessionCommand):
    help = (
        "Deletes one session (in the database, Redis or another storage), unless the bot "
        "writes it meanwhile; its next update starts from the initial data."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with self.plainly():
            ref, found = self.find(options)
            delete_session(ref, found.key, revision=found.revision)
        self.stdout.write(self.style.SUCCESS(f"Session {found.key!r} of {ref.label} deleted."))
