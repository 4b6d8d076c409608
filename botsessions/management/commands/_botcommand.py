"""What the Bot API commands share: the ``--bot`` option and readable failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...telegram_api import BotAPIError


class BotCommand(BaseCommand):
    """A command acting on one bot of ``BOTSESSIONS_BOTS``."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--bot",
            default="default",
            metavar="ALIAS",
            help='The bot\'s alias in BOTSESSIONS_BOTS (default: "default").',
        )

    @contextlib.contextmanager
    def bot_api(self) -> Iterator[None]:
        """Report a missing token or an unreachable Bot API as a CommandError."""
        try:
            yield
        except BotAPIError as exc:
            raise CommandError(str(exc)) from exc
