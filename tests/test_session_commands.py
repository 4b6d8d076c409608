"""showsession, resetsession and deletesession: one session, in Redis or in the database.

The Redis sessions are those of the "cache" bot of ``tests/test_admin_storages.py``
(fragments ``menu`` and ``draft`` in Redis, ``user`` in the database); the database
ones those of the demo bot ("default", fragments ``chat`` and ``user``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from telegram.ext import Application, ApplicationBuilder

from botsessions import DataclassSerializer, Sessions, use_sessions
from botsessions.models import Session

from . import test_admin, test_admin_storages
from .fakebotapi import FakeBotAPI
from .redis_support import URL
from .servers import REPO, manage, server_env
from .test_admin import BROKEN_ID
from .test_admin_storages import CHAT, USER, name, store, stored

pytestmark = pytest.mark.django_db

# The cache bot's Redis prefix (configured for the test); ``raw`` is conftest's client.
prefix = test_admin_storages.prefix
# The "broken" bot, whose initials fail (configured for the test).
broken_bot = test_admin.broken_bot


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_showsession_in_redis(prefix: str) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "<pay>", "items": [1, 2]}, revision=3)
    output = run("showsession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    assert "Bot:       cache (555555)" in output
    assert f"Key:       m:chat:{CHAT} (chat {CHAT})" in output
    assert "RedisStorage" in output
    assert "Revision:  3" in output and "Expires:   never" in output
    assert '"step": "<pay>"' in output and '"items": [\n' in output  # indented JSON


def test_showsession_in_the_database() -> None:
    Session.objects.create(bot_id=123456, fragment="chat", key="chat:42", data={"pizza_count": 2})
    output = run("showsession", "chat", "chat:42")
    assert "default (123456)" in output
    assert "Storage:   DatabaseStorage(using='default')" in output  # not <... at 0x7f...>
    assert '"pizza_count": 2' in output and "Revision:  1" in output


def test_showsession_says_the_version_as_configured() -> None:
    Session.objects.create(
        bot_id=123456, fragment="chat", key="chat:42", data={}, version=Decimal("2")
    )
    assert "Version:   2\n" in run("showsession", "chat", "chat:42")


def test_showsession_escapes_what_a_terminal_would_obey() -> None:
    key = "chat:1\u202egnp.exe\x1b]0;owned\x07"
    data = {"note": "a\u202eb", "esc": "\x1b[2J", "c1": "\x9b"}
    Session.objects.create(bot_id=123456, fragment="chat", key=key, data=data)

    output = run("showsession", "chat", key)

    for raw in ("\u202e", "\x1b", "\x07", "\x9b"):
        assert raw not in output
    assert "Key:       chat:1\\u202egnp.exe\\u001b]0;owned\\u0007\n" in output
    assert '"note": "a\\u202eb"' in output and '"esc": "\\u001b[2J"' in output
    assert '"c1": "\\u009b"' in output


def test_a_bad_argument_is_escaped_in_its_command_error() -> None:
    with pytest.raises(CommandError) as raised:
        run("showsession", "chat\u202e\x1b[2J", "chat:1")
    assert "\u202e" not in str(raised.value) and "\x1b" not in str(raised.value)
    assert "chat\\u202e\\u001b[2J" in str(raised.value)


@pytest.mark.parametrize(
    ("fragment", "error"),
    [
        ("menu", "initial data could not be made: RuntimeError: the menu service is down"),
        ("prefs", "initial data could not be made: KeyError: 'lang'"),
        ("codec", "initial data cannot be stored: LookupError: no codec for sessions"),
    ],
)
def test_resetsession_of_an_initial_that_fails_is_a_one_line_command_error(
    broken_bot: None, fragment: str, error: str
) -> None:
    Session.objects.create(bot_id=BROKEN_ID, fragment=fragment, key="chat:1", data={"n": 5})

    with pytest.raises(CommandError) as raised:
        run("resetsession", fragment, "chat:1", "--bot", "broken")

    assert error in str(raised.value) and "\n" not in str(raised.value)
    assert Session.objects.get(key="chat:1").data == {"n": 5}


def test_resetsession_in_redis_and_in_the_database(prefix: str, raw: Any) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=3)
    output = run("resetsession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    assert "reset to its initial data" in output
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (4, {"step": "start"})

    Session.objects.create(bot_id=123456, fragment="chat", key="chat:42", data={"pizza_count": 2})
    run("resetsession", "chat", "chat:42")
    row = Session.objects.get(key="chat:42")
    assert (row.data, row.revision) == ({"pizza_count": 0}, 2)


TYPED_ID = 343434


@dataclass
class Basket:
    items: list[str] = field(default_factory=list)


def build_typed_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions(initial=Basket, serializer=DataclassSerializer(Basket))
    return use_sessions(ApplicationBuilder().token(f"{TYPED_ID}:typed-token"), sessions).build()


def test_resetsession_stores_a_dataclass_sessions_initial_data(settings: Any) -> None:
    """The initial data is the serializer's text: a dataclass's cannot be re-read from JSON."""
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "typed": {"APPLICATION": "tests.test_session_commands.build_typed_application"},
    }
    Session.objects.create(bot_id=TYPED_ID, fragment="", key="chat:1", data={"items": ["cake"]})

    assert "reset to its initial data" in run("resetsession", "-", "chat:1", "--bot", "typed")

    row = Session.objects.get(key="chat:1")
    assert (row.data, row.revision) == ({"items": []}, 2)


def test_resetting_to_initial_data_none_deletes(prefix: str, raw: Any) -> None:
    store("draft", f"user:{USER}", {"text": "hi"})
    assert "deleted (its initial data is None)" in run(
        "resetsession", "draft", f"user:{USER}", "--bot", "cache"
    )
    assert raw.exists(name(prefix, "draft", f"user:{USER}")) == 0


def test_deletesession_in_redis_and_in_the_database(prefix: str, raw: Any) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    assert "deleted" in run("deletesession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    assert raw.exists(name(prefix, "menu", f"m:chat:{CHAT}")) == 0

    Session.objects.create(bot_id=123456, fragment="user", key="user:1", data={"messages": 2})
    run("deletesession", "user", "user:1")
    assert not Session.objects.exists()


def test_a_value_not_in_the_storages_format_can_be_shown_and_deleted(
    prefix: str, raw: Any
) -> None:
    raw.hset(name(prefix, "menu", "m:chat:5"), "step", "x")
    assert "the stored value cannot be read" in run(
        "showsession", "menu", "m:chat:5", "--bot", "cache"
    )
    run("deletesession", "menu", "m:chat:5", "--bot", "cache")
    assert raw.exists(name(prefix, "menu", "m:chat:5")) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["showsession", "chat", "chat:1", "--bot", "nosuch"], 'no bot "nosuch" with sessions'),
        (["showsession", "nosuch", "chat:1"], 'has no fragment "nosuch" (fragments: chat, user)'),
        (["resetsession", "chat", "chat:404"], "No session 'chat:404' in default (123456) · chat"),
        (["deletesession", "chat", "k" * 300], "is not a session key"),
        (["showsession", "chat", "a\x00b"], "is not a session key"),
        (["showsession", "chat", ""], "is not a session key"),
    ],
)
def test_bad_arguments_are_one_line_command_errors(argv: list[str], message: str) -> None:
    with pytest.raises(CommandError) as raised:
        run(*argv)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_redis_going_away_is_a_command_error(prefix: str) -> None:
    from botsessions import bots

    test_admin_storages._prefix["url"] = "redis://127.0.0.1:1/0"
    bots._forget_session_configs()
    with pytest.raises(CommandError, match="Redis failed"):
        run("showsession", "menu", "m:chat:1", "--bot", "cache")


def test_the_commands_work_on_a_storage_given_its_client(prefix: str, raw: Any) -> None:
    """client=: every lookup of a command runs on a loop of its own, on a client of its own."""
    from botsessions import bots

    test_admin_storages._prefix["client"] = True
    bots._forget_session_configs()
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=3)
    assert "Revision:  3" in run("showsession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    run("resetsession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (4, {"step": "start"})
    run("deletesession", "menu", f"m:chat:{CHAT}", "--bot", "cache")
    assert raw.exists(name(prefix, "menu", f"m:chat:{CHAT}")) == 0


def test_any_failure_of_the_storage_is_a_command_error(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botsessions.storage.redis import RedisStorage

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Event loop is closed")

    monkeypatch.setattr(RedisStorage, "read_many", broken)
    with pytest.raises(CommandError, match="Event loop is closed"):
        run("showsession", "menu", "m:chat:1", "--bot", "cache")


@pytest.mark.slow
def test_from_a_terminal_bad_input_is_one_line_and_exit_code_1(
    api: FakeBotAPI, tmp_path: Any
) -> None:
    """The demo with REDIS_URL: a session that is not there, and a bot that is not."""
    env = server_env(
        api_base_url=api.base_url,
        database=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL=URL,
        REDIS_PREFIX="bstest:terminal:",
    )
    cases = {
        ("showsession", "chat", "chat:1"): "No session 'chat:1' in default (123456) · chat",
        ("deletesession", "chat", "chat:1", "--bot", "x"): 'no bot "x" with sessions here',
    }
    for argv, message in cases.items():
        done = subprocess.run(manage(*argv), cwd=REPO, env=env, capture_output=True, timeout=60)
        stderr = done.stderr.decode()
        assert done.returncode == 1, stderr
        assert stderr.startswith("CommandError: ") and len(stderr.splitlines()) == 1, stderr
        assert message in stderr
