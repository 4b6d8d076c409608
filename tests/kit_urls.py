"""URLs for the test kit's tests: the demo bot by name, the kit's bot in a namespace,
and a bot whose webhook URL takes an argument."""

from __future__ import annotations

from django.urls import include, path

from botsessions.webhook import TelegramWebhookView

kit = (
    [path("hook/", TelegramWebhookView.as_view(bot="kit"), name="hook")],
    "bots",
)

urlpatterns = [
    path("elsewhere/", TelegramWebhookView.as_view(bot="other")),
    # A secret in the URL, as some projects mount their webhook.
    path("by-token/<str:token>/", TelegramWebhookView.as_view(bot="tokened")),
    path("demo/webhook/", TelegramWebhookView.as_view(bot="default")),
    path("kit/", include(kit)),
]
