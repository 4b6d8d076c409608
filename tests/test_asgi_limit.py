"""The ASGI body limit: oversized webhook bodies are refused before Django reads them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest

from botsessions.asgi import WebhookBodyLimit

URL = "/telegram/webhook/"


class Inner:
    """Stands in for Django: records whether it was called and the body it received."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def run(
    chunks: Iterable[bytes],
    *,
    path: str = URL,
    method: str = "POST",
    content_length: int | None = None,
) -> tuple[Inner, list[dict[str, Any]], int]:
    """Send a request through the wrapper; returns the inner app, what was sent, chunks read."""
    pending = list(chunks)
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(pending) - 1}
        for i, chunk in enumerate(pending)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return messages[read - 1] if read <= len(messages) else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers}
    inner = Inner()
    asyncio.run(WebhookBodyLimit(inner)(scope, receive, send))
    return inner, sent, read


def status(sent: list[dict[str, Any]]) -> int:
    return int(sent[0]["status"])


def test_declared_oversize_is_413_without_reading(settings: Any) -> None:
    inner, sent, read = run([b"{}"], content_length=1024 * 1024 + 1)
    assert status(sent) == 413
    assert json.loads(sent[1]["body"]) == {"ok": False, "error": "body over 1048576 bytes"}
    assert (inner.called, read) == (False, 0)


def test_undeclared_oversize_stops_reading_past_the_limit(settings: Any) -> None:
    settings.BOTSESSIONS_MAX_BODY_SIZE = 100
    inner, sent, read = run([b"x" * 60] * 50)
    assert status(sent) == 413
    assert (inner.called, read) == (False, 2)  # 120 bytes read of 3000


def test_undeclared_small_body_reaches_django_intact(settings: Any) -> None:
    settings.BOTSESSIONS_MAX_BODY_SIZE = 100
    inner, sent, _ = run([b'{"update_id":', b" 1}"])
    assert status(sent) == 200
    assert inner.body == b'{"update_id": 1}'


@pytest.mark.parametrize("method", ["post", "Post", "PUT", "PATCH", "GET"])
def test_every_method_to_the_webhook_is_limited(method: str) -> None:
    """uvicorn passes the method on as the client spelt it, and Django upper-cases it:
    "post" reaches the view's post(). The others get a 405, after Django read the body."""
    inner, sent, read = run([b"{}"], method=method, content_length=10**9)
    assert status(sent) == 413
    assert (inner.called, read) == (False, 0)


def test_a_body_longer_than_its_content_length_is_counted(settings: Any) -> None:
    """Sent with Transfer-Encoding: chunked as well, a body may run past the length its
    Content-Length declares (h11 lets chunked win): what arrives is what counts."""
    settings.BOTSESSIONS_MAX_BODY_SIZE = 100
    inner, sent, read = run([b"x" * 60] * 50, content_length=10)
    assert status(sent) == 413
    assert (inner.called, read) == (False, 2)


@pytest.mark.parametrize(
    ("path", "method", "length"),
    [("/admin/login/", "POST", 10**9), (URL, "POST", 50)],
    ids=["other-url", "within-limit"],
)
def test_other_requests_pass_untouched(path: str, method: str, length: int) -> None:
    inner, sent, _ = run([b"{}"], path=path, method=method, content_length=length)
    assert inner.called
    assert status(sent) == 200
