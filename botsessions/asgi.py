"""The webhook under ASGI: oversized bodies refused before Django reads them, and the
server's stop delayed until the updates in flight have ended.

Django's ASGI handler reads a request's whole body (spooling it to disk) before any view
runs, so the webhook view's size check would come after a 1 GiB upload was received.
This wrapper answers 413 from the declared ``Content-Length``, or after at most
``BOTSESSIONS_MAX_BODY_SIZE + 1`` bytes of any body, whatever its headers say, for every
request (any method) to the URLs served by a
:class:`~botsessions.webhook.AsyncTelegramWebhookView` (or the WSGI view, when an ASGI
server serves that); every other request passes untouched::

    application = WebhookBodyLimit(get_asgi_application())

At the server's lifespan shutdown it waits for the updates the async view handed to a
bot's loop, those whose client went away included, before the wrapped application hears
of it; the events are answered here for one that takes none, as Django's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.urls import Resolver404, resolve

from .conf import settings
from .runner import finish_updates_in_flight
from .webhook import refusal, served_bot

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class WebhookBodyLimit:
    """ASGI middleware enforcing the webhook body limit without reading the body whole."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        # Every method: the view refuses all but POST, but only after Django has read the
        # body, and a server may pass a method on as the client spelt it ("post").
        if scope["type"] != "http" or not _is_webhook(scope):
            await self.application(scope, receive, send)
            return
        limit = settings.MAX_BODY_SIZE
        declared = _content_length(scope)
        # A malformed value goes on to the view, which answers 400 for it.
        if declared is not None and _digits(declared) and int(declared) > limit:
            await _too_large(send, limit)
            return
        # What arrives is counted all the same: with Transfer-Encoding also sent, a server
        # may deliver a chunked body longer than the Content-Length said.
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.application(scope, replay, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the updates still running end before the server stops (their client may
        be gone, and what they committed is still to be sent): the shutdown event reaches
        the wrapped application once they have. One that takes no lifespan events
        (Django's raises at once) has them answered here."""
        received = False

        async def receive_after_updates() -> Message:
            nonlocal received
            message = await receive()
            received = True
            if message["type"] == "lifespan.shutdown":
                await finish_updates_in_flight()
            return message

        try:
            await self.application(scope, receive_after_updates, send)
        except Exception:
            if received:
                raise
        else:
            if received:
                return
        await _answer_lifespan(receive, send)


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    """The lifespan events answered for an application that takes none."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await finish_updates_in_flight()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _is_webhook(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return served_bot(match.func) is not None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # not "²", which isdigit() takes


def _content_length(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text: str = value.decode("latin-1")
            return text.strip()
    return None


async def _too_large(send: Send, limit: int) -> None:
    response = refusal(413, f"body over {limit} bytes")
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [
                (b"content-type", response["Content-Type"].encode("latin-1")),
                (b"content-length", str(len(response.content)).encode("latin-1")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.content})
