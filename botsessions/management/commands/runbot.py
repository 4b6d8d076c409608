"""``manage.py runbot``: run a bot by long polling, with sessions, for local development."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django.core.management.base import CommandParser

from ...bots import bot_settings
from ...telegram_api import bot_api_errors, run_polling
from ._botcommand import BotCommand


class Command(BotCommand):
    help = (
        "Runs the bot by long polling (getUpdates) until Ctrl-C. An update whose session "
        "cannot be stored is retried until it can; an update is confirmed to Telegram "
        "only once it is processed (unless updates are processed concurrently), so a "
        "crash loses none. Updates already fetched are processed and their sessions saved "
        "before it exits (if the storage is down then, the ones left are logged, and "
        "Telegram delivers them again on the next start). Telegram does not deliver by "
        "polling while a webhook is set; polling deletes the webhook."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="Discard the updates that arrived while the bot was not running.",
        )

    def handle(self, *args: Any, bot: str, **options: Any) -> None:
        with self.bot_api():
            with bot_api_errors(bot):
                bot_settings(bot)  # an unknown alias fails before anything is said
            self.stdout.write(f"Polling for updates of bot {bot!r}; Ctrl-C to stop.")
            self.stdout.flush()
            try:
                run_polling(bot, drop_pending_updates=options["drop_pending_updates"])
            except (SystemExit, KeyboardInterrupt):
                # A second Ctrl-C (run_polling has logged what it left): exit now. Python
                # would wait at exit for the update's database thread, which may be stuck
                # in a query for as long as the database takes.
                logging.shutdown()
                self.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
        self.stdout.write("Stopped.")
