"""``manage.py showsession FRAGMENT KEY``: one session, in any storage, as stored."""

from __future__ import annotations

from typing import Any

from ...display import printable_line, shown_version
from ...lookup import Found, shown_json
from ._sessioncommand import SessionCommand


class Command(SessionCommand):
    help = (
        "Shows one session of a bot (in the database, Redis or another storage): its "
        "revision, version, expiry and data."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with self.plainly():
            ref, found = self.find(options)
        rows: list[tuple[str, object]] = [
            ("Bot", f"{ref.alias} ({ref.bot_id})"),
            ("Fragment", ref.name or "- (single session)"),
            ("Key", printable_line(self.describe(found))),  # U+202E, ESC: escaped
            ("Storage", repr(ref.storage)),
        ]
        rows += _bookkeeping(found)
        self.stdout.write("\n".join(f"{label + ':':<10} {value}" for label, value in rows))
        if found.record is not None:
            self.stdout.write(shown_json(found.record.data))


def _bookkeeping(found: Found) -> list[tuple[str, object]]:
    record = found.record
    if record is None:
        problem = printable_line(str(found.problem))
        return [("Problem", f"the stored value cannot be read: {problem}")]
    if record.expires_at is None:
        expiry = "never"
    else:
        state = "expired" if found.expired else "active"
        expiry = f"{record.expires_at:%Y-%m-%d %H:%M:%S %Z} ({state})"
    version = "none" if record.version is None else shown_version(record.version)
    return [
        ("Revision", record.revision),
        ("Version", version),
        ("Expires", expiry),
        ("Data", ""),
    ]
