"""What the Bot API commands share: the ``--bot`` option and readable failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...telegram_api import BotAPIError, redact_token


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
        """Report a missing token, a bad argument or an unreachable Bot API as a one-line
        CommandError (exit code 1, no traceback)."""
        try:
            yield
        except BotAPIError as exc:
            raise CommandError(" ".join(str(exc).split())) from exc

    def redacted(self, bot: str, text: str) -> str:
        """``text`` as it may be printed: without the bot's token anywhere in it."""
        return redact_token(bot, text)
