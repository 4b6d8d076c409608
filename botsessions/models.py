"""The rows behind sessions: one per session fragment, plus exactly-once records."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .display import printable_line
from .keys import describe_key
from .persistence import describe_ptb_row


class Session(models.Model):
    """One session fragment of one bot, as the session engine stores it.

    ``revision`` grows by one on every write; writers compare it to detect a concurrent
    change instead of overwriting it. ``fragment`` and ``key`` compare byte for byte on
    every database, case and trailing spaces included (migration 0002 sees to MySQL and
    MariaDB, whose default collations would make ``Pizza`` and ``pizza `` one session).
    """

    bot_id = models.BigIntegerField(_("bot id"))
    fragment = models.CharField(_("fragment"), max_length=64, blank=True, default="")
    key = models.CharField(_("key"), max_length=255)
    data = models.JSONField(_("data"))
    version = models.DecimalField(
        _("version"), max_digits=20, decimal_places=6, null=True, blank=True
    )
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True, db_index=True)
    revision = models.PositiveBigIntegerField(_("revision"), default=1)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("session")
        verbose_name_plural = _("sessions")
        constraints = [
            models.UniqueConstraint(
                fields=["bot_id", "fragment", "key"], name="botsessions_unique_session"
            )
        ]

    def __str__(self) -> str:
        # Shown in titles, breadcrumbs and messages: a key's control or bidi characters
        # are escaped there, as everywhere else, so a key cannot disguise itself.
        label = describe_key(printable_line(self.key))
        ptb = describe_ptb_row(self.fragment, label)
        if ptb is not None:
            return ptb
        return f"{printable_line(self.fragment) or 'session'} · {label}"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class ProcessedUpdate(models.Model):
    """Records that an update's session changes were committed, so a redelivery is skipped.

    Written in the same transaction as the session rows; pruned once Telegram's
    24-hour redelivery window has passed.
    """

    bot_id = models.BigIntegerField(_("bot id"))
    update_id = models.BigIntegerField(_("update id"))
    processed_at = models.DateTimeField(_("processed at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("processed update")
        verbose_name_plural = _("processed updates")
        constraints = [
            models.UniqueConstraint(
                fields=["bot_id", "update_id"], name="botsessions_unique_processed_update"
            )
        ]

    def __str__(self) -> str:
        return f"update {self.update_id} of bot {self.bot_id}"
