"""The test kit (botsessions.testing and its pytest plugin), used as bot authors use it.

The demo bot runs through the kit in each kind of Django test; the kit's own bot
(tests/kit_bot.py) has a handler for every update the kit builds.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import TestCase, TransactionTestCase, override_settings

from botproject.models import Purchase
from botsessions import testing
from botsessions.models import Session
from botsessions.runner import runner_for
from botsessions.testing import (
    BotClient,
    chat_type_of,
    message,
    webhook_path,
)

from .redis_support import URL as REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
GROUP, SUPERGROUP = -4001, -1001234567890
KIT_BOTS = {
    "default": {"APPLICATION": "botproject.bot.build_application", "WEBHOOK_SECRET": "s1"},
    "kit": {"APPLICATION": "tests.kit_bot.build_application", "WEBHOOK_SECRET": "s2"},
}


@pytest.fixture
def kit(settings: Any, db: None) -> Any:
    """A client of the kit's own bot, mounted in a namespace of another URLconf."""
    settings.BOTSESSIONS_BOTS = KIT_BOTS
    settings.ROOT_URLCONF = "tests.kit_urls"
    with BotClient("kit") as client:
        yield client


# -- in each kind of test --------------------------------------------------------------


def demo_conversation(bot: BotClient) -> None:
    """What every kind of test checks: replies, replies after commit, redelivery."""
    assert bot.send("🍕", chat_id=7, user_id=7).texts == []
    hunger = bot.send("/hunger", chat_id=7, user_id=7)
    assert (hunger.status, hunger.texts) == (200, ["Your hunger level is 1!"])
    bought = bot.send("/buy cake", chat_id=7, user_id=7)
    assert bought.texts == ["Bought cake. Purchases so far: 1."]  # sent after commit
    again = bot.post(bought.update)
    assert (again.status, again.outcome, again.texts, again.calls) == (200, "duplicate", [], [])
    assert Purchase.objects.filter(item="cake").count() == 1


@pytest.mark.django_db
def test_pytest_django_in_the_tests_transaction(bot_client: BotClient) -> None:
    assert transaction.get_connection().in_atomic_block
    demo_conversation(bot_client)


@pytest.mark.django_db(transaction=True)
def test_pytest_django_with_transaction_true(bot_client: BotClient) -> None:
    assert not transaction.get_connection().in_atomic_block
    demo_conversation(bot_client)


def test_the_fixture_needs_no_marker(bot_client: BotClient) -> None:
    assert bot_client.send("/stats", chat_id=8, user_id=8).texts == ["You have sent 0 messages."]


def test_after_commit_texts_also_inside_the_tests_own_capture(
    bot_client: BotClient, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        bought = bot_client.send("/buy tea", chat_id=9, user_id=9)
    assert bought.texts == ["Bought tea. Purchases so far: 1."]
    assert [c.method for c in bot_client.calls].count("sendMessage") == 1  # not sent twice


class DjangoTestCaseTests(TestCase):
    def setUp(self) -> None:
        self.bot = BotClient()
        self.addCleanup(self.bot.close)

    def test_conversation(self) -> None:
        demo_conversation(self.bot)

    def test_sessions_are_rolled_back_with_the_test(self) -> None:
        self.bot.send("🍕", chat_id=7, user_id=7)
        self.assertTrue(Session.objects.filter(key="chat:7").exists())


class DjangoTransactionTestCaseTests(TransactionTestCase):
    def test_conversation(self) -> None:
        with BotClient() as bot:
            demo_conversation(bot)

    def test_sessions_start_empty(self) -> None:
        self.assertFalse(Session.objects.exists())


# -- the builders, through the demo bot ---------------------------------------------


def test_a_command_gets_its_entity_and_the_chat_type_follows_the_id() -> None:
    update = message("/buy@test_bot cake", chat_id=-5, user_id=3)["message"]
    assert update["entities"] == [{"type": "bot_command", "offset": 0, "length": 13}]
    assert "entities" not in message("no /command", chat_id=1, user_id=1)["message"]
    # Telegram's command ends at the first character outside Latin letters, digits and _.
    for text, length in [("/hunger!", 7), ("/start,", 6), ("/a-b", 2), ("/x@b", 2)]:
        entities = message(text, chat_id=1, user_id=1)["message"]["entities"]
        assert entities == [{"type": "bot_command", "offset": 0, "length": length}], text
    assert "entities" not in message("/купить", chat_id=1, user_id=1)["message"]
    assert [chat_type_of(i) for i in (5, -5, -999999999999, SUPERGROUP)] == [
        "private",
        "group",
        "group",
        "supergroup",
    ]
    assert message("hi", chat_id=-5, user_id=3, chat_type="channel")["message"]["chat"][
        "type"
    ] == ("channel")


def test_commands_in_groups_and_addressed_to_the_bot(bot_client: BotClient) -> None:
    bot_client.send("🍕", chat_id=GROUP, user_id=1)
    bot_client.send("🍕", chat_id=GROUP, user_id=2)
    assert bot_client.send("/hunger@test_bot", chat_id=GROUP, user_id=2).texts == [
        "Your hunger level is 2!"
    ]


def test_an_edit_is_not_another_message(bot_client: BotClient) -> None:
    sent = bot_client.send("hello", chat_id=3, user_id=3)
    message_id = sent.update["message"]["message_id"]
    edit = bot_client.edit("hello there", chat_id=3, user_id=3, message_id=message_id)
    assert (edit.status, edit.outcome, edit.texts) == (200, "skipped", [])
    assert bot_client.send("/stats", chat_id=3, user_id=3).texts == ["You have sent 1 messages."]


def test_updates_the_demo_does_not_handle(bot_client: BotClient) -> None:
    answers = [
        bot_client.press("buy", chat_id=3, user_id=3, message_text="Menu"),
        bot_client.inline_query("pizza", user_id=3),
        bot_client.send_business("Is the oven on?", connection_id="conn-1", chat_id=3),
    ]
    assert [(a.status, a.outcome, a.calls) for a in answers] == [(200, "skipped", [])] * 3


def test_a_group_migration_moves_the_chats_sessions(bot_client: BotClient) -> None:
    bot_client.send("🍕", chat_id=GROUP, user_id=1)
    moved = bot_client.migrate(GROUP, SUPERGROUP, user_id=1)
    assert moved.update["message"]["migrate_to_chat_id"] == SUPERGROUP
    assert moved.status == 200
    other_notice = bot_client.migrate(GROUP, SUPERGROUP, user_id=1, in_new_chat=True)
    assert other_notice.update["message"]["chat"]["type"] == "supergroup"
    assert bot_client.send("/hunger", chat_id=SUPERGROUP, user_id=1).texts == [
        "Your hunger level is 1!"
    ]


# -- the builders, through a bot that handles each of them ------------------------


def test_a_button_press(kit: BotClient) -> None:
    first = kit.press("pizza", chat_id=5, user_id=6, message_id=40, message_text="Menu")
    assert [call.method for call in first.calls] == ["answerCallbackQuery", "editMessageText"]
    assert first.calls[0].params["text"] == "pressed pizza"
    edit = first.calls_to("editMessageText")[0].params
    assert (edit["chat_id"], edit["message_id"]) == (5, 40)
    second = kit.press("pizza", chat_id=5, user_id=6, message_id=40)
    assert second.calls_to("editMessageText")[0].params["text"] == "pizza pressed 2 times"
    assert first.texts == []  # texts are sent messages; an edit is a call


def test_an_inline_query(kit: BotClient) -> None:
    answered = kit.inline_query("margherita", user_id=6)
    [call] = answered.calls
    assert call.method == "answerInlineQuery"
    assert call.params["results"][0]["title"] == "MARGHERITA"


def test_a_business_message_has_the_business_accounts_session(kit: BotClient) -> None:
    sent = kit.send_business("Open?", connection_id="conn-1", chat_id=6)
    assert sent.texts == ["business conn-1: Open?"]
    assert sent.calls[0].params["business_connection_id"] == "conn-1"
    assert Session.objects.filter(key="business:conn-1:chat:6").exists()
    assert not Session.objects.filter(key="chat:6").exists()


def test_an_edited_message(kit: BotClient) -> None:
    edited = kit.edit("fixed typo", chat_id=-5, user_id=6, message_id=3)
    assert edited.texts == ["edited to fixed typo"]
    assert edited.calls[0].params["chat_id"] == -5


def test_texts_before_and_after_commit_in_order(kit: BotClient) -> None:
    later = kit.send("/later", chat_id=5, user_id=5)
    assert later.texts == ["now", "after commit"]
    assert [(call.ok, call.error) for call in later.calls] == [(True, None)] * 2


# -- answers of the fake Bot API --------------------------------------------------


def test_a_method_answered_with_a_custom_result(kit: BotClient) -> None:
    assert kit.send("/status", chat_id=-5, user_id=6).texts == ["You are member."]
    kit.answer(
        "getChatMember",
        lambda params: {
            "status": "administrator",
            "user": {"id": params["user_id"], "is_bot": False, "first_name": "A"},
            "can_be_edited": False,
            "is_anonymous": False,
            "can_manage_chat": True,
            "can_delete_messages": True,
            "can_manage_video_chats": True,
            "can_restrict_members": True,
            "can_promote_members": False,
            "can_change_info": True,
            "can_invite_users": True,
            "can_post_stories": False,
            "can_edit_stories": False,
            "can_delete_stories": False,
        },
    )
    asked = kit.send("/status", chat_id=-5, user_id=6)
    assert asked.calls[0].params == {"chat_id": -5, "user_id": 6}
    assert asked.texts == ["You are administrator."]


def test_a_method_that_fails_fails_the_handler(kit: BotClient) -> None:
    kit.fail("sendMessage", "Forbidden: bot was blocked by the user", error_code=403)
    blocked = kit.send("/later", chat_id=5, user_id=5)
    assert (blocked.status, blocked.outcome) == (200, "handler_failed")
    assert [call.method for call in blocked.calls] == ["sendMessage"]  # none after commit


def test_a_message_that_failed_is_no_text_sent(kit: BotClient) -> None:
    """``texts`` is what reached the chat; the failed call stays in ``calls``."""
    kit.fail("sendMessage", "Forbidden: bot was blocked by the user", error_code=403)
    blocked = kit.send("/later", chat_id=5, user_id=5)
    assert blocked.texts == []
    [call] = blocked.calls
    assert (call.params["text"], call.ok) == ("now", False)
    assert call.error == "Forbidden: bot was blocked by the user"


def test_an_unknown_method_cannot_be_answered_or_made_to_fail(kit: BotClient) -> None:
    """A misspelt method would fail nothing, and the test would pass for a wrong reason."""
    with pytest.raises(ValueError, match=r"'sendMesage' is not .* did you mean 'sendMessage'"):
        kit.fail("sendMesage", "Forbidden: bot was blocked by the user", error_code=403)
    with pytest.raises(ValueError, match=r"did you mean 'getChatMember'\?$"):
        kit.answer("get_chat_member", {"status": "administrator"})
    with pytest.raises(ValueError, match=r"^'frobnicate' is not a Bot API method [^;]*$"):
        kit.fail("frobnicate", "Bad Request")
    assert kit.send("/later", chat_id=5, user_id=5).texts == ["now", "after commit"]


@pytest.mark.parametrize("method", ["close", "logOut", "getMe", "sendMessage", "setWebhook"])
def test_every_bot_api_method_can_be_answered_or_made_to_fail(kit: BotClient, method: str) -> None:
    kit.answer(method, True)
    kit.fail(method, "Too Many Requests: retry after 5", error_code=429)


def test_flood_control_and_a_migrated_chat_raise_what_ptb_raises() -> None:
    """Telegram says how long to wait, or where the chat went, in the error's
    ``parameters``; PTB raises RetryAfter and ChatMigrated from them."""
    import asyncio

    from telegram import Bot
    from telegram.error import ChatMigrated, RetryAfter

    api = testing.FakeBotAPI()
    bot = Bot("123456:TEST-token", request=api)
    api.fail("sendMessage", "Too Many Requests: retry after 5", error_code=429, retry_after=5)
    api.fail("sendPhoto", "Bad Request: group chat was upgraded", migrate_to_chat_id=-1007)
    with pytest.raises(RetryAfter) as flood:
        asyncio.run(bot.send_message(1, "hi"))
    assert "retry in 5 seconds" in str(flood.value).lower()
    with pytest.raises(ChatMigrated) as moved:
        asyncio.run(bot.send_photo(-5, "photo-id"))
    assert moved.value.new_chat_id == -1007


@pytest.mark.parametrize(
    ("method", "call", "expected"),
    [
        ("sendMessage", lambda bot: bot.send_message(1, "hi"), "a message"),
        ("editForumTopic", lambda bot: bot.edit_forum_topic(-5, 7, name="x"), True),
        ("sendGift", lambda bot: bot.send_gift("gift-id", user_id=1), True),
        ("createChatInviteLink", lambda bot: bot.create_chat_invite_link(-5), "refused"),
        ("stopPoll", lambda bot: bot.stop_poll(-5, 3), "refused"),
    ],
)
def test_default_answers_follow_what_ptb_says_each_method_returns(
    method: str, call: Any, expected: object
) -> None:
    """A made-up object would be wrong or fail PTB's parsing: a method returning one has
    no default answer, and says so (``answer()`` gives it one)."""
    import asyncio

    from telegram import Bot, Message
    from telegram.error import BadRequest

    bot = Bot("123456:TEST-token", request=testing.FakeBotAPI())
    if expected == "refused":
        # PTB capitalises the message, lowering the rest.
        with pytest.raises(BadRequest, match=f"(?i)no answer for {method}: give one with answer"):
            asyncio.run(call(bot))
    elif expected == "a message":
        assert isinstance(asyncio.run(call(bot)), Message)
    else:
        assert asyncio.run(call(bot)) is expected


def test_nothing_reaches_the_network(bot_client: BotClient) -> None:
    bot_client.send("/hunger", chat_id=1, user_id=1)
    bot = runner_for("default").application.bot
    # The transport swap relies on PTB keeping both request objects in Bot._request.
    assert bot._request == (bot_client.api, bot_client.api)
    assert bot.request is bot_client.api
    assert [call.method for call in bot_client.calls] == ["getMe", "sendMessage"]


def test_closing_drops_the_application(db: None) -> None:
    with BotClient() as client:
        client.send("/hunger", chat_id=1, user_id=1)
        used = runner_for("default").application
    assert runner_for("default").application is not used
    assert runner_for("default").application.bot.request is not client.api


def test_closing_gives_a_module_level_application_its_own_transport_back(
    db: None, settings: Any
) -> None:
    """An application built once, at import, is the same object for every client."""
    settings.BOTSESSIONS_BOTS = {
        "default": {"APPLICATION": "tests.kit_bot.module_application", "WEBHOOK_SECRET": "s"}
    }
    from .kit_bot import module_application

    own = module_application.bot.request
    with BotClient() as client:
        assert client.send("/status", chat_id=1, user_id=1).texts == ["You are member."]
        assert module_application.bot.request is client.api
    assert module_application.bot.request is own
    with BotClient() as again:  # and a later client fakes it again
        assert again.send("/status", chat_id=1, user_id=1).texts == ["You are member."]


def test_a_bot_without_a_webhook_secret_is_named_not_answered_403(db: None, settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {"default": {"APPLICATION": "botproject.bot.build_application"}}
    with BotClient() as client, pytest.raises(ImproperlyConfigured, match="no WEBHOOK_SECRET"):
        client.send("/hunger", chat_id=1, user_id=1)


def test_a_second_client_of_the_same_bot_sends_new_update_ids(db: None) -> None:
    with BotClient() as first:
        first.send("🍕", chat_id=2, user_id=2)
    with BotClient() as second:
        assert second.send("/hunger", chat_id=2, user_id=2).texts == ["Your hunger level is 1!"]


def test_update_ids_count_up_from_the_clock() -> None:
    """A process starting later starts above the ids an earlier one sent (unless that one
    sent more than one a millisecond, and ran ahead of the clock)."""
    first = message("a", chat_id=1, user_id=1)["update_id"]
    second = message("b", chat_id=1, user_id=1)["update_id"]
    assert first < second and first % 1000 == second % 1000 == testing._process_slot()
    earlier = testing._update_id_counter(slot=5)
    sent = [next(earlier) for _ in range(3)]
    time.sleep(0.01)
    restarted = next(testing._update_id_counter(slot=5))  # where a new process would start
    assert sent[-1] < restarted < 2**53


def test_an_xdist_worker_takes_its_number_as_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw12")
    assert testing._process_slot() == 12
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert testing._process_slot() == os.getpid() % 1000


def test_processes_running_at_once_never_send_the_same_update_id() -> None:
    """pytest-xdist workers sharing a Redis prefix: each sends ids of its own."""
    ids = [testing._update_id_counter(slot) for slot in (7, 8)]
    sent = [[next(counter) for _ in range(5000)] for counter in ids]
    assert not set(sent[0]) & set(sent[1])
    assert all(sorted(set(each)) == each for each in sent)  # and each counts up


# Posts two updates to the kit's bot with its sessions in Redis, in a process of its own,
# as a test run does: argv is the Redis URL and the prefix.
REDIS_RUN = """
import sys

import django

django.setup()
from django.test.utils import override_settings

from botsessions.testing import BotClient

bots = {"kit": {"APPLICATION": "tests.kit_bot.build_redis_application", "WEBHOOK_SECRET": "s"}}
redis = {"KIT_REDIS_URL": sys.argv[1], "KIT_REDIS_PREFIX": sys.argv[2]}
with override_settings(BOTSESSIONS_BOTS=bots, ROOT_URLCONF="tests.kit_urls", **redis):
    with BotClient("kit") as bot:
        for _ in range(2):
            print(bot.send("/later", chat_id=5, user_id=5).outcome)
"""


def test_the_next_test_run_is_no_redelivery_to_redis(prefix: str) -> None:
    """Redis keeps the ids of the updates it processed for a day, across test runs."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": "sqlite:///:memory:",  # the sessions are in Redis
    }
    for run in ("first", "second"):
        done = subprocess.run(
            [sys.executable, "-c", REDIS_RUN, REDIS_URL, prefix],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["committed", "committed"], f"{run} run: {done.stdout}"


# -- sessions in a database of their own ---------------------------------------------

MULTI_DB_SETTINGS = """
import copy
import os
from pathlib import Path

from tests.settings import *  # noqa: F403

# The sessions in a database of their own, where a router sends them.
sessions = copy.deepcopy(DATABASES["default"])
if str(sessions["ENGINE"]).endswith("sqlite3"):
    here = Path(__file__).parent
    sessions["NAME"] = str(here / "sessions.sqlite3")
    sessions["TEST"] = {"NAME": str(here / f"test-sessions-{os.getpid()}.sqlite3")}
else:
    sessions["TEST"] = {"NAME": DATABASES["default"]["TEST"]["NAME"] + "_sessions"}
DATABASES = {**DATABASES, "sessions": sessions}
DATABASE_ROUTERS = ["multi_db_settings.SessionsRouter"]
BOTSESSIONS_BOTS = {
    "kit": {"APPLICATION": "tests.kit_bot.build_application", "WEBHOOK_SECRET": "s"}
}
ROOT_URLCONF = "tests.kit_urls"


class SessionsRouter:
    def db_for_read(self, model, **hints):
        return "sessions" if model._meta.app_label == "botsessions" else None

    db_for_write = db_for_read
"""

MULTI_DB_TESTS = """
import pytest

from botsessions.testing import BotClient

NOT_ALLOWED = "Database queries to 'sessions' are not allowed in this test"


@pytest.mark.django_db
def test_not_declared():
    with BotClient("kit") as bot, pytest.raises(AssertionError, match=NOT_ALLOWED):
        bot.send("/later", chat_id=1, user_id=1)


@pytest.mark.django_db(transaction=True)
def test_not_declared_in_a_transactional_test():
    with BotClient("kit") as bot, pytest.raises(AssertionError, match=NOT_ALLOWED):
        bot.send("/later", chat_id=1, user_id=1)


@pytest.mark.django_db(databases=["default", "sessions"])
def test_declared():
    with BotClient("kit") as bot:
        assert bot.send("/later", chat_id=1, user_id=1).texts == ["now", "after commit"]
"""


def test_a_sessions_database_the_test_may_not_use_is_named(tmp_path: Path) -> None:
    """Without ``databases=`` for it, Django's own refusal, not the webhook's 503."""
    (tmp_path / "multi_db_settings.py").write_text(textwrap.dedent(MULTI_DB_SETTINGS))
    (tmp_path / "test_multi_db.py").write_text(textwrap.dedent(MULTI_DB_TESTS))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "multi_db_settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


# -- finding the webhook ------------------------------------------------------------


def test_the_webhook_is_found_by_its_bot(settings: Any) -> None:
    assert webhook_path("default") == "/telegram/webhook/"
    settings.ROOT_URLCONF = "tests.kit_urls"
    assert webhook_path("default") == "/demo/webhook/"
    assert webhook_path("kit") == "/kit/hook/"
    with pytest.raises(LookupError, match="'nobody'"):
        webhook_path("nobody")
    with pytest.raises(LookupError, match=r"takes arguments.*give the client path="):
        webhook_path("tokened")


def test_a_webhook_url_with_an_argument(settings: Any, db: None) -> None:
    settings.BOTSESSIONS_BOTS = {**KIT_BOTS, "tokened": KIT_BOTS["default"]}
    settings.ROOT_URLCONF = "tests.kit_urls"
    with BotClient("tokened", path="/by-token/abc/") as client:
        assert client.send("🍕", chat_id=1, user_id=1).outcome == "committed"


def test_an_explicit_path_and_the_secret(settings: Any, db: None) -> None:
    settings.BOTSESSIONS_BOTS = KIT_BOTS
    settings.ROOT_URLCONF = "tests.kit_urls"
    with BotClient(path="/demo/webhook/") as client:
        assert client.send("/hunger", chat_id=1, user_id=1).status == 200
    with BotClient("kit", path="/demo/webhook/") as client:  # the other bot's secret
        assert client.send("/hunger", chat_id=1, user_id=1).status == 403


@override_settings(ROOT_URLCONF="tests.async_urls")
class AsyncViewTests(TransactionTestCase):
    def test_the_async_view_in_a_transactional_test(self) -> None:
        with BotClient() as bot:
            demo_conversation(bot)


@pytest.mark.django_db
def test_the_async_view_refuses_a_test_transaction(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.async_urls"
    with BotClient() as bot, pytest.raises(RuntimeError, match="transactional test"):
        bot.send("/hunger", chat_id=1, user_id=1)


# -- the plugin and the README ------------------------------------------------------


def test_the_plugin_is_an_entry_point_and_imports_nothing_of_django() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"botsessions": "botsessions.pytest_plugin"}
    code = (
        "import sys, botsessions.pytest_plugin as p; from django.conf import settings;"
        "assert p.bot_client; assert not settings.configured;"
        "assert not [m for m in sys.modules if m in "
        "('botsessions.models', 'botsessions.testing', 'django.test')]"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def readme_testing_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your bot", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def test_the_readme_example_passes_with_the_plugin(tmp_path: Path) -> None:
    """Run as a user would: its own test file, the plugin loaded as pytest loads it."""
    (tmp_path / "test_readme_bot.py").write_text(readme_testing_example())
    # Installed (pip install .), the entry point loads the plugin; from a checkout, -p does.
    installed = any(
        point.value == "botsessions.pytest_plugin"
        for point in importlib.metadata.entry_points(group="pytest11")
    )
    load = [] if installed else ["-p", "botsessions.pytest_plugin"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *load,
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b[3-9] passed\b", result.stdout), result.stdout
