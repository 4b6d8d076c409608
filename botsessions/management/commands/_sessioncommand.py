"""What the one-session commands share: ``FRAGMENT KEY [--bot ALIAS]`` and plain failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.core.management.base import CommandError, CommandParser

from ...display import printable_line
from ...errors import SessionDataError, StorageError
from ...keys import describe_key
from ...lookup import BadLookup, Found, FragmentRef, SessionChanged, fragment_ref, read_session
from ._botcommand import BotCommand


class SessionCommand(BotCommand):
    """A command acting on one stored session, in whatever storage its fragment uses."""

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("fragment", help="The fragment's name (\"-\" for a single session's).")
        parser.add_argument("key", help="The session's key as stored, prefix included.")

    @contextlib.contextmanager
    def plainly(self) -> Iterator[None]:
        """Bad input and unreachable storages as a one-line CommandError (exit code 1)."""
        try:
            yield
        except (BadLookup, SessionChanged, SessionDataError, StorageError) as exc:
            # It may quote what was typed or stored: escaped, like the data.
            raise CommandError(printable_line(" ".join(str(exc).split()))) from exc

    def find(self, options: dict[str, Any]) -> tuple[FragmentRef, Found]:
        """The session the arguments name; a CommandError when there is none."""
        ref = fragment_ref(options["bot"], options["fragment"])
        found = read_session(ref, options["key"])
        if found is None:
            raise CommandError(f"No session {options['key']!r} in {ref.label}.")
        return ref, found

    def describe(self, found: Found) -> str:
        """``chat:42`` as the admin shows it: ``chat:42 (chat 42)``."""
        meaning = describe_key(found.key, found.ref.fragment.prefix)
        return found.key if meaning == found.key else f"{found.key} ({meaning})"
