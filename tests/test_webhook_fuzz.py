"""Whatever reaches the webhook, it answers 2xx or 4xx, and a refusal changes nothing.

A 5xx makes Telegram redeliver the same update for a day, so bad input must never
produce one; and a request we refuse must not have half-run. Hypothesis posts arbitrary
requests (bytes, JSON, headers, methods, lengths, secrets), and Telegram-shaped updates
whose fields may be wrong, missing or of the wrong type, to the demo bot in this
process, and compares the session tables before and after each request. Every test runs
against both views: the WSGI one (``TelegramWebhookView``) and the ASGI one
(``AsyncTelegramWebhookView``, whose updates commit on threads of their own, hence a
transactional test database).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django.test.client import FakePayload
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from botsessions.models import ProcessedUpdate, Session

from .fakebotapi import FakeBotAPI

pytestmark = pytest.mark.django_db

URL = "/telegram/webhook/"
SECRET = "test-secret"
LIMIT = 1024 * 1024  # BOTSESSIONS_MAX_BODY_SIZE's default
OUTCOMES = {"committed", "unchanged", "skipped", "duplicate", "handler_failed", "bad_stored_data"}

fuzz_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What WSGI and ASGI servers hand Django: header bytes decoded as latin-1, no controls.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["\ud800", "a\udfffb", "chat:1", "x" * 300])  # lone surrogates
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
telegram_ids = st.one_of(
    st.sampled_from([111111111, 222222222, -4012345678, -1001987654321]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
texts = st.one_of(
    st.sampled_from(["hi", "🍕", "/stats", "/hunger", "/reset", "/stats@pizza_test_bot"]),
    st.text(max_size=30),
)
_MISSING = object()
# Hypothesis repeats values; the second test swaps these for new ids so that only the
# small ones (1 to 5) come back, as redeliveries with other content.
_fresh = itertools.count(10**12)


def _mostly(value: Any) -> st.SearchStrategy[Any]:
    """A field that is usually right, sometimes anything at all, sometimes missing."""
    return st.integers(0, 19).flatmap(
        lambda n: st.just(value) if n < 17 else json_values if n < 19 else st.just(_MISSING)
    )


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not _MISSING}


@st.composite
def telegram_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """An update of a few kinds, each field possibly wrong, missing or of the wrong type."""
    text = draw(_mostly(draw(texts)))
    chat = _present({"id": draw(_mostly(draw(telegram_ids))), "type": draw(_mostly("group"))})
    user = _present(
        {"id": draw(_mostly(draw(telegram_ids))), "is_bot": False, "first_name": "Fuzz"}
    )
    message = {
        "message_id": draw(_mostly(draw(st.integers(1, 2**31)))),
        "date": draw(_mostly(1763740800)),
        "chat": draw(_mostly(chat)),
        "from": draw(_mostly(user)),
        "text": text,
    }
    if isinstance(text, str) and text.startswith("/"):
        command = len(text.split()[0])
        message["entities"] = draw(
            _mostly([{"type": "bot_command", "offset": 0, "length": command}])
        )
    if draw(st.integers(0, 4)) == 0:  # a topic (forum or private chat)
        message["message_thread_id"] = draw(_mostly(draw(st.integers(1, 2**31))))
        message["is_topic_message"] = draw(_mostly(True))
    kind = draw(
        st.sampled_from(
            [
                "message",
                "message",
                "edited_message",
                "channel_post",
                "business_message",
                "guest_message",
            ]
        )
    )
    if kind == "business_message":
        message["business_connection_id"] = draw(_mostly("wLq9Tr2VxkGyAQAAm0cnGkVbp5E"))
    elif kind == "guest_message":
        message["guest_query_id"] = draw(_mostly("4372847126387462134"))
    # Small ids repeat: the same update_id comes back with other content (a redelivery).
    update_id = draw(
        st.integers(0, 19).flatmap(
            lambda n: (
                st.integers(6, 2**62) if n < 18 else st.integers(1, 5) if n < 19 else json_values
            )
        )
    )
    update = {"update_id": update_id, kind: _present(message)}
    if draw(st.integers(0, 9)) == 0:
        update[draw(st.text(max_size=10))] = draw(json_values)
    return update


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _not_a_number(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


# Declared lengths: absent, not a number, negative, too large, or at most the real length
# (a real server waits for the bytes a longer declaration promises; the test client fails).
content_lengths = st.one_of(
    st.none(),
    header_text.filter(_not_a_number),
    st.integers(-5, -1),
    st.integers(0, LIMIT),
    st.integers(LIMIT + 1, 10**12),
)


def _declared(length: int | str | None, body: bytes) -> str | None:
    if isinstance(length, int) and 0 <= length <= LIMIT:
        length = min(length, len(body))
    return None if length is None else str(length)


def snapshot() -> tuple[list[Any], list[Any]]:
    rows = Session.objects.order_by("pk").values_list("fragment", "key", "data", "revision")
    marks = ProcessedUpdate.objects.order_by("pk").values_list("bot_id", "update_id")
    return list(rows), list(marks)


Send = Callable[[str, bytes, str, dict[str, str]], Any]

VIEWS = [
    pytest.param("wsgi"),
    pytest.param(
        "asgi",
        marks=[pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.async_urls")],
    ),
]


@pytest.fixture(params=VIEWS)
def send(request: pytest.FixtureRequest, fresh_bots: FakeBotAPI) -> Send:
    """``send(method, body, content_type, meta)``: a request to the demo bot's webhook.

    ``meta`` holds WSGI names (``HTTP_X_…``, ``CONTENT_LENGTH``); without
    ``CONTENT_LENGTH`` the request has no Content-Length header, as a chunked one.
    """
    if request.param == "wsgi":
        client = Client()

        def send_wsgi(method: str, body: bytes, content_type: str, meta: dict[str, str]) -> Any:
            # The test client would add a Content-Length; "" is what Django reads as none.
            meta = {"CONTENT_LENGTH": "", **meta}
            return client.generic(method, URL, data=body, content_type=content_type, **meta)

        return send_wsgi

    async_client = AsyncClient()

    def send_asgi(method: str, body: bytes, content_type: str, meta: dict[str, str]) -> Any:
        headers = [(b"host", b"testserver"), (b"content-type", content_type.encode("latin-1"))]
        for name, value in meta.items():
            header = name.removeprefix("HTTP_").lower().replace("_", "-")
            headers.append((header.encode("latin-1"), value.encode("latin-1")))
        scope = {
            "method": method,
            "path": URL,
            "query_string": "",
            "headers": headers,
            "_body_file": FakePayload(body),
        }
        return async_to_sync(async_client.request)(**scope)

    return send_asgi


def _check(response: Any, before: Any, replies_before: int, api: FakeBotAPI) -> None:
    """2xx or 4xx only; nothing stored or sent for a refusal."""
    status = response.status_code
    assert 200 <= status < 300 or 400 <= status < 500, (status, response.content)
    if status >= 400:
        assert snapshot() == before
        assert len(api.calls_to("sendMessage")) == replies_before


@fuzz_settings
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(_encode),
        telegram_shaped().map(_encode),
        telegram_shaped().map(lambda update: _encode(update)[:-3]),
    ),
    secret=st.one_of(st.just(SECRET), st.none(), header_text),
    method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]),
    content_type=st.one_of(st.just("application/json"), header_text),
    content_length=content_lengths,
    extra=st.dictionaries(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12).map(
            lambda name: f"HTTP_{name}"
        ),
        header_text,
        max_size=3,
    ),
)
def test_any_request_gets_2xx_or_4xx_and_refusals_change_nothing(
    send: Send,
    api: FakeBotAPI,
    body: bytes,
    secret: str | None,
    method: str,
    content_type: str,
    content_length: int | str | None,
    extra: dict[str, str],
) -> None:
    meta = dict(extra)
    if secret is not None:
        meta["HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN"] = secret
    declared = _declared(content_length, body)
    if declared is not None:
        meta["CONTENT_LENGTH"] = declared
    before, replies = snapshot(), len(api.calls_to("sendMessage"))
    response = send(method, body, content_type, meta)
    event(str(response.status_code))
    _check(response, before, replies, api)


@fuzz_settings
@given(update=telegram_shaped())
def test_updates_change_rows_only_when_committed(
    send: Send, api: FakeBotAPI, update: dict[str, Any]
) -> None:
    """Authenticated, well-framed, Telegram-shaped: the path where a 5xx or a half-write
    could hide. Rows change exactly when the answer says the update was committed."""
    if isinstance(update["update_id"], int) and update["update_id"] > 5:
        update = {**update, "update_id": next(_fresh)}
    before, replies = snapshot(), len(api.calls_to("sendMessage"))
    body = _encode(update)
    meta = {"HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN": SECRET, "CONTENT_LENGTH": str(len(body))}
    response = send("POST", body, "application/json", meta)
    event(str(response.status_code))
    _check(response, before, replies, api)
    if response.status_code == 200:
        outcome = response.json()["outcome"]
        event(outcome)
        assert outcome in OUTCOMES
        rows, marks = snapshot()
        assert (rows, marks) != before if outcome == "committed" else (rows, marks) == before
        if outcome == "committed":
            assert marks[-1] == (123456, update["update_id"])


@pytest.mark.parametrize(
    "chat_id",
    [[], {"a": 1}, 10**300, 2**63, -(2**63) - 1, 1.5, "111111111", True],
    ids=["list", "dict", "huge", "2**63", "below-int64", "float", "string", "bool"],
)
def test_ids_that_are_not_64_bit_integers_are_refused(
    send: Send, api: FakeBotAPI, chat_id: Any
) -> None:
    """Found by the fuzzer: PTB decodes any JSON value as an id. A list crashed PTB after
    the handlers ran (500), and a 300-digit id made a key too long for the column (503 on
    PostgreSQL and MariaDB, so Telegram would redeliver it for a day)."""
    update = {
        "update_id": next(_fresh),
        "message": {
            "message_id": 1,
            "date": 1763740800,
            "chat": {"id": chat_id, "type": "group"},
            "from": {"id": 111111111, "is_bot": False, "first_name": "Fuzz"},
            "text": "🍕",
        },
    }
    before, replies = snapshot(), len(api.calls_to("sendMessage"))
    body = _encode(update)
    meta = {"HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN": SECRET, "CONTENT_LENGTH": str(len(body))}
    response = send("POST", body, "application/json", meta)
    assert response.status_code == 400
    _check(response, before, replies, api)
