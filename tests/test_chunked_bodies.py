"""A chunked webhook POST through real servers: 411, the connection closed, and nothing
sent behind or inside the body served as a request of its own.

Django's WSGI handler reads a body without Content-Length as empty, and ``runserver``
does not decode chunked bodies at all: it would read the body as the next request on the
connection. The webhook answers 411 so that each server closes the connection after it
(see ``WebhookView.length_required``), so no byte after the headers is ever taken for a
request.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .fakebotapi import FakeBotAPI
from .servers import SECRET, SECRET_HEADER, WEBHOOK_PATH, Kind, server_env, start_server
from .updates import message

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SMUGGLED = b"GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def chunked_post(body: bytes) -> bytes:
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{SECRET_HEADER}: {SECRET}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    return head.encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


def statuses(answer: bytes) -> list[int]:
    """The status of every HTTP response in what a server sent on one connection."""
    return [int(code) for code in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", answer)]


@pytest.fixture(
    scope="module",
    params=["runserver", "gunicorn", "uvicorn"],
)
def server(
    request: pytest.FixtureRequest,
    bot_api: FakeBotAPI,
    django_db_setup: None,
    django_db_blocker: Any,
) -> Any:
    with django_db_blocker.unblock():
        env = server_env(api_base_url=bot_api.base_url)
    kind: Kind = request.param
    with start_server(kind, env) as running:
        yield running


def test_a_chunked_update_is_411_and_what_follows_is_not_served(server: Any) -> None:
    update = json.dumps(message("🍕")).encode()
    answer = server.exchange(chunked_post(chunk(update)) + SMUGGLED)
    assert statuses(answer) == [411], answer
    assert b"connection: close" in answer.lower()
    assert "/admin/login/" not in server.log()


def test_a_request_sent_as_the_chunked_body_is_not_served(server: Any) -> None:
    """What ``runserver`` would read as the next request, were the connection kept."""
    answer = server.exchange(chunked_post(SMUGGLED))
    codes = statuses(answer)
    # runserver and uvicorn pass the request on (411); gunicorn refuses the chunk itself.
    assert codes in ([411], [400]), answer
    if server.kind == "runserver":
        assert codes == [411]
    assert "/admin/login/" not in server.log()
