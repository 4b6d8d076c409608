"""``manage.py webhookinfo``: what Telegram knows about the bot's webhook."""

from __future__ import annotations

from typing import Any

from telegram import WebhookInfo

from ...telegram_api import webhook_info
from ._botcommand import BotCommand


class Command(BotCommand):
    help = "Shows the bot's webhook URL, pending update count and last delivery error."

    def handle(self, *args: Any, bot: str, **options: Any) -> None:
        with self.bot_api():
            info = webhook_info(bot)
        lines = "\n".join(f"{label + ':':<18} {value}" for label, value in describe(info))
        self.stdout.write(self.redacted(bot, lines))  # the URL or the last error may hold it


def describe(info: WebhookInfo) -> list[tuple[str, object]]:
    """The fields worth showing, as (label, value) rows; unset fields are left out."""
    rows: list[tuple[str, object]] = [
        ("URL", info.url or "(none: the bot is not using a webhook)"),
        ("Pending updates", info.pending_update_count),
    ]
    if info.allowed_updates is not None:
        rows.append(("Allowed updates", ", ".join(info.allowed_updates) or "(default)"))
    if info.max_connections is not None:
        rows.append(("Max connections", info.max_connections))
    if info.ip_address:
        rows.append(("IP address", info.ip_address))
    if info.has_custom_certificate:
        rows.append(("Certificate", "custom"))
    if info.last_error_date is not None:
        when = f"{info.last_error_date:%Y-%m-%d %H:%M:%S %Z}"
        rows.append(("Last error", f"{when} {info.last_error_message}"))
    return rows
