"""The Bot API management commands against the fake Bot API: setwebhook, deletewebhook,
webhookinfo, and the failures a person must be told about in plain words."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ConversationHandler

from botsessions import DjangoPersistence, use_sessions
from botsessions.bots import forget_applications

from .fakebotapi import FakeBotAPI
from .servers import REPO, TOKEN, free_port, manage, server_env

URL = "https://bot.example.com/telegram/webhook/"


@pytest.fixture
def fake(api: FakeBotAPI, settings: Any) -> Iterator[FakeBotAPI]:
    settings.TELEGRAM_API_BASE_URL = api.base_url
    forget_applications()
    call_command("deletewebhook", stdout=StringIO())
    api.reset()
    yield api
    forget_applications()


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_setwebhook_sends_secret_and_every_update_type(fake: FakeBotAPI) -> None:
    output = run("setwebhook", URL)
    assert fake.webhook == {
        "url": URL,
        "secret_token": "test-secret",
        "allowed_updates": list(Update.ALL_TYPES),
        "drop_pending_updates": False,
    }
    assert f"set to {URL}" in output
    assert "Secret token: sent" in output


def test_setwebhook_uses_configured_allowed_updates_and_drops(
    fake: FakeBotAPI, settings: Any
) -> None:
    settings.BOTSESSIONS_BOTS = {
        "default": {
            **settings.BOTSESSIONS_BOTS["default"],
            "ALLOWED_UPDATES": ["message", "callback_query"],
        }
    }
    fake.queue_message("waiting")
    run("setwebhook", URL, "--drop-pending-updates")
    assert fake.webhook["allowed_updates"] == ["message", "callback_query"]
    assert fake.webhook["drop_pending_updates"] is True
    assert fake.pending_updates() == []


def test_setwebhook_without_secret_warns(fake: FakeBotAPI, settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {"default": {"APPLICATION": "botproject.bot.build_application"}}
    output = run("setwebhook", URL)
    assert "secret_token" not in fake.webhook
    assert "No WEBHOOK_SECRET is configured" in output


@pytest.mark.parametrize(
    "url",
    [
        "bot.example.com/hook",
        "http://bot.example.com/hook",
        "ftp://bot.example.com/hook",
        "https://",
        "https:///hook",
        "https://[::1/hook",
        "https://bot.example.com/a hook",
        "https://bot.example.com/\x00",
    ],
)
def test_setwebhook_refuses_what_telegram_would_not_deliver_to(fake: FakeBotAPI, url: str) -> None:
    with pytest.raises(CommandError, match=r"must be an https:// URL \(http:// only with"):
        run("setwebhook", url)
    assert fake.calls == []


def test_setwebhook_takes_http_for_a_local_bot_api_server(fake: FakeBotAPI) -> None:
    output = run("setwebhook", "http://127.0.0.1:8000/telegram/webhook/", "--local-bot-api")
    assert fake.webhook["url"] == "http://127.0.0.1:8000/telegram/webhook/"
    assert "set to http://127.0.0.1:8000/telegram/webhook/" in output
    with pytest.raises(CommandError, match="must be an http:// or https:// URL, got 'ftp:"):
        run("setwebhook", "ftp://127.0.0.1/", "--local-bot-api")


def test_setwebhook_of_an_unknown_bot_is_a_clear_error(fake: FakeBotAPI) -> None:
    with pytest.raises(CommandError, match="No bot 'nosuch' in BOTSESSIONS_BOTS"):
        run("setwebhook", URL, "--bot", "nosuch")
    assert fake.calls == []


def test_the_token_is_never_printed(fake: FakeBotAPI) -> None:
    """A webhook URL holding the token is a common way to make it unguessable."""
    url = f"{URL}{TOKEN}/"
    output = run("setwebhook", url) + run("webhookinfo")
    assert fake.webhook["url"] == url
    assert f"set to {URL}<token>/" in output and f"URL:               {URL}<token>/" in output
    assert TOKEN not in output and TOKEN.split(":")[1] not in output
    with pytest.raises(CommandError) as refused:
        run("setwebhook", url.replace("https", "http"))
    assert TOKEN.split(":")[1] not in str(refused.value)


def test_webhookinfo_and_deletewebhook(fake: FakeBotAPI) -> None:
    run("setwebhook", URL)
    info = run("webhookinfo")
    assert f"URL:               {URL}" in info
    assert "Pending updates:   0" in info
    assert "Allowed updates:   message, edited_message," in info

    assert "deleted" in run("deletewebhook", "--drop-pending-updates")
    assert fake.webhook == {}
    assert fake.calls_to("deleteWebhook")[-1].params["drop_pending_updates"] == "true"
    assert "(none: the bot is not using a webhook)" in run("webhookinfo")


def test_commands_act_on_the_bot_named_by_alias(fake: FakeBotAPI, settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "second": {
            "APPLICATION": "tests.webhook_bots.second_demo_bot",
            "WEBHOOK_SECRET": "second-secret",
        },
    }
    run("setwebhook", URL, "--bot", "second")
    call = fake.calls_to("setWebhook")[-1]
    assert (call.token, call.params["secret_token"]) == ("654321:OTHER-token", "second-secret")


COMMANDS = [("setwebhook", URL), ("deletewebhook",), ("webhookinfo",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_missing_token_is_a_clear_error(fake: FakeBotAPI, settings: Any, command: Any) -> None:
    settings.TELEGRAM_BOT_TOKEN = ""
    with pytest.raises(CommandError, match="TELEGRAM_BOT_TOKEN is not set"):
        run(*command)
    assert fake.calls == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_unreachable_bot_api_is_a_clear_error(
    fake: FakeBotAPI, settings: Any, command: Any
) -> None:
    settings.TELEGRAM_API_BASE_URL = f"http://127.0.0.1:{free_port()}/bot"
    with pytest.raises(CommandError, match="Could not reach the Bot API for bot 'default'"):
        run(*command)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_refused_token_is_a_clear_error(fake: FakeBotAPI, settings: Any, command: Any) -> None:
    settings.TELEGRAM_BOT_TOKEN = "not-a-token"
    with pytest.raises(CommandError, match="Telegram refused the token of bot 'default'"):
        run(*command)


@pytest.mark.parametrize("command", ["webhookinfo", "setwebhook", "deletewebhook", "runbot"])
def test_unknown_alias_is_a_clear_error_in_one_line(fake: FakeBotAPI, command: str) -> None:
    out = StringIO()
    args = [URL] if command == "setwebhook" else []
    with pytest.raises(CommandError, match="No bot 'nope' in BOTSESSIONS_BOTS"):
        call_command(command, *args, "--bot", "nope", stdout=out, stderr=out)
    assert out.getvalue() == ""  # nothing said before the error


def test_bot_api_refusal_is_a_clear_error(fake: FakeBotAPI) -> None:
    fake.fail_next("setWebhook", 400, "Bad Request: bad webhook: HTTPS url must be provided")
    with pytest.raises(
        CommandError,
        match=r"refused the request of bot .default.: Bad webhook: https url must be provided",
    ):
        run("setwebhook", URL)


async def _start(update: Any, context: Any) -> int:
    return 1


def conversation_timeout_bot() -> Application:  # type: ignore[type-arg]
    """A persistent conversation with a timeout: refused at start-up, runbot included."""
    builder = ApplicationBuilder().token(TOKEN).base_url(django_settings.TELEGRAM_API_BASE_URL)
    application = use_sessions(builder.persistence(DjangoPersistence())).build()
    conversation = ConversationHandler(
        entry_points=[CommandHandler("start", _start)],
        states={1: []},
        fallbacks=[],
        name="signup",
        persistent=True,
        conversation_timeout=60,
    )
    application.add_handler(conversation)
    return application


def test_runbot_refusing_a_bot_at_start_up_is_a_clear_error(
    fake: FakeBotAPI, settings: Any
) -> None:
    settings.BOTSESSIONS_BOTS = {
        "default": {"APPLICATION": "tests.test_commands.conversation_timeout_bot"}
    }
    with pytest.raises(CommandError) as refused:
        run("runbot")
    message = str(refused.value)
    assert message.startswith("Bot 'default' cannot run: ConversationHandler 'signup' has a ")
    assert "conversation_timeout" in message and "refused under runbot too" in message
    assert fake.calls_to("getUpdates") == []


def test_ctrl_c_is_the_process_s_again_once_runbot_has_ended(
    fake: FakeBotAPI, settings: Any
) -> None:
    """PTB's run_polling sends stop signals to its loop; runbot gives them back, so that a
    script or a test that ran it in-process can still be interrupted."""
    settings.BOTSESSIONS_BOTS = {
        "default": {"APPLICATION": "tests.test_commands.conversation_timeout_bot"}
    }
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(CommandError):
        run("runbot")  # refused once PTB's run_polling has set its handlers
    assert signal.getsignal(signal.SIGINT) is before


BAD_COMMAND_LINES = {
    "unknown-bot": (["setwebhook", URL, "--bot", "nosuch"], "No bot 'nosuch' in BOTSESSIONS_BOTS"),
    "http-url": (["setwebhook", "http://bot.example.com/hook"], "must be an https:// URL"),
    "huge-batch": (
        ["purgesessions", "--batch-size", "99999999999999999999"],
        "--batch-size must be a whole number from 1 to 10,000",
    ),
    "refused-token": (["webhookinfo"], "Telegram refused the token of bot 'default'"),
}


@pytest.mark.slow
def test_a_bad_argument_is_one_line_and_exit_code_1(api: FakeBotAPI, tmp_path: Any) -> None:
    """From a terminal, as an operator runs them: no traceback, and never the token."""
    env = server_env(api_base_url=api.base_url, database=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    api.fail_next("getMe", 401, "Unauthorized")  # for webhookinfo, the only one calling it
    running = {
        case: subprocess.Popen(
            manage(*argv), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for case, (argv, _) in BAD_COMMAND_LINES.items()
    }
    for case, process in running.items():
        stdout, stderr = (stream.decode() for stream in process.communicate(timeout=60))
        message = BAD_COMMAND_LINES[case][1]
        assert process.returncode == 1, (case, stdout, stderr)
        assert len(stderr.splitlines()) == 1 and stderr.startswith("CommandError: "), stderr
        assert message in stderr and "Traceback" not in stderr
        assert TOKEN.split(":")[1] not in stdout + stderr


BOTSESSIONS_COMMANDS = [
    "runbot",
    "setwebhook",
    "deletewebhook",
    "webhookinfo",
    "showsession",
    "resetsession",
    "deletesession",
    "purgesessions",
]


@pytest.mark.parametrize("name", BOTSESSIONS_COMMANDS)
def test_the_readmes_command_table_names_every_option(name: str) -> None:
    """Each command's own options appear in its row of README's table (Django's are left out)."""
    from django.core.management import load_command_class
    from django.core.management.base import BaseCommand

    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name} ")]
    rows += [line for line in readme.splitlines() if f"`, `{name} " in line]
    assert len(rows) == 1, rows
    parser = load_command_class("botsessions", name).create_parser("manage.py", name)
    django_own = BaseCommand().create_parser("manage.py", "x")._option_string_actions
    options = {
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings and action.option_strings[-1] not in django_own
    }
    cell = rows[0].split(f"`{name} ", 1)[1].split("`", 1)[0]
    assert sorted(option for option in options if option not in cell) == []
