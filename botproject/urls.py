"""URLs of the demo project: the webhook and the admin.

Under an ASGI server (``botproject/asgi.py`` says so) the webhook is the async view; under
a WSGI server, the sync one.
"""

from __future__ import annotations

import os

from django.contrib import admin
from django.urls import path

from botsessions.webhook import AsyncTelegramWebhookView, TelegramWebhookView

webhook = AsyncTelegramWebhookView if os.environ.get("BOTPROJECT_ASGI") else TelegramWebhookView

urlpatterns = [
    path("telegram/webhook/", webhook.as_view(bot="default"), name="telegram-webhook"),
    path("admin/", admin.site.urls),
]
