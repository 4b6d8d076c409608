"""System checks of each bot's settings and of the URLs that mount webhook views:
mistakes that would fail every update are reported by ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.test import override_settings
from django.urls import path
from telegram.ext import ApplicationBuilder

from botsessions.checks import check_settings, check_webhook_urls
from botsessions.webhook import TelegramWebhookView

APP = "botproject.bot.build_application"
# An Application without sessions, at a dotted path (the check imports it).
plain_application = ApplicationBuilder().token("123456:PLAIN").updater(None).build()
not_an_application = 42

urlpatterns = [
    path("hook/", TelegramWebhookView.as_view(bot="default")),
    path("typo/", TelegramWebhookView.as_view(bot="defualt")),
]


def messages(bot: dict[str, Any], alias: object = "default") -> list[tuple[str, str]]:
    with override_settings(BOTSESSIONS_BOTS={alias: {"WEBHOOK_SECRET": "s", **bot}}):
        return [(message.id or "", message.msg) for message in check_settings()]


def test_an_application_that_does_not_import_is_named():
    [(found, text)] = messages({"APPLICATION": "botproject.bot.build_aplication"})
    assert found == "botsessions.E012"
    assert "cannot be imported" in text and "build_aplication" in text


def test_an_application_without_sessions_or_not_an_application_is_refused():
    [(found, text)] = messages({"APPLICATION": f"{__name__}.plain_application"})
    assert (found, "without sessions" in text) == ("botsessions.E012", True)
    [(found, text)] = messages({"APPLICATION": f"{__name__}.not_an_application"})
    assert (found, "is int" in text) == ("botsessions.E012", True)
    # A class is callable, but calling it builds no application (every update a 500).
    for cls in ("telegram.ext.ApplicationBuilder", "botsessions.ptb.SessionApplication"):
        [(found, text)] = messages({"APPLICATION": cls})
        assert (found, "is a class" in text) == ("botsessions.E012", True)
    assert messages({"APPLICATION": APP}) == []  # a function: not called by the check


def test_update_types_telegram_does_not_send_are_refused():
    [(found, text)] = messages({"APPLICATION": APP, "ALLOWED_UPDATES": ["message", "mesage"]})
    assert found == "botsessions.E010" and "'mesage'" in text and "'message'," not in text
    assert messages({"APPLICATION": APP, "ALLOWED_UPDATES": ["message", "callback_query"]}) == []


def test_unknown_settings_of_a_bot_warn():
    [(found, text)] = messages({"APPLICATION": APP, "ALLOWED_UPDATE": ["message"]})
    assert found == "botsessions.W003" and "'ALLOWED_UPDATE'" in text


def test_an_alias_is_a_non_empty_string():
    assert ("botsessions.E002" in dict(messages({"APPLICATION": APP}, alias=""))) is True
    assert ("botsessions.E002" in dict(messages({"APPLICATION": APP}, alias=5))) is True


@override_settings(ROOT_URLCONF=__name__, BOTSESSIONS_BOTS={"default": {"APPLICATION": APP}})
def test_a_webhook_url_for_a_bot_that_is_not_configured():
    [message] = check_webhook_urls()
    assert message.id == "botsessions.E013"
    assert "'typo/'" in message.msg and "'defualt'" in message.msg


def test_a_bot_module_failing_as_it_is_imported_is_reported_not_raised():
    [(found, text)] = messages({"APPLICATION": "tests.no_such_package.bot.build"})
    assert found == "botsessions.E012"
    [(found, text)] = messages({"APPLICATION": "tests.failing_bot_module.build"})
    assert found == "botsessions.E012" and "KeyError" in text


def test_a_project_without_urls_has_no_webhook_url_to_check(settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {"default": {"APPLICATION": APP}}
    del settings.ROOT_URLCONF
    assert check_webhook_urls() == []
