"""A chunked webhook POST through real servers: 411, the connection closed, and nothing
sent behind or inside the body served as a request of its own.

Django's WSGI handler reads a body without Content-Length as empty, and ``runserver``
does not decode chunked bodies at all: it would read the body as the next request on the
connection. The webhook answers 411 so that such a server closes the connection after it
(see ``WebhookView.length_required``), so no byte of the body is ever taken for a
request. gunicorn decodes chunked bodies itself: its threaded worker keeps the
connection, and serves a request sent after the body as the next one.
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


# The server, and gunicorn's worker class: the README's two recommended deployments too.
SERVERS: dict[str, tuple[Kind, str, int]] = {
    "runserver": ("runserver", "sync", 1),
    "gunicorn": ("gunicorn", "sync", 1),
    "gunicorn-gthread": ("gunicorn", "gthread", 2),
    "uvicorn": ("uvicorn", "sync", 1),
    "gunicorn-uvicorn": ("gunicorn", "uvicorn.workers.UvicornWorker", 1),
}


@pytest.fixture(scope="module", params=list(SERVERS))
def server(
    request: pytest.FixtureRequest,
    bot_api: FakeBotAPI,
    django_db_setup: None,
    django_db_blocker: Any,
) -> Any:
    with django_db_blocker.unblock():
        env = server_env(api_base_url=bot_api.base_url)
    kind, worker_class, threads = SERVERS[request.param]
    with start_server(kind, env, worker_class=worker_class, threads=threads) as running:
        running.deployment = request.param
        yield running


def smuggled_served(server: Any, log_before: int) -> bool:
    """Whether the server logged the smuggled request as served since ``log_before``."""
    return '"GET /admin/login/' in server.log()[log_before:]


def test_a_chunked_update_is_411_and_what_follows_is_not_served(server: Any) -> None:
    update = json.dumps(message("🍕")).encode()
    log_before = len(server.log())
    answer = server.exchange(chunked_post(chunk(update)) + SMUGGLED)
    if server.deployment == "gunicorn-gthread":
        # It decodes the chunked body itself and keeps the connection: what follows the
        # body is the next request, as HTTP says, and served as one.
        assert statuses(answer) == [411, 200], answer
    else:
        assert statuses(answer) == [411], answer
        assert b"connection: close" in answer.lower()
        assert not smuggled_served(server, log_before)
    assert "StreamingHttpResponse" not in server.log()  # Django's warning under ASGI


def test_a_request_sent_as_the_chunked_body_is_not_served(server: Any) -> None:
    """What ``runserver`` would read as the next request, were the connection kept."""
    log_before = len(server.log())
    answer = server.exchange(chunked_post(SMUGGLED))
    codes = statuses(answer)
    # runserver and uvicorn pass the request on (411); gunicorn refuses the chunk itself,
    # before the request (400) or, keeping the connection, when it reads the body's
    # rest after the answer (411, then 400).
    assert codes in ([411], [400], [411, 400]), answer
    if server.kind == "runserver":
        assert codes == [411]
    assert not smuggled_served(server, log_before)
