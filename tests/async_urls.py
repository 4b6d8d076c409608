"""The demo's URLs with the async webhook view, as an ASGI server would mount them."""

from __future__ import annotations

from django.urls import path

from botsessions.webhook import AsyncTelegramWebhookView

urlpatterns = [
    path("telegram/webhook/", AsyncTelegramWebhookView.as_view(bot="default")),
    # A secret in the URL, as some projects mount their webhook.
    path("telegram/<str:token>/", AsyncTelegramWebhookView.as_view(bot="default")),
]
