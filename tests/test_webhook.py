"""The webhook view in-process, through Django's test client: fast, one rule per test.

The view runs on the test's thread and so does every query of the update (see
botsessions.unit), inside the test's transaction. The bots talk to the fake Bot API.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client
from telegram import Update

from botsessions.errors import LockTimeout, SessionConflict, StorageError
from botsessions.models import ProcessedUpdate, Session
from botsessions.storage.db import DatabaseStorage
from botsessions.webhook import TelegramWebhookView

from . import webhook_bots
from .fakebotapi import FakeBotAPI
from .servers import free_port
from .updates import ALICE, BOB, GROUP, callback_query, inline_query, message, poll_answer

pytestmark = pytest.mark.django_db

URL = "/telegram/webhook/"
SECRET = "test-secret"
BOT_ID = 123456


@pytest.fixture
def demo(fresh_bots: FakeBotAPI, settings: Any) -> FakeBotAPI:
    """The demo bot (and the test bots) talking to the fake Bot API, built afresh."""
    settings.BOTSESSIONS_BOTS = webhook_bots.BOTS
    webhook_bots.errors.clear()
    return fresh_bots


def post(
    client: Client,
    body: dict[str, Any] | bytes | str,
    *,
    url: str = URL,
    secret: str | None = SECRET,
    **extra: Any,
) -> Any:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.generic(
        "POST", url, data, content_type="application/json", headers=headers, **extra
    )


def rows() -> dict[tuple[str, str], Any]:
    return {(row.fragment, row.key): row.data for row in Session.objects.all()}


def assert_nothing_happened(api: FakeBotAPI) -> None:
    assert Session.objects.count() == 0
    assert ProcessedUpdate.objects.count() == 0
    # Not even getMe: the bot was never initialized, so no handler can have run.
    assert api.calls == []


# -- the demo flow ------------------------------------------------------------------


def test_demo_flow_commits_before_answering(client: Client, demo: FakeBotAPI) -> None:
    for text, user in (("🍕 please", BOB), ("just talking", BOB), ("🍕🍕 yes", ALICE)):
        response = post(client, message(text, chat_id=GROUP, user_id=user))
        assert response.status_code == 200
        assert response.json() == {"ok": True, "outcome": "committed"}
    assert demo.sent_texts() == []  # counting never replies
    assert rows() == {
        ("chat", f"chat:{GROUP}"): {"pizza_count": 2},
        ("user", f"user:{BOB}"): {"messages": 2},
        ("user", f"user:{ALICE}"): {"messages": 1},
    }

    assert post(client, message("/hunger", chat_id=GROUP, user_id=BOB)).status_code == 200
    assert post(client, message("/hunger@pizza_test_bot", chat_id=GROUP)).status_code == 200
    assert post(client, message("/stats", chat_id=GROUP, user_id=BOB)).status_code == 200
    assert demo.sent_texts() == [
        "Your hunger level is 2!",
        "Your hunger level is 2!",
        "You have sent 2 messages.",
    ]
    assert demo.calls_to("sendMessage")[0].params["chat_id"] == str(GROUP)

    response = post(client, message("/reset", chat_id=GROUP, user_id=BOB))
    assert response.json()["outcome"] == "committed"
    assert demo.sent_texts()[-1] == "Session reset."
    assert ("chat", f"chat:{GROUP}") not in rows()
    assert rows()[("user", f"user:{BOB}")] == {"messages": 2}  # /reset is per chat
    post(client, message("/hunger", chat_id=GROUP, user_id=BOB))
    assert demo.sent_texts()[-1] == "Your hunger level is 0!"
    assert len(demo.calls_to("getMe")) == 1  # initialized once, then reused


@pytest.mark.parametrize("update", [inline_query, poll_answer], ids=["inline", "poll"])
def test_update_without_chat_changes_nothing(
    client: Client, demo: FakeBotAPI, update: Any
) -> None:
    post(client, message("🍕", chat_id=GROUP, user_id=ALICE))
    before = list(Session.objects.values_list("key", "data", "revision"))
    response = post(client, update())
    assert response.status_code == 200
    assert response.json()["outcome"] == "skipped"
    assert list(Session.objects.values_list("key", "data", "revision")) == before
    assert demo.sent_texts() == []


def test_redelivered_update_is_not_counted_twice(client: Client, demo: FakeBotAPI) -> None:
    update = message("🍕", chat_id=GROUP, user_id=BOB)
    assert post(client, update).json()["outcome"] == "committed"
    assert post(client, update).json()["outcome"] == "duplicate"
    assert rows()[("chat", f"chat:{GROUP}")] == {"pizza_count": 1}


# -- rejections: nothing processed, nothing written ---------------------------------


@pytest.mark.parametrize(
    "secret",
    [None, "", "wrong", "test-secreT", "test-secret ", "test-secret-and-more", "тест"],
    ids=["missing", "empty", "wrong", "case", "space", "longer", "non-ascii"],
)
def test_wrong_or_missing_secret_is_403(client: Client, demo: FakeBotAPI, secret: Any) -> None:
    response = post(client, message("🍕"), secret=secret)
    assert response.status_code == 403
    assert response.json()["ok"] is False
    assert_nothing_happened(demo)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_only_post_is_allowed(client: Client, demo: FakeBotAPI, method: str) -> None:
    response = client.generic(
        method,
        URL,
        json.dumps(message("🍕")),
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert_nothing_happened(demo)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b"[]", "expected a JSON object"),
        (b'[{"update_id": 1}]', "expected a JSON object"),
        (b'"an update"', "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b"{}", "update_id must be an integer"),
        (b'{"update_id": "1"}', "update_id must be an integer"),
        (b'{"update_id": true}', "update_id must be an integer"),
        (b'{"update_id": 1.0}', "update_id must be an integer"),
        (b'{"update_id": null}', "update_id must be an integer"),
        (b'{"update_id": 99999999999999999999999}', "update_id out of range"),
        (b'{"update_id": 1, "message": "x"}', "not a Telegram update"),
        (b'{"update_id": 1, "message": {"text": "no chat, no date"}}', "not a Telegram update"),
        (b'{"update_id": 1, "callback_query": []}', "not a Telegram update"),
    ],
    ids=[
        "empty",
        "malformed",
        "not-utf8",
        "deeply-nested",
        "array",
        "array-of-update",
        "string",
        "null",
        "no-update-id",
        "string-id",
        "bool-id",
        "float-id",
        "null-id",
        "huge-id",
        "message-string",
        "message-incomplete",
        "callback-array",
    ],
)
def test_bad_body_is_400(client: Client, demo: FakeBotAPI, body: bytes, reason: str) -> None:
    response = post(client, body, CONTENT_LENGTH=str(len(body)))
    assert response.status_code == 400
    assert response.json()["ok"] is False
    assert response.json()["error"].startswith(reason)
    assert_nothing_happened(demo)


class CountingStream(io.BytesIO):
    """A request body that remembers how much of it was read."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        chunk = super().readline(size)
        self.bytes_read += len(chunk)
        return chunk


def test_declared_body_over_default_limit_is_413_unread(client: Client, demo: FakeBotAPI) -> None:
    body = json.dumps(message("🍕" * 300_000)).encode()  # a real update, 1.2 MB
    assert len(body) > 1024 * 1024
    stream = CountingStream(body)
    response = post(client, body, CONTENT_LENGTH=str(len(body)), **{"wsgi.input": stream})
    assert response.status_code == 413
    assert stream.bytes_read == 0
    assert_nothing_happened(demo)


def test_lowered_limit_applies(client: Client, demo: FakeBotAPI, settings: Any) -> None:
    small, big = message("🍕"), message("🍕" * 100)
    limit = len(json.dumps(small)) + 10
    assert len(json.dumps(big)) > limit
    settings.BOTSESSIONS_MAX_BODY_SIZE = limit
    response = post(client, big)
    assert response.status_code == 413
    assert response.json()["error"] == f"body over {limit} bytes"
    assert_nothing_happened(demo)
    assert post(client, small).status_code == 200


def test_lying_content_length_is_413_unread(client: Client, demo: FakeBotAPI) -> None:
    stream = CountingStream(json.dumps(message("🍕")).encode())
    response = post(client, b"", CONTENT_LENGTH=str(50 * 1024 * 1024), **{"wsgi.input": stream})
    assert response.status_code == 413
    assert stream.bytes_read == 0
    assert_nothing_happened(demo)


def test_invalid_content_length_is_400(client: Client, demo: FakeBotAPI) -> None:
    response = post(client, json.dumps(message("🍕")), CONTENT_LENGTH="12abc")
    assert response.status_code == 400
    assert_nothing_happened(demo)


# -- failures -----------------------------------------------------------------------


@pytest.mark.urls("tests.webhook_bots")
def test_handler_error_is_200_reported_and_discarded(client: Client, demo: FakeBotAPI) -> None:
    url = "/bots/failing/"
    assert post(client, message("hi"), url=url).json()["outcome"] == "committed"
    before = Session.objects.get()
    response = post(client, message("boom"), url=url)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "outcome": "handler_failed"}
    assert [str(error) for error in webhook_bots.errors] == ["the handler failed on purpose"]
    after = Session.objects.get()
    assert (after.data, after.revision) == ({"n": 1}, before.revision)
    assert post(client, message("hi"), url=url).json()["outcome"] == "committed"
    assert Session.objects.get().data == {"n": 2}


def _fail_statements(prefixes: tuple[str, ...]) -> Any:
    """Make Django's cursor fail the statements starting with ``prefixes``."""
    execute = CursorWrapper.execute

    def failing(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        if sql.lstrip().upper().startswith(prefixes):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(self, sql, params)

    return mock.patch.object(CursorWrapper, "execute", failing)


@pytest.mark.parametrize(
    "failure",
    [
        lambda: _fail_statements(("SELECT",)),
        lambda: _fail_statements(("INSERT", "UPDATE", "DELETE")),
        lambda: mock.patch.object(
            DatabaseStorage, "load_sync", side_effect=OperationalError("gone")
        ),
        lambda: mock.patch.object(
            DatabaseStorage, "commit_sync", side_effect=OperationalError("gone")
        ),
    ],
    ids=["cursor-read", "cursor-write", "load_sync", "commit_sync"],
)
def test_database_failure_is_503_then_redelivery_works(
    client: Client, demo: FakeBotAPI, failure: Any
) -> None:
    update = message("🍕", chat_id=GROUP, user_id=BOB)
    with failure():
        response = post(client, update)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert Session.objects.count() == 0
    assert ProcessedUpdate.objects.count() == 0
    # Telegram redelivers the same update once the database is back: counted once.
    assert post(client, update).json()["outcome"] == "committed"
    assert rows()[("chat", f"chat:{GROUP}")] == {"pizza_count": 1}


def test_unreachable_bot_api_is_503(client: Client, demo: FakeBotAPI, settings: Any) -> None:
    settings.TELEGRAM_API_BASE_URL = f"http://127.0.0.1:{free_port()}/bot"
    response = post(client, message("🍕"))
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert Session.objects.count() == 0


# -- several bots, arbitrary callback data ------------------------------------------


@pytest.mark.urls("tests.webhook_bots")
def test_bots_of_one_project_keep_sessions_apart(client: Client, demo: FakeBotAPI) -> None:
    assert post(client, message("🍕", chat_id=GROUP), url="/bots/default/").status_code == 200
    for _ in range(3):
        update = message("🍕", chat_id=GROUP)
        assert post(client, update, url="/bots/second/", secret="second-secret").status_code == 200
    # Each bot checks its own secret.
    assert post(client, message("🍕"), url="/bots/second/").status_code == 403

    post(client, message("/hunger", chat_id=GROUP), url="/bots/default/")
    post(client, message("/hunger", chat_id=GROUP), url="/bots/second/", secret="second-secret")
    replies = [(call.token, call.params["text"]) for call in demo.calls_to("sendMessage")]
    assert replies == [
        ("123456:TEST-token", "Your hunger level is 1!"),
        ("654321:OTHER-token", "Your hunger level is 3!"),
    ]
    chats = dict(Session.objects.filter(fragment="chat").values_list("bot_id", "data"))
    assert chats == {BOT_ID: {"pizza_count": 1}, 654321: {"pizza_count": 3}}


@pytest.mark.urls("tests.webhook_bots")
def test_arbitrary_callback_data_reaches_the_handler(client: Client, demo: FakeBotAPI) -> None:
    url = "/bots/callbacks/"
    assert post(client, message("/menu"), url=url).status_code == 200
    markup = demo.calls_to("sendMessage")[0].params["reply_markup"]
    first, second = markup["inline_keyboard"][0]
    # The bot sent opaque ids in place of the Pizza objects, and maps them back.
    assert first["callback_data"] != second["callback_data"]
    assert "diavola" not in json.dumps(markup)

    response = post(client, callback_query(second["callback_data"]), url=url)
    assert response.json() == {"ok": True, "outcome": "committed"}
    assert Session.objects.get().data == {"ordered": [{"name": "diavola", "size_cm": 28}]}
    answers = demo.calls_to("answerCallbackQuery")
    assert [call.params["text"] for call in answers] == ["diavola ordered"]

    # Data the bot never sent (or forgot) matches no handler and changes nothing.
    response = post(client, callback_query("not-from-this-bot"), url=url)
    assert response.json()["outcome"] == "skipped"
    assert Session.objects.get().data == {"ordered": [{"name": "diavola", "size_cm": 28}]}


@pytest.mark.urls("tests.webhook_bots")
@pytest.mark.parametrize(
    "where", ["query", "button", "replied-to button", "pinned in a replied-to message"]
)
def test_callback_data_that_is_not_text_is_a_400(
    client: Client, demo: FakeBotAPI, where: str
) -> None:
    """PTB's cache of arbitrary callback data slices it as text: anything else is no
    update Telegram sends, refused before it is processed."""
    if where == "query":
        update = callback_query("x")
        update["callback_query"]["data"] = 12345
    else:
        update = message("hi")
        carrier = update["message"]
        if where != "button":
            carrier["reply_to_message"] = carrier = {**message("earlier")["message"]}
        if where == "pinned in a replied-to message":
            carrier["pinned_message"] = carrier = {**message("pinned")["message"]}
        carrier["reply_markup"] = {"inline_keyboard": [[{"text": "a", "callback_data": 7}]]}
    response = post(client, update, url="/bots/callbacks/")
    assert response.status_code == 400
    assert response.json()["error"].startswith("not a Telegram update")


def test_update_decodes_with_the_bot(client: Client, demo: FakeBotAPI) -> None:
    """The runner's decoding gives a real Update bound to the application's bot."""
    from botsessions.runner import runner_for

    runner = runner_for("default")
    update = runner.decode(message("🍕", chat_id=GROUP))
    assert isinstance(update, Update)
    assert update.get_bot() is runner.application.bot


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
def test_a_bot_without_a_secret_takes_no_update_unless_debug_is_on(
    client: Client, demo: FakeBotAPI, settings: Any, debug: bool
) -> None:
    """No secret means anyone could post updates: refused with DEBUG off, in any server."""
    from botsessions import webhook

    settings.DEBUG = debug
    settings.BOTSESSIONS_BOTS = {
        **webhook_bots.BOTS,
        "default": {**webhook_bots.BOTS["default"], "WEBHOOK_SECRET": ""},
    }
    webhook._warned_open.clear()
    response = post(client, message("🍕"), secret=None)
    if debug:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert "no webhook secret" in response.json()["error"]
        assert Session.objects.count() == 0


def test_a_body_without_content_length_is_411_and_closes_the_connection(demo: FakeBotAPI) -> None:
    """A chunked body: Django's WSGI handler would read it as empty, and a server that
    keeps the connection would read it as another request."""
    from django.test import RequestFactory

    from botsessions.webhook import TelegramWebhookView

    request = RequestFactory().post(
        URL,
        data=json.dumps(message("🍕")),
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    del request.META["CONTENT_LENGTH"]
    response = TelegramWebhookView.as_view(bot="default")(request)
    assert response.status_code == 411
    # No Content-Length, so Django's development server closes the connection; a WSGI
    # application may not say Connection: close itself (tests/test_chunked_bodies.py).
    assert response.streaming and not response.has_header("Content-Length")
    assert not response.has_header("Connection")
    assert Session.objects.count() == 0


def test_a_refused_token_is_503_and_never_shown(
    client: Client, demo: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The Bot API refuses the token (a revoked bot): Telegram is asked to retry, and
    neither the answer nor the log shows the token."""
    demo.fail_next("getMe", 401, "Unauthorized")
    response = post(client, message("🍕"))
    assert response.status_code == 503
    assert response["Retry-After"]
    token = settings_token()
    secret_half = token.split(":", 1)[1]
    assert secret_half not in response.content.decode()
    assert secret_half not in caplog.text
    assert "not initialized" in caplog.text


@pytest.mark.urls("tests.webhook_bots")
def test_a_failing_post_init_is_503_with_its_traceback_then_retried(
    client: Client, demo: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    webhook_bots.post_inits.clear()
    first = post(client, message("🍕"), url="/bots/starting/")
    assert first.status_code == 503 and first["Retry-After"]
    assert "not started" in caplog.text and "post_init failed on purpose" in caplog.text
    assert "webhook_bots.py" in caplog.text  # the traceback, with the token hidden
    assert webhook_bots.TOKEN.split(":")[1] not in caplog.text
    assert Session.objects.count() == 0
    again = post(client, message("🍕"), url="/bots/starting/")
    assert (again.status_code, again.json()["outcome"]) == (200, "committed")
    assert webhook_bots.post_inits == [1, 1]


def settings_token() -> str:
    from django.conf import settings as django_settings

    return str(django_settings.TELEGRAM_BOT_TOKEN)


@pytest.mark.urls("tests.webhook_bots")
def test_session_text_no_database_can_store_fails_the_handler(
    client: Client, demo: FakeBotAPI
) -> None:
    """A lone surrogate is valid JSON input and a valid Python string, but no database
    stores it as text: the handler fails (200, its error handlers told), nothing is kept."""
    body = json.dumps(message("\ud83c remember me")).encode()
    response = post(client, body, url="/bots/notes/")
    assert response.status_code == 200
    assert response.json()["outcome"] == "handler_failed"
    assert Session.objects.count() == 0
    assert "no database can store" in str(webhook_bots.errors[-1])


def test_a_bad_key_part_is_named_in_the_400(client: Client, demo: FakeBotAPI) -> None:
    update = message("🍕")
    update["message"]["migrate_to_chat_id"] = "\ud800"
    response = post(client, json.dumps(update).encode())
    assert response.status_code == 400
    assert "migrate_to_chat_id must be a 64-bit integer" in response.json()["error"]


@pytest.mark.urls("tests.webhook_bots")
@pytest.mark.parametrize("text", ["nul \x00 inside", "a backslash and u0000: \\u0000"])
def test_session_text_with_a_nul_fails_the_handler_on_every_database(
    client: Client, demo: FakeBotAPI, text: str
) -> None:
    """PostgreSQL's jsonb refuses NUL: refused alike everywhere, as a failed handler (200),
    not a 503 Telegram would redeliver for a day. The same text escaped is fine."""
    response = post(client, json.dumps(message(text)).encode(), url="/bots/notes/")
    assert response.status_code == 200
    if "\x00" in text:
        assert response.json()["outcome"] == "handler_failed"
        assert Session.objects.count() == 0
    else:
        assert response.json()["outcome"] == "committed"
        assert Session.objects.get().data == {"note": text}


def test_session_data_nested_too_deep_for_mariadb_fails_the_handler(make_bot: Any) -> None:
    """MariaDB refuses JSON nested 32 levels: refused alike on every database, as a failed
    handler (200), not a 503 redelivered for a day; 31 levels are stored."""
    from telegram.ext import CommandHandler

    from botsessions import Sessions

    def nest(levels: int) -> Any:
        value: Any = "bottom"
        for _ in range(levels - 1):
            value = [value]
        return {"deep": value}

    async def store(update: Any, context: Any) -> None:
        context.session["data"] = nest(int(update.effective_message.text.split()[1]))

    bot = make_bot(Sessions(initial=dict), [CommandHandler("nest", store)])
    # The session's dict, "deep"'s dict, then levels - 1 lists: levels + 1 in all.
    assert bot.process(message("/nest 31")) == "handler_failed"  # 32 levels
    assert Session.objects.count() == 0
    assert bot.process(message("/nest 30")) == "committed"  # 31 levels: stored everywhere
    assert Session.objects.count() == 1


@pytest.mark.parametrize(
    ("value", "outcome"),
    [(1e16, "handler_failed"), (-2.5e300, "handler_failed"), (9999999999999998.0, "committed")],
)
def test_a_float_postgresql_would_return_as_an_int_fails_the_handler(
    make_bot: Any, value: float, outcome: str
) -> None:
    """jsonb keeps 1e+16 as a decimal that reads back as an int: refused alike on every
    database, as a failed handler, not stored as another type on one of them."""
    from telegram.ext import CommandHandler

    from botsessions import Sessions

    async def store(update: Any, context: Any) -> None:
        context.session["total"] = value
        context.session["label"] = "1e+16 as text is fine"

    bot = make_bot(Sessions(initial=dict), [CommandHandler("store", store)])
    assert bot.process(message("/store")) == outcome
    if outcome == "committed":
        stored = Session.objects.get().data
        assert stored["total"] == value and type(stored["total"]) is float
    else:
        assert Session.objects.count() == 0


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (LockTimeout("not granted"), "a session was locked by another update too long"),
        (SessionConflict("revision 3 is now 4"), "a session was changed by another update"),
        (StorageError("connection refused"), "session storage unavailable"),
        (OperationalError("gone"), "session storage unavailable"),
    ],
)
def test_a_refusal_says_whether_the_session_was_busy_or_the_storage_down(
    error: Exception, answer: str
) -> None:
    response = TelegramWebhookView(bot="default").not_stored(SimpleNamespace(update_id=1), error)
    assert response.status_code == 503
    assert json.loads(response.content)["error"] == f"{answer}, retry later"
