"""A fake Telegram Bot API server for tests and demos.

Tests that talk to the real Bot API are slow, flaky and need a real token, so this
module serves the handful of methods the project uses from a local HTTP server and
records every call for assertions. It only uses the standard library so it can run
anywhere, including as a stand-alone demo server::

    python tests/fakebotapi.py --port 8081

Point python-telegram-bot at it with ``Bot(token, base_url=api.base_url)`` or
``ApplicationBuilder().base_url(api.base_url)``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Call", "FakeBotAPI", "UploadedFile", "main"]

# Real tokens look like "123456:AAH...": the part before the colon is the bot's user id.
_TOKEN_RE = re.compile(r"^(?P<bot_id>\d+):[^/\s]+$")
_METHOD_PATH_RE = re.compile(r"^/bot(?P<token>[^/]*)/(?P<method>[^/]+)$")
_FILE_PATH_RE = re.compile(r"^/file/bot[^/]*/.+$")

# Long polls are capped so a test that forgets to queue an update fails fast instead of
# hanging for the bot's full polling timeout.
MAX_LONG_POLL_SECONDS = 1.0
MAX_UPDATES_PER_CALL = 100
# Used for "@channelusername" chat ids, which have no numeric id of their own here.
_CHANNEL_CHAT_ID = -1001000000000


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request, kept so tests can inspect uploads."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class Call:
    """One request the fake server received, after decoding its parameters."""

    method: str
    token: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None


class _ApiError(Exception):
    """Raised by method handlers to answer with a Telegram-style error envelope."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _error_body(
    status: int, description: str, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return body


def _maybe_json(value: Any) -> Any:
    """Decode values that PTB JSON-encoded (reply_markup, allowed_updates, ...).

    Only objects and arrays are decoded: a text of "42" or "true" must stay a string,
    and scalars are ambiguous once they went through form encoding.
    """
    if not isinstance(value, str) or not value.lstrip().startswith(("{", "[")):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, dict | list) else value


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    # The email parser needs the boundary from the Content-Type header, so prepend it.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("multipart body without parts")
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            params[name] = data.decode(part.get_content_charset() or "utf-8")
        else:
            params[name] = UploadedFile(filename, part.get_content_type(), data)
    return params


def parse_params(content_type: str, body: bytes, query: str = "") -> dict[str, Any]:
    """Decode Bot API parameters from the query string and a form, multipart or JSON body.

    PTB's HTTPXRequest sends ``application/x-www-form-urlencoded`` normally and
    ``multipart/form-data`` when uploading files, with every non-string value JSON-encoded;
    other clients send JSON bodies, so all three are accepted.
    Raises ValueError for bodies that cannot be parsed.
    """
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/json":
        if body.strip():
            loaded = json.loads(body)
            if not isinstance(loaded, dict):
                raise ValueError("JSON body must be an object")
            params.update(loaded)
    elif mime == "multipart/form-data":
        params.update(_parse_multipart(content_type, body))
    elif body:
        params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return {key: _maybe_json(value) for key, value in params.items()}


def _as_int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise _ApiError(400, f"Bad Request: invalid integer value {value!r}") from exc


def _as_float(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise _ApiError(400, f"Bad Request: invalid number value {value!r}") from exc


def _as_bool(value: Any) -> bool:
    # Form-encoded booleans arrive as the JSON strings "true" / "false".
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1"}
    return bool(value)


def _chat(chat_id: Any) -> dict[str, Any]:
    """Build a Chat whose type follows Telegram's id conventions."""
    if isinstance(chat_id, str) and chat_id.startswith("@"):
        return {"id": _CHANNEL_CHAT_ID, "type": "channel", "username": chat_id[1:]}
    numeric = _as_int(chat_id, 0)
    if numeric == 0:
        raise _ApiError(400, "Bad Request: chat not found")
    if numeric > 0:
        chat_type = "private"
    elif str(numeric).startswith("-100"):
        chat_type = "supergroup"
    else:
        chat_type = "group"
    return {"id": numeric, "type": chat_type}


class _Server(ThreadingHTTPServer):
    # Handler threads must not keep the interpreter alive after a test finishes.
    daemon_threads = True
    # As many connections waiting to be accepted as Telegram's max_connections and more:
    # the standard 5 resets some of a burst of bots' calls.
    request_queue_size = 128
    api: FakeBotAPI


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeBotAPI/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        # The default handler logs every request to stderr, which drowns test output;
        # FakeBotAPI.on_call is the place for request logging.
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        api = cast(_Server, self.server).api
        status, payload = api.handle_request(self.path, self.headers.get("Content-Type", ""), body)
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # Clients routinely hang up on a pending long poll when they shut down.
            self.close_connection = True


MethodHandler = Callable[["FakeBotAPI", Call], Any]


class FakeBotAPI:
    """A local stand-in for api.telegram.org that records calls and serves queued updates.

    Use it as a context manager so the server thread and socket are always cleaned up::

        with FakeBotAPI() as api:
            bot = Bot("123456:TEST", base_url=api.base_url)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        first_name: str = "Pizza Bot",
        username: str = "pizza_test_bot",
        on_call: Callable[[Call], None] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.first_name = first_name
        self.username = username
        self.on_call = on_call
        # One condition guards all mutable state so long polls and wait_for() can sleep
        # on it and wake up as soon as an update or a call arrives.
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._message_ids = itertools.count(1)
        self._failures: dict[str, list[_Failure]] = {}
        self._results: dict[str, Any] = {}
        self._webhook: dict[str, Any] = {}
        self._commands: list[Any] = []
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeBotAPI:
        """Bind the socket and serve in a daemon thread; returns self for chaining."""
        if self._server is not None:
            raise RuntimeError("FakeBotAPI is already running")
        server = _Server((self.host, self.requested_port), _Handler)
        server.api = self
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeBotAPI:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._cond:
            # Wake long polls so their handler threads answer and exit promptly.
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port actually bound, which differs from the requested one when that was 0."""
        if self._server is None:
            raise RuntimeError("FakeBotAPI is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What PTB's ``base_url`` expects: it appends ``{token}/{method}`` itself."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    # -- inspecting calls ------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every recorded call, so callers never race the server threads."""
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def sent_texts(self) -> list[str]:
        """Texts of all sendMessage calls, in order: the most common assertion in bot tests."""
        return [str(call.params.get("text", "")) for call in self.calls_to("sendMessage")]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Block until ``count`` calls of ``method`` arrived, for bots running in threads."""

        def matching() -> list[Call]:
            return [call for call in self._calls if call.method == method]

        with self._cond:
            if self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                return matching()
            seen = [call.method for call in self._calls]
        raise AssertionError(
            f"expected {count} call(s) to {method} within {timeout}s, "
            f"got {len([m for m in seen if m == method])}; all calls: {seen}"
        )

    def reset(self) -> None:
        """Forget recorded calls, e.g. after a bot's start-up chatter."""
        with self._cond:
            self._calls.clear()

    # -- shaping answers -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 500,
        description: str | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        """Make the next call of ``method`` fail, to exercise error handling.

        ``retry_after`` adds Telegram's flood-control parameter, which PTB turns into
        ``RetryAfter``; use it with status 429.
        """
        if description is None:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            description = phrase if status >= 500 else f"{phrase}: simulated failure"
        parameters = {"retry_after": retry_after} if retry_after is not None else None
        with self._cond:
            self._failures.setdefault(method, []).append(_Failure(status, description, parameters))

    def set_result(self, method: str, result: Any) -> None:
        """Answer ``method`` with ``result`` (or ``result(call)`` if callable) from now on.

        This also makes methods the fake does not implement available to a test.
        """
        with self._cond:
            self._results[method] = result

    # -- updates ---------------------------------------------------------------------------

    def queue_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates; an ``update_id`` is assigned if missing."""
        with self._cond:
            update = dict(update)
            update_id = update.setdefault("update_id", self._next_update_id)
            self._next_update_id = max(self._next_update_id, int(update_id) + 1)
            self._updates.append(update)
            self._cond.notify_all()
        return update

    def queue_message(
        self,
        text: str,
        *,
        chat_id: int = 1001,
        user_id: int | None = None,
        first_name: str = "Test",
        username: str | None = "test_user",
    ) -> dict[str, Any]:
        """Queue a text message from a user, the update most bot tests start with."""
        user: dict[str, Any] = {
            "id": user_id if user_id is not None else abs(chat_id),
            "is_bot": False,
            "first_name": first_name,
        }
        if username:
            user["username"] = username
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": _chat(chat_id),
            "from": user,
            "text": text,
        }
        if text.startswith("/"):
            # PTB's CommandHandler only matches messages with a bot_command entity.
            command_length = len(text.split(maxsplit=1)[0])
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": command_length}]
        return self.queue_update({"message": message})

    def pending_updates(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._updates)

    def drop_pending_updates(self) -> None:
        """Forget the updates not confirmed yet (a bot stopped without them leaves them)."""
        with self._cond:
            self._updates.clear()

    @property
    def webhook(self) -> dict[str, Any]:
        """The last setWebhook parameters (empty after deleteWebhook)."""
        with self._cond:
            return dict(self._webhook)

    # -- request handling ------------------------------------------------------------------

    def bot_user(self, token: str) -> dict[str, Any]:
        """The bot's User object, with the id taken from the token like Telegram does."""
        match = _TOKEN_RE.match(token)
        return {
            "id": int(match["bot_id"]) if match else 0,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def handle_request(
        self, raw_path: str, content_type: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Turn one HTTP request into (status, JSON body); independent of the socket layer."""
        parts = urlsplit(raw_path)
        if _FILE_PATH_RE.match(parts.path):
            return 404, _error_body(404, "Not Found: file not found")
        match = _METHOD_PATH_RE.match(parts.path)
        if match is None:
            return 404, _error_body(404, "Not Found")
        token = match["token"]
        method = self._canonical_method(match["method"])
        try:
            params = parse_params(content_type, body, parts.query)
        except (ValueError, UnicodeDecodeError):
            params = {}
            self._record(Call(method, token, params))
            return 400, _error_body(400, "Bad Request: can't parse request body")
        call = Call(method, token, params)
        self._record(call)

        if not _TOKEN_RE.match(token):
            return 401, _error_body(401, "Unauthorized")
        with self._cond:
            failures = self._failures.get(method)
            failure = failures.pop(0) if failures else None
            override = self._results.get(method, _MISSING)
        if failure is not None:
            return failure.status, _error_body(
                failure.status, failure.description, failure.parameters
            )
        try:
            if override is not _MISSING:
                result = override(call) if callable(override) else override
            elif method in _METHODS:
                result = _METHODS[method](self, call)
            else:
                return 404, _error_body(404, "Not Found: method not found")
        except _ApiError as exc:
            return exc.status, _error_body(exc.status, exc.description)
        return 200, {"ok": True, "result": result}

    def _canonical_method(self, name: str) -> str:
        # Telegram matches method names case-insensitively; recording the canonical spelling
        # keeps calls_to("sendMessage") working whatever the client sent.
        lowered = name.lower()
        with self._cond:
            known = [*_METHODS, *self._results]
        return next((known_name for known_name in known if known_name.lower() == lowered), name)

    def _record(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()
        if self.on_call is not None:
            self.on_call(call)

    def _new_message(self, call: Call, text: str) -> dict[str, Any]:
        params = call.params
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": _chat(params.get("chat_id")),
            "from": self.bot_user(call.token),
            "text": text,
        }
        markup = params.get("reply_markup")
        # Telegram only echoes inline keyboards back; reply keyboards are not part of Message.
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        if params.get("message_thread_id"):
            message["message_thread_id"] = _as_int(params["message_thread_id"], 0)
        return message

    # -- method implementations -------------------------------------------------------------

    def _get_me(self, call: Call) -> dict[str, Any]:
        return self.bot_user(call.token)

    def _send_message(self, call: Call) -> dict[str, Any]:
        text = call.params.get("text")
        if not isinstance(text, str) or not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        return self._new_message(call, text)

    def _edit_message_text(self, call: Call) -> dict[str, Any] | bool:
        params = call.params
        text = params.get("text")
        if not isinstance(text, str) or not text:
            raise _ApiError(400, "Bad Request: message text is empty")
        if params.get("inline_message_id"):
            return True
        if not params.get("chat_id") or not params.get("message_id"):
            raise _ApiError(400, "Bad Request: message identifier is not specified")
        message = self._new_message(call, text)
        message["message_id"] = _as_int(params["message_id"], 0)
        message["edit_date"] = message["date"]
        return message

    def _set_webhook(self, call: Call) -> bool:
        params = call.params
        if not params.get("url"):
            raise _ApiError(400, "Bad Request: bad webhook: URL must not be empty")
        webhook = {"url": str(params["url"])}
        for key in ("secret_token", "allowed_updates", "max_connections", "ip_address"):
            if key in params:
                webhook[key] = params[key]
        webhook["drop_pending_updates"] = _as_bool(params.get("drop_pending_updates"))
        with self._cond:
            self._webhook = webhook
            if webhook["drop_pending_updates"]:
                self._updates.clear()
        return True

    def _delete_webhook(self, call: Call) -> bool:
        with self._cond:
            self._webhook = {}
            if _as_bool(call.params.get("drop_pending_updates")):
                self._updates.clear()
        return True

    def _get_webhook_info(self, call: Call) -> dict[str, Any]:
        webhook = self.webhook
        info: dict[str, Any] = {
            "url": webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": 0,
        }
        if webhook.get("allowed_updates") is not None:
            info["allowed_updates"] = webhook["allowed_updates"]
        if webhook.get("max_connections") is not None:
            info["max_connections"] = _as_int(webhook["max_connections"], 40)
        return info

    def _get_updates(self, call: Call) -> list[dict[str, Any]]:
        params = call.params
        offset = _as_int(params.get("offset"), 0)
        limit = min(max(_as_int(params.get("limit"), MAX_UPDATES_PER_CALL), 1), 100)
        timeout = min(max(_as_float(params.get("timeout"), 0.0), 0.0), MAX_LONG_POLL_SECONDS)
        with self._cond:
            # Like Telegram, an offset confirms (and forgets) every earlier update.
            if offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset < 0:
                self._updates = self._updates[offset:]
            if timeout > 0:
                self._cond.wait_for(lambda: bool(self._updates) or self._stopping, timeout)
            return list(self._updates[:limit])

    def _set_my_commands(self, call: Call) -> bool:
        commands = call.params.get("commands")
        with self._cond:
            self._commands = list(commands) if isinstance(commands, list) else []
        return True

    def _delete_my_commands(self, call: Call) -> bool:
        with self._cond:
            self._commands = []
        return True

    def _get_my_commands(self, call: Call) -> list[Any]:
        with self._cond:
            return list(self._commands)

    def _true(self, call: Call) -> bool:
        return True


_MISSING = object()

_METHODS: dict[str, MethodHandler] = {
    "getMe": FakeBotAPI._get_me,
    "sendMessage": FakeBotAPI._send_message,
    "editMessageText": FakeBotAPI._edit_message_text,
    "setWebhook": FakeBotAPI._set_webhook,
    "deleteWebhook": FakeBotAPI._delete_webhook,
    "getWebhookInfo": FakeBotAPI._get_webhook_info,
    "getUpdates": FakeBotAPI._get_updates,
    "setMyCommands": FakeBotAPI._set_my_commands,
    "deleteMyCommands": FakeBotAPI._delete_my_commands,
    "getMyCommands": FakeBotAPI._get_my_commands,
    "answerCallbackQuery": FakeBotAPI._true,
    "deleteMessage": FakeBotAPI._true,
    "sendChatAction": FakeBotAPI._true,
    "close": FakeBotAPI._true,
    "logOut": FakeBotAPI._true,
}


def _format_call(call: Call) -> str:
    def default(value: object) -> object:
        if isinstance(value, UploadedFile):
            return f"<file {value.filename} {len(value.data)} bytes>"
        return repr(value)

    params = json.dumps(call.params, ensure_ascii=False, default=default)
    return f"{time.strftime('%H:%M:%S')} {call.method} {params}"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C, printing one line per call, for demos without a real bot."""
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)

    printing = threading.Lock()

    def log(call: Call) -> None:
        # Calls come in on many threads at once: one whole line each, never two mixed.
        with printing:
            sys.stdout.write(f"{_format_call(call)}\n")
            sys.stdout.flush()

    with FakeBotAPI(args.host, args.port, on_call=log) as api:
        print(f"Fake Bot API listening, base_url={api.base_url}", flush=True)
        print(f"base_file_url={api.base_file_url}  (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
