"""``manage.py deletewebhook``: stop webhook delivery (needed before long polling)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from ...telegram_api import delete_webhook
from ._botcommand import BotCommand


class Command(BotCommand):
    help = "Removes the bot's webhook; Telegram keeps updates for getUpdates instead."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="Discard the updates Telegram is holding for the bot.",
        )

    def handle(self, *args: Any, bot: str, **options: Any) -> None:
        with self.bot_api():
            delete_webhook(bot, drop_pending_updates=options["drop_pending_updates"])
        self.stdout.write(self.style.SUCCESS(f"Webhook of bot {bot!r} deleted."))
