"""URLs of the demo project: the webhook and the admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from botsessions.webhook import TelegramWebhookView

urlpatterns = [
    path("telegram/webhook/", TelegramWebhookView.as_view(bot="default"), name="telegram-webhook"),
    path("admin/", admin.site.urls),
]
