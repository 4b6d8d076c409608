"""The webhook endpoint: Telegram POSTs an update, we answer once its session is stored.

Answers, and why:
- 403 when the secret token header is missing or wrong (compared in constant time);
- 405 for anything but POST; 413 for a body over the limit (not read whole);
- 400 for a body that is not a JSON object with an integer ``update_id``, or that is
  not a Telegram update: nothing is processed;
- 200 once the update's unit of work is committed (sessions, the exactly-once record
  and the handlers' own rows), also when a handler raised (all of it rolled back and
  PTB's error handlers told) and for an update that was already processed, so Telegram
  does not redeliver a buggy update all day;
- 503 when the database failed or could not be reached, a lock wait ran past
  ``BOTSESSIONS_LOCK_TIMEOUT``, the update was chosen as a deadlock victim, or the Bot
  API could not be reached to initialize the bot (``getMe``, once per process):
  nothing of the update is committed and Telegram redelivers it later.

How the update runs, on which thread and connection: :mod:`botsessions.unit`.

Under ASGI, Django reads the whole body before any view runs: wrap the ASGI application
in :class:`botsessions.asgi.WebhookBodyLimit` so the size limit holds there too.
"""

from __future__ import annotations

import hmac
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings as django_settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import URLPattern, URLResolver
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from telegram import Update
from telegram.error import TelegramError

from .bots import bot_settings
from .conf import settings
from .errors import LockTimeout, SessionConflict, StorageError
from .key_parts import InvalidKeyPart
from .redaction import redact
from .runner import BotRunner, arunner_for, runner_for

logger = logging.getLogger("botsessions.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
RETRY_AFTER_SECONDS = 5


class BadUpdate(ValueError):
    """The request body is not an update we can process."""


class _EveryDatabase(set[str]):
    """The aliases ``ATOMIC_REQUESTS`` must not wrap the webhook views on: all of them,
    the sessions' database wherever a router puts it. Django's ``non_atomic_requests``
    keeps a set of aliases on the view, and ``BaseHandler.make_view_atomic`` asks it
    ``alias in view._non_atomic_requests`` for each database, on each request."""

    def __contains__(self, alias: object) -> bool:
        return True


def _non_atomic_on_every_database(view: Any) -> Any:
    view._non_atomic_requests = _EveryDatabase()
    return view


@method_decorator(_non_atomic_on_every_database, name="dispatch")
class WebhookView(View):
    """What both webhook views share: the checks that come before processing.

    Mount :class:`TelegramWebhookView` under WSGI and :class:`AsyncTelegramWebhookView`
    under ASGI. Each update is its own unit of work, so ``ATOMIC_REQUESTS`` does not
    wrap them (it would hold MariaDB's key locks past their release, and Django refuses
    it for async views).
    """

    bot: str = "default"
    http_method_names = ["post"]

    def accept(self, request: HttpRequest) -> HttpResponseBase | dict[str, Any]:
        """The refusal for a request we must not process, or the update's JSON object."""
        config = bot_settings(self.bot)
        secret = config.get("WEBHOOK_SECRET") or ""
        if not secret and not _open_without_secret(self.bot):
            return refusal(403, "no webhook secret is configured for this bot")
        if secret and not _secret_matches(request, secret):
            return refusal(403, "secret token missing or wrong")
        limit = settings.MAX_BODY_SIZE
        length = request.META.get("CONTENT_LENGTH")
        if not length:
            # A body without Content-Length (chunked) is read as empty by Django's WSGI
            # handler; refuse it everywhere, and make sure the server does not read what
            # follows as another request.
            return self.length_required()
        try:
            declared = int(length)
        except ValueError:
            return refusal(400, "invalid Content-Length")
        if declared > limit:
            return refusal(413, f"body over {limit} bytes")
        body = _read_at_most(request, limit + 1)
        if len(body) > limit:
            return refusal(413, f"body over {limit} bytes")
        try:
            return _parse(body)
        except BadUpdate as exc:
            return refusal(400, str(exc))

    @staticmethod
    def decode(runner: BotRunner, data: dict[str, Any]) -> HttpResponseBase | Update:
        """The update, or the 400 for a JSON object that is not one."""
        try:
            return runner.decode(data)
        except InvalidKeyPart as exc:  # names the field, never echoes the value
            return refusal(400, f"not a Telegram update: {exc}")
        except Exception as exc:  # PTB raises many kinds for a malformed update
            return refusal(400, f"not a Telegram update: {exc.__class__.__name__}")

    def length_required(self) -> HttpResponseBase:
        """411, answered so that the server closes the connection after it.

        The unread body must never be taken for a request of its own. A WSGI application
        may not send ``Connection`` (PEP 3333; Django's development server refuses it),
        but an answer without Content-Length makes that server close the connection: the
        answer is streamed. gunicorn decodes a chunked body itself, and discards it. The
        async view says ``Connection: close`` instead.
        """
        body = json.dumps({"ok": False, "error": "Content-Length required"}).encode()
        return StreamingHttpResponse([body], status=411, content_type="application/json")

    def not_initialized(self, runner: BotRunner, exc: Exception) -> HttpResponse:
        # PTB's messages can hold the token (InvalidToken says which one was refused).
        token = runner.application.bot.token
        reason = redact(f"{type(exc).__name__}: {exc}", token)
        if isinstance(exc, TelegramError):
            logger.warning(
                "bot %r not initialized, asking Telegram to retry: %s", self.bot, reason
            )
        else:  # the application's own start-up code (post_init) failed: with its traceback
            trace = redact("".join(traceback.format_exception(exc)), token)
            logger.error("bot %r not started, asking Telegram to retry:\n%s", self.bot, trace)
        return _retry_later("bot not initialized, retry later")

    def not_stored(self, update: Update, exc: Exception) -> HttpResponse:
        logger.warning("update %s not stored, asking Telegram to retry: %s", update.update_id, exc)
        if isinstance(exc, LockTimeout):
            return _retry_later("a session was locked by another update too long, retry later")
        if isinstance(exc, SessionConflict):
            return _retry_later("a session was changed by another update, retry later")
        return _retry_later("session storage unavailable, retry later")


@method_decorator(csrf_exempt, name="dispatch")
class TelegramWebhookView(WebhookView):
    """Serves one bot (``bot`` is its alias in ``BOTSESSIONS_BOTS``) under WSGI.

    The request thread waits for the update and runs its database work meanwhile.
    """

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # URL arguments (a path converter in the webhook's URL) are not used.
        accepted = self.accept(request)
        if isinstance(accepted, HttpResponseBase):
            return accepted
        runner = runner_for(self.bot)
        update = self.decode(runner, accepted)
        if isinstance(update, HttpResponseBase):
            return update
        try:
            runner.initialize()
        except Exception as exc:  # the Bot API unreachable, the token refused, post_init
            return self.not_initialized(runner, exc)
        try:
            outcome = runner.process(update)
        except (StorageError, DatabaseError) as exc:
            return self.not_stored(update, exc)
        return JsonResponse({"ok": True, "outcome": outcome})


@method_decorator(csrf_exempt, name="dispatch")
class AsyncTelegramWebhookView(WebhookView):
    """The same webhook as an async view, for ASGI servers (uvicorn, daphne, hypercorn).

    The server's loop only waits: the update runs on the bot's loop, and its database
    work on one of the application's database threads, with a connection of its own for
    the whole unit of work. No thread is tied up while an update waits for a lock or for
    the Bot API.
    """

    def length_required(self) -> HttpResponseBase:
        # ASGI servers honour Connection: close, so nothing need be streamed (Django warns
        # when it serves a streamed answer from a plain iterator under ASGI).
        response = refusal(411, "Content-Length required")
        response["Connection"] = "close"
        return response

    async def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        accepted = self.accept(request)
        if isinstance(accepted, HttpResponseBase):
            return accepted
        runner = await arunner_for(self.bot)
        update = self.decode(runner, accepted)
        if isinstance(update, HttpResponseBase):
            return update
        try:
            await runner.ainitialize()
        except Exception as exc:  # the Bot API unreachable, the token refused, post_init
            return self.not_initialized(runner, exc)
        try:
            outcome = await runner.aprocess(update)
        except (StorageError, DatabaseError) as exc:
            return self.not_stored(update, exc)
        return JsonResponse({"ok": True, "outcome": outcome})


_warned_open: set[str] = set()


def _open_without_secret(alias: str) -> bool:
    """Whether a bot without a webhook secret may take updates: only with DEBUG on.

    Without a secret anyone can post updates (and move any chat's sessions with a forged
    migration), so with DEBUG off every update is refused, as an empty ALLOWED_HOSTS
    refuses every request. Said once per process in the log; the system check
    (botsessions.E008 / W001) says it at start-up.
    """
    allowed = bool(django_settings.DEBUG)
    if alias not in _warned_open:
        _warned_open.add(alias)
        if allowed:
            logger.warning("bot %r has no WEBHOOK_SECRET: accepting updates (DEBUG on)", alias)
        else:
            logger.error("bot %r has no WEBHOOK_SECRET: refusing every update", alias)
    return allowed


def _secret_matches(request: HttpRequest, secret: str) -> bool:
    given = request.headers.get(SECRET_HEADER)
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _read_at_most(request: HttpRequest, size: int) -> bytes:
    """Read up to ``size`` bytes; a stream may return less than asked before its end."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = request.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadUpdate("empty body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUpdate(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadUpdate("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadUpdate("expected a JSON object")
    update_id = data.get("update_id")
    if isinstance(update_id, bool) or not isinstance(update_id, int):
        raise BadUpdate("update_id must be an integer")
    if not -(2**63) <= update_id < 2**63:
        raise BadUpdate("update_id out of range")
    return data


def _retry_later(reason: str) -> HttpResponse:
    response = refusal(503, reason)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def refusal(status: int, reason: str) -> HttpResponse:
    """The JSON error answer of the webhook (also used by the ASGI body limit)."""
    return JsonResponse({"ok": False, "error": reason}, status=status)


def webhook_urls(
    patterns: Any, namespaces: tuple[str, ...] = ()
) -> Iterator[tuple[URLPattern, tuple[str, ...], str]]:
    """Each URL pattern of a URLconf that mounts a webhook view: with its namespaces and
    the alias of the bot it serves, in the URLconf's order."""
    for item in patterns:
        if isinstance(item, URLResolver):
            inner = (*namespaces, item.namespace) if item.namespace else namespaces
            yield from webhook_urls(item.url_patterns, inner)
        elif isinstance(item, URLPattern):
            alias = served_bot(item.callback)
            if alias is not None:
                yield item, namespaces, alias


def served_bot(callback: Callable[..., Any]) -> str | None:
    """The bot alias a view function serves, if it is a webhook view's."""
    view_class = getattr(callback, "view_class", None)
    if not (isinstance(view_class, type) and issubclass(view_class, WebhookView)):
        return None
    initkwargs: dict[str, Any] = getattr(callback, "view_initkwargs", {})
    alias: str = initkwargs.get("bot", view_class.bot)
    return alias
