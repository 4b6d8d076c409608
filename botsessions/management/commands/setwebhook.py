"""``manage.py setwebhook URL``: tell Telegram where to deliver the bot's updates."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from ...telegram_api import set_webhook
from ._botcommand import BotCommand


class Command(BotCommand):
    help = (
        "Sets the bot's webhook to URL, with the bot's WEBHOOK_SECRET as secret token and "
        "its ALLOWED_UPDATES (every update type when unset)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "url",
            help="The public https:// URL of the webhook view (http:// with --local-bot-api).",
        )
        parser.add_argument(
            "--drop-pending-updates",
            action="store_true",
            help="Discard the updates Telegram is holding for the bot.",
        )
        parser.add_argument(
            "--local-bot-api",
            action="store_true",
            help=(
                "The bot talks to a local Bot API server (TELEGRAM_API_BASE_URL), which "
                "also delivers to http:// URLs; Telegram's own servers need https://."
            ),
        )

    def handle(self, *args: Any, url: str, bot: str, **options: Any) -> None:
        with self.bot_api():
            setup = set_webhook(
                bot,
                url,
                drop_pending_updates=options["drop_pending_updates"],
                local_bot_api=options["local_bot_api"],
            )
        set_to = self.redacted(bot, f"Webhook of bot {bot!r} set to {setup.url}")
        self.stdout.write(self.style.SUCCESS(set_to))
        self.stdout.write(f"  Allowed updates: {', '.join(setup.allowed_updates)}")
        if setup.dropped_pending_updates:
            self.stdout.write("  Pending updates dropped.")
        if setup.secret_sent:
            self.stdout.write("  Secret token: sent (WEBHOOK_SECRET).")
        else:
            self.stderr.write(
                self.style.WARNING(
                    "  No WEBHOOK_SECRET is configured: anyone who finds the URL can post "
                    "forged updates."
                )
            )
