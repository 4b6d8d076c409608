"""The demo shop's own table: what a bot's handlers write besides their sessions."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Purchase(models.Model):
    """One ``/buy``: written by the handler in the same transaction as the sessions."""

    chat_id = models.BigIntegerField()
    user_id = models.BigIntegerField()
    item = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.item} for user {self.user_id} in chat {self.chat_id}"
