"""The webhook endpoint: Telegram POSTs an update, we answer once its session is stored.

Answers, and why:
- 403 when the secret token header is missing or wrong (compared in constant time);
- 405 for anything but POST; 413 for a body over the limit (not read whole);
- 400 for a body that is not a JSON object with an integer ``update_id``, or that is
  not a Telegram update: nothing is processed;
- 200 once the handlers ran and the session change is committed, also when a handler
  raised (its change is discarded and PTB's error handlers are told) and for an update
  that was already processed, so Telegram does not redeliver a buggy update all day;
- 503 when the database failed, so Telegram redelivers later and nothing is lost.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from .bots import bot_settings
from .conf import settings
from .errors import StorageError
from .runner import runner_for

logger = logging.getLogger("botsessions.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class BadUpdate(ValueError):
    """The request body is not an update we can process."""


@method_decorator(csrf_exempt, name="dispatch")
class TelegramWebhookView(View):
    """Serves one bot (``bot`` is its alias in ``BOTSESSIONS_BOTS``)."""

    bot: str = "default"
    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> HttpResponse:
        config = bot_settings(self.bot)
        if not _secret_matches(request, config.get("WEBHOOK_SECRET") or ""):
            return _refuse(403, "secret token missing or wrong")
        limit = settings.MAX_BODY_SIZE
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(400, "invalid Content-Length")
        if declared > limit:
            return _refuse(413, f"body over {limit} bytes")
        body = request.read(limit + 1)
        if len(body) > limit:
            return _refuse(413, f"body over {limit} bytes")
        runner = runner_for(self.bot)
        try:
            data = _parse(body)
            try:
                update = runner.decode(data)
            except Exception as exc:  # PTB raises many kinds for a malformed update
                raise _decode_error(exc) from exc
        except BadUpdate as exc:
            return _refuse(400, str(exc))
        try:
            outcome = runner.process(update)
        except StorageError as exc:
            logger.warning("update %s not stored, asking Telegram to retry: %s", update.update_id, exc)
            response = _refuse(503, "session storage unavailable, retry later")
            response["Retry-After"] = "5"
            return response
        return JsonResponse({"ok": True, "outcome": outcome})


def _secret_matches(request: HttpRequest, secret: str) -> bool:
    if not secret:
        return True  # reported by the system check botsessions.W001 / E008
    given = request.headers.get(SECRET_HEADER)
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadUpdate("empty body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUpdate(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadUpdate("expected a JSON object")
    update_id = data.get("update_id")
    if isinstance(update_id, bool) or not isinstance(update_id, int):
        raise BadUpdate("update_id must be an integer")
    if not -(2**63) <= update_id < 2**63:
        raise BadUpdate("update_id out of range")
    return data


def _decode_error(exc: Exception) -> BadUpdate:
    return BadUpdate(f"not a Telegram update: {exc.__class__.__name__}")


def _refuse(status: int, reason: str) -> HttpResponse:
    return JsonResponse({"ok": False, "error": reason}, status=status)
