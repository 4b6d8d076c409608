"""A test kit for bots served by botsessions: post updates, read what the bot sent.

:class:`BotClient` drives a configured bot the way Telegram does: it posts updates to the
webhook view the project mounted for the bot (through Django's test client, with the
configured secret), so they run through the real session storage (the test database)
and the real handlers. The bot's Bot API calls never leave the process: a
:class:`FakeBotAPI` answers and records them. ::

    from botsessions.testing import BotClient

    def test_hunger(db):
        with BotClient() as bot:
            bot.send("🍕", chat_id=1, user_id=1)
            assert bot.send("/hunger", chat_id=1, user_id=1).texts == ["Your hunger level is 1!"]

It works in every kind of Django test. In a test that runs inside a transaction
(Django's ``TestCase``, pytest-django's ``django_db`` without ``transaction=True``) the
update's transaction is a savepoint of the test's, and Django keeps ``on_commit``
callbacks until that outer transaction commits, which it never does. A webhook request
runs in no outer transaction, so the kit ends each post the way the request would end:
it runs the callbacks the update registered (Django's ``captureOnCommitCallbacks`` with
``execute=True``), and the texts sent with ``context.on_commit`` are in the result.

How the transport is swapped: PTB has no public way to give an already built
application another request object, and the project's own factory builds it. The kit
builds the bot's application afresh, gives its bot the fake as both of its request
objects before the application is initialized (:func:`use_fake_bot_api`, the one place
that does), and drops it again when the client is closed, so nothing after the test
uses the fake.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import Client, TestCase
from django.urls import NoReverseMatch, get_resolver, reverse
from telegram import Bot, Message
from telegram.request import BaseRequest, RequestData

from .bots import bot_settings, forget_applications
from .runner import BotRunner, runner_for, shutdown_runners
from .webhook import SECRET_HEADER, webhook_urls

__all__ = [
    "BotAPICall",
    "BotClient",
    "FakeBotAPI",
    "UpdateResult",
    "business_message",
    "callback_query",
    "chat_type_of",
    "edited_message",
    "inline_query",
    "message",
    "migration",
    "use_fake_bot_api",
]


def _update_id_counter(slot: int | None = None) -> Iterator[int]:
    """Update ids from the clock in milliseconds, each ending in this process's slot.

    Sessions remember the ids of the updates they processed, to skip redeliveries. The
    test database forgets them with the test, but Redis keeps them for a day, for every
    process using the same prefix: a process counting from 1 again would resend ids an
    earlier run left there, and processes running at once (pytest-xdist workers) would
    send each other's ids; their updates would be skipped as redeliveries. So an id is
    the millisecond it is made in (one more than the last, when sent faster), times
    1,000, plus ``slot`` (by default :func:`_process_slot`): a later process starts
    above the ids of earlier ones (unless one built updates faster than one a
    millisecond, and ran ahead of the clock, in the same slot), and simultaneous ones
    never meet while their slots differ. The ids stay below 2**53 (exact in JSON tools
    and JavaScript) until the year 2255.
    """
    last = 0
    while True:
        last = max(last + 1, time.time_ns() // 1_000_000)
        yield last * 1000 + (_process_slot() if slot is None else slot)


def _process_slot() -> int:
    """pytest-xdist's worker number (``gw3``: 3), which no two workers share; otherwise
    the process id, modulo 1,000."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % 1000
    return os.getpid() % 1000


# Ids shared by every client of the process: two clients of one bot in one test must not
# send the same update id (the second would be a redelivery).
_update_ids = _update_id_counter()
_message_ids = itertools.count(1)
_query_ids = itertools.count(1)
_ids_lock = threading.Lock()

#: Supergroup and channel ids are -100 followed by at least ten digits.
SUPERGROUP_IDS_BELOW = -(10**12)


def _next(counter: Iterator[int]) -> int:
    with _ids_lock:
        return next(counter)


# -- the Bot API, answered in the process ---------------------------------------------


@dataclass(frozen=True)
class BotAPICall:
    """One Bot API call the bot made: the method's name, its parameters, and whether the
    fake answered it with an error."""

    method: str
    params: dict[str, Any]
    #: The error the call was answered with (Telegram's description, e.g. after
    #: :meth:`FakeBotAPI.fail`), or ``None`` when it succeeded.
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the call succeeded (what it sent was delivered)."""
        return self.error is None


class _Failure(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, int]) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


Answer = Any  # a result, or a function of the call's parameters returning one


class FakeBotAPI(BaseRequest):
    """A PTB request object that answers Bot API calls itself and records them.

    Messages sent get a new ``message_id`` and the chat they were sent to; edits, answers
    and other actions answer ``True``; ``getMe`` describes the bot from its token, and
    ``getChatMember`` says the user is a plain member. Any other ``get…`` method has no
    answer until you give one with :meth:`answer`; :meth:`fail` makes a method fail as
    Telegram would (PTB raises ``BadRequest`` and the like in the handler).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[BotAPICall] = []
        self._answers: dict[str, Answer] = {}
        self._failures: dict[str, _Failure] = {}
        self.bot_username = "test_bot"

    @property
    def calls(self) -> list[BotAPICall]:
        """Every call the bot made since the client was created, in order."""
        with self._lock:
            return list(self._calls)

    def answer(self, method: str, result: Answer) -> None:
        """Answer ``method`` with ``result`` from now on: the Bot API's JSON ``result``
        (a dict, list, ``True``...), or a function of the call's parameters returning it.

        For example ``bot.answer("getChatMember", {"status": "administrator", ...})``.
        ``method`` is the Bot API's name of a method PTB knows, else ``ValueError``.
        """
        _check_method(method)
        with self._lock:
            self._answers[method] = result
            self._failures.pop(method, None)

    def fail(
        self,
        method: str,
        description: str,
        *,
        error_code: int = 400,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        """Make ``method`` fail from now on, as Telegram answers an error.

        ``description`` is Telegram's text, e.g. ``"Forbidden: bot was blocked by the
        user"`` with ``error_code=403``. ``method`` is the Bot API's name of a method PTB
        knows, else ``ValueError``: a misspelt one would fail nothing, and the test would
        pass for the wrong reason. ``retry_after`` (flood control, with 429) and
        ``migrate_to_chat_id`` go into the answer's ``parameters``, from which PTB raises
        ``RetryAfter`` and ``ChatMigrated``.
        """
        _check_method(method)
        parameters = {
            name: value
            for name, value in (
                ("retry_after", retry_after),
                ("migrate_to_chat_id", migrate_to_chat_id),
            )
            if value is not None
        }
        with self._lock:
            self._failures[method] = _Failure(error_code, description, parameters)
            self._answers.pop(method, None)

    # -- BaseRequest --------------------------------------------------------------

    @property
    def read_timeout(self) -> float | None:
        return None

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        head, _, name = url.rpartition("/")
        params = dict(request_data.parameters) if request_data is not None else {}
        with self._lock:
            failure = self._failures.get(name)
            answer = self._answers.get(name, _DEFAULT)
        error: str | None = None
        try:
            if failure is not None:
                raise failure
            if answer is _DEFAULT:
                result = self._default(name, params, _token_of(head))
            else:
                result = answer(params) if callable(answer) else answer
            return 200, json.dumps({"ok": True, "result": result}).encode()
        except _Failure as exc:
            error = exc.description
            body = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
            return exc.code, json.dumps(body).encode()
        except Exception as exc:  # an answer function that raised, or a result not JSON
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            # Recorded with how it ended, so that results can tell what was delivered.
            with self._lock:
                self._calls.append(BotAPICall(name, params, error))

    # -- default answers ------------------------------------------------------------

    def bot_user(self, token: str) -> dict[str, Any]:
        """The bot's ``User``; its id is the number its token starts with, as Telegram's."""
        head = token.split(":", 1)[0]
        return {
            "id": int(head) if head.isdigit() else 1,
            "is_bot": True,
            "first_name": "Test bot",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": True,
        }

    def _default(self, name: str, params: dict[str, Any], token: str) -> Any:
        if name == "getMe":
            return self.bot_user(token)
        if name == "getChatMember":
            return {"status": "member", "user": _user(int(params["user_id"]))}
        if name in ("copyMessage",):
            return {"message_id": _next(_message_ids)}
        if name in ("copyMessages", "forwardMessages"):
            return [{"message_id": _next(_message_ids)} for _ in params.get("message_ids", ())]
        if name == "sendMediaGroup":
            return [self._message(params, token) for _ in params.get("media", ())]
        returns = _returns(name)
        if returns is Message:  # sendMessage, sendPhoto, forwardMessage, …
            return self._message(params, token)
        if returns == "Message | bool":  # an edit: True for an inline message's
            if params.get("inline_message_id"):
                return True
            return self._message(params, token, message_id=params.get("message_id"))
        if returns is bool:
            return True
        # Any other object (a ChatInviteLink, a ForumTopic, a Poll, …): made up, it would
        # be wrong or fail PTB's parsing; the test says what it should be.
        raise _Failure(
            400,
            f"Bad Request: the test kit has no answer for {name}: give one with answer()",
            {},
        )

    def _message(
        self, params: dict[str, Any], token: str, *, message_id: Any = None
    ) -> dict[str, Any]:
        sent: dict[str, Any] = {
            "message_id": int(message_id) if message_id else _next(_message_ids),
            "date": int(time.time()),
            "chat": _chat_of(params.get("chat_id")),
            "from": self.bot_user(token),
        }
        for name in ("text", "caption", "business_connection_id", "message_thread_id"):
            if params.get(name) is not None:
                sent[name] = params[name]
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            sent["reply_markup"] = markup
        return sent


_DEFAULT = object()


@functools.cache
def _bot_api_methods() -> frozenset[str]:
    """The Bot API methods PTB's :class:`~telegram.Bot` knows, by their Bot API names.

    PTB gives each method a camelCase alias of its own (``Bot.sendMessage`` is
    ``Bot.send_message``); those aliases are the list, with ``close``, the one method
    whose name is a single word (so it has no alias).
    """
    return frozenset({"close"}) | frozenset(
        name
        for name in dir(Bot)
        if name[:1].islower()
        and not name.islower()
        and callable(getattr(Bot, name))
        and getattr(Bot, _snake_case(name), None) is getattr(Bot, name)
    )


def _check_method(method: str) -> None:
    """Refuse a name that is no Bot API method PTB knows, suggesting the nearest ones."""
    known = _bot_api_methods()
    if method in known:
        return
    camel = re.sub(r"_([a-z])", lambda letter: letter[1].upper(), method)
    close = [camel] if camel in known else difflib.get_close_matches(method, known, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"{method!r} is not a Bot API method python-telegram-bot knows "
        f"(by its Bot API name, like 'sendMessage'){hint}"
    )


@functools.cache
def _returns(name: str) -> Any:
    """What PTB's method for Bot API method ``name`` is declared to return."""
    method = getattr(Bot, _snake_case(name), None)
    return None if method is None else inspect.signature(method).return_annotation


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _token_of(head: str) -> str:
    # The method URL is ``<base url><token>/<method>``: the token follows "/bot".
    match = re.search(r"/bot([^/]*)$", head)
    return match[1] if match else ""


def _chat_of(chat_id: Any) -> dict[str, Any]:
    if isinstance(chat_id, str) and chat_id.startswith("@"):
        return {"id": SUPERGROUP_IDS_BELOW - 1, "type": "channel", "username": chat_id[1:]}
    return _chat(int(chat_id) if chat_id is not None else 0)


def use_fake_bot_api(bot: Bot, api: FakeBotAPI) -> Callable[[], None]:
    """Make ``bot`` send every Bot API call to ``api``, before it is initialized; returns
    the function that gives it its own request objects back.

    PTB keeps a bot's two request objects (one for ``getUpdates``, one for the rest) in
    ``Bot._request`` and routes each call through it; the kit's tests pin that. This is
    the only place the kit touches a PTB private attribute.
    """
    own = bot._request
    bot._request = (api, api)

    def give_back() -> None:
        if bot._request == (api, api):
            bot._request = own

    return give_back


# -- updates --------------------------------------------------------------------------


def chat_type_of(chat_id: int) -> str:
    """The type of chat an id is of: users' ids are positive (``private``), supergroups'
    are -100 followed by ten or more digits, basic groups' are the other negative ones."""
    if chat_id > 0:
        return "private"
    return "supergroup" if chat_id < SUPERGROUP_IDS_BELOW else "group"


def _user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}


def _chat(chat_id: int, chat_type: str | None = None) -> dict[str, Any]:
    kind = chat_type or chat_type_of(chat_id)
    chat: dict[str, Any] = {"id": chat_id, "type": kind}
    if kind == "private":
        chat["first_name"] = f"User {chat_id}"
    else:
        chat["title"] = f"Chat {chat_id}"
    return chat


# A command as Telegram marks one: Latin letters, digits and underscores after the slash,
# and the bot's username if given ("/start@my_bot"); it ends at anything else.
_COMMAND = re.compile(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?")


def _message_body(
    text: str | None, chat_id: int, user_id: int, chat_type: str | None, message_id: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": message_id if message_id is not None else _next(_message_ids),
        "date": int(time.time()),
        "chat": _chat(chat_id, chat_type),
        "from": _user(user_id),
    }
    if text is not None:
        body["text"] = text
        command = _COMMAND.match(text)
        if command:  # ASCII only, so its length is the same in Telegram's UTF-16 units
            length = len(command[0])
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return body


def _update(kind: str, body: dict[str, Any], update_id: int | None) -> dict[str, Any]:
    return {"update_id": update_id if update_id is not None else _next(_update_ids), kind: body}


def message(
    text: str,
    *,
    chat_id: int,
    user_id: int,
    chat_type: str | None = None,
    message_id: int | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """A ``message`` update; a text starting with ``/`` gets its ``bot_command`` entity.

    ``chat_type`` defaults to what the id says (:func:`chat_type_of`).
    """
    return _update(
        "message", _message_body(text, chat_id, user_id, chat_type, message_id), update_id
    )


def edited_message(
    text: str,
    *,
    chat_id: int,
    user_id: int,
    message_id: int,
    chat_type: str | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """An ``edited_message`` update: message ``message_id`` now reads ``text``."""
    body = _message_body(text, chat_id, user_id, chat_type, message_id)
    body["edit_date"] = body["date"]
    return _update("edited_message", body, update_id)


def callback_query(
    data: str,
    *,
    chat_id: int,
    user_id: int,
    message_id: int | None = None,
    message_text: str | None = None,
    chat_type: str | None = None,
    bot_id: int = 1,
    update_id: int | None = None,
) -> dict[str, Any]:
    """A ``callback_query`` update: ``user_id`` pressed the button carrying ``data`` on
    a message the bot (``bot_id``) sent to ``chat_id``."""
    pressed_on = _message_body(message_text, chat_id, user_id, chat_type, message_id)
    pressed_on["from"] = {"id": bot_id, "is_bot": True, "first_name": "Test bot"}
    pressed_on.pop("entities", None)
    query = {
        "id": str(_next(_query_ids)),
        "from": _user(user_id),
        "chat_instance": str(chat_id),
        "data": data,
        "message": pressed_on,
    }
    return _update("callback_query", query, update_id)


def business_message(
    text: str,
    *,
    connection_id: str,
    chat_id: int,
    user_id: int | None = None,
    message_id: int | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """A ``business_message`` update: a message in the private chat ``chat_id`` of a
    business account the bot serves through connection ``connection_id``.

    From the customer (``user_id`` defaults to ``chat_id``); pass the owner's id for a
    message the owner sent. Its sessions are the business account's, apart from the
    bot's own chat with the same id.
    """
    sender = chat_id if user_id is None else user_id
    body = _message_body(text, chat_id, sender, "private", message_id)
    body["business_connection_id"] = connection_id
    return _update("business_message", body, update_id)


def inline_query(
    query: str,
    *,
    user_id: int,
    offset: str = "",
    chat_type: str | None = None,
    update_id: int | None = None,
) -> dict[str, Any]:
    """An ``inline_query`` update: ``user_id`` typed ``@bot query``. It has no chat."""
    body: dict[str, Any] = {
        "id": str(_next(_query_ids)),
        "from": _user(user_id),
        "query": query,
        "offset": offset,
    }
    if chat_type is not None:
        body["chat_type"] = chat_type
    return _update("inline_query", body, update_id)


def migration(
    old_chat_id: int,
    new_chat_id: int,
    *,
    user_id: int,
    in_new_chat: bool = False,
    update_id: int | None = None,
) -> dict[str, Any]:
    """One of the two notices Telegram sends when a group becomes a supergroup.

    The one in the old group (``migrate_to_chat_id``) by default; ``in_new_chat=True``
    for the one in the supergroup (``migrate_from_chat_id``).
    """
    if in_new_chat:
        body = _message_body(None, new_chat_id, user_id, "supergroup", None)
        body["migrate_from_chat_id"] = old_chat_id
    else:
        body = _message_body(None, old_chat_id, user_id, "group", None)
        body["migrate_to_chat_id"] = new_chat_id
    return _update("message", body, update_id)


# -- the client -----------------------------------------------------------------------


@dataclass
class UpdateResult:
    """What posting one update gave: the webhook's answer and the bot's Bot API calls."""

    #: The update that was posted (post it again to redeliver it).
    update: dict[str, Any]
    #: The webhook's HTTP status.
    status: int
    #: The webhook's JSON answer (``{"ok": true, "outcome": "committed"}`` and the like).
    json: Any
    #: Every Bot API call the bot made while it handled the update, after commit included,
    #: and those answered with an error (their ``error`` says which).
    calls: list[BotAPICall] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """The texts of the messages the bot sent (``sendMessage``), in order.

        Only those delivered: a call answered with an error (:meth:`BotClient.fail`) is
        in :attr:`calls`, with its ``error``, and not here.
        """
        return [
            str(call.params["text"])
            for call in self.calls
            if call.method == "sendMessage" and call.ok
        ]

    @property
    def outcome(self) -> str | None:
        """How the update ended (:class:`~botsessions.outcome.Outcome`), if it was taken."""
        return self.json.get("outcome") if isinstance(self.json, dict) else None

    def calls_to(self, method: str) -> list[BotAPICall]:
        """The calls of one Bot API method, e.g. ``"answerCallbackQuery"``."""
        return [call for call in self.calls if call.method == method]


class BotClient:
    """Drives the bot ``alias`` of ``BOTSESSIONS_BOTS`` through its webhook, in a test.

    Updates go to the first URL in the project's URLconf that mounts a webhook view
    (:class:`~botsessions.webhook.TelegramWebhookView` or its async twin) for ``alias``;
    pass ``path=`` to choose one. The configured ``WEBHOOK_SECRET`` is sent along.

    The bot's application is built afresh for the client, with its Bot API calls
    answered by :attr:`api` (a :class:`FakeBotAPI`). Close the client at the end of the
    test (``with BotClient() as bot:``, ``self.addCleanup(bot.close)``, or pytest's
    ``bot_client`` fixture), which drops that application again.

    With the async view (:class:`~botsessions.webhook.AsyncTelegramWebhookView`) updates
    run on database threads of their own, outside the test's transaction: use it from
    transactional tests only (``transaction=True``, ``TransactionTestCase``).
    """

    def __init__(
        self, alias: str = "default", *, path: str | None = None, client: Client | None = None
    ) -> None:
        self.alias = alias
        self.api = FakeBotAPI()
        self.django_client = client or Client()
        self._path = path
        self._give_back: list[Callable[[], None]] = []
        bot_settings(alias)  # an unknown alias fails here, clearly
        _drop_applications()

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Drop the application the client used; the next use builds it anew. An
        application the project built once (a module's) gets its own transport back."""
        _drop_applications()
        while self._give_back:
            self._give_back.pop()()

    def __enter__(self) -> BotClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- answers ----------------------------------------------------------------------

    def answer(self, method: str, result: Answer) -> None:
        """Answer a Bot API method with ``result`` (see :meth:`FakeBotAPI.answer`)."""
        self.api.answer(method, result)

    def fail(
        self,
        method: str,
        description: str,
        *,
        error_code: int = 400,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        """Make a Bot API method fail (see :meth:`FakeBotAPI.fail`)."""
        self.api.fail(
            method,
            description,
            error_code=error_code,
            retry_after=retry_after,
            migrate_to_chat_id=migrate_to_chat_id,
        )

    @property
    def calls(self) -> list[BotAPICall]:
        """Every Bot API call since the client was created (``getMe`` included)."""
        return self.api.calls

    # -- posting ----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The URL the client posts to."""
        return self._path if self._path is not None else webhook_path(self.alias)

    def post(self, update: dict[str, Any]) -> UpdateResult:
        """Post a raw update (a dict as Telegram sends it) to the webhook.

        A test that may not use the database the sessions are written to (pytest-django's
        ``databases=``, Django's ``TestCase.databases``) fails here with Django's error;
        in the view the same refusal would only come back as a 503.
        """
        runner = self._runner()
        runner.initialize()  # getMe, outside any update's calls
        path = self.path
        using = runner.application.unit_database
        with connections[using].cursor():  # Django's refusal, if the test may not use it
            pass
        if _is_async_view(path) and connections[using].in_atomic_block:
            raise RuntimeError(
                "The async webhook view runs each update on a database thread of its own, "
                "outside the test's transaction: use a transactional test "
                "(django_db(transaction=True), TransactionTestCase) or the sync view."
            )
        secret = bot_settings(self.alias).get("WEBHOOK_SECRET") or ""
        if not secret and not django_settings.DEBUG:  # Django's tests run with DEBUG off
            raise ImproperlyConfigured(
                f"Bot {self.alias!r} has no WEBHOOK_SECRET, and with DEBUG off its webhook "
                "refuses every update (403): give it one in the test settings."
            )
        headers = {SECRET_HEADER: secret} if secret else {}
        before = len(self.api.calls)
        # Inside a test's transaction the update's commit is a savepoint's release, and
        # Django holds its on_commit callbacks for an outer commit that never comes. A
        # webhook request has no outer transaction: run them as its end would.
        with TestCase.captureOnCommitCallbacks(using=using, execute=True):
            response = self.django_client.post(
                path, data=json.dumps(update), content_type="application/json", headers=headers
            )
        try:
            answer = json.loads(response.content)
        except ValueError:
            answer = None
        return UpdateResult(update, response.status_code, answer, self.api.calls[before:])

    def _runner(self) -> BotRunner:
        runner = runner_for(self.alias)
        bot = runner.application.bot
        if bot.request is not self.api:
            if runner.application._initialized:
                # Built and initialized elsewhere (another client closed, or the project
                # used it): start again from a fresh application.
                _drop_applications()
                runner = runner_for(self.alias)
            self._give_back.append(use_fake_bot_api(runner.application.bot, self.api))
        return runner

    # -- builders -----------------------------------------------------------------------

    def send(
        self,
        text: str,
        *,
        chat_id: int,
        user_id: int,
        chat_type: str | None = None,
        message_id: int | None = None,
    ) -> UpdateResult:
        """Send a message (a command gets its entity); see :func:`message`."""
        return self.post(
            message(
                text, chat_id=chat_id, user_id=user_id, chat_type=chat_type, message_id=message_id
            )
        )

    def edit(
        self,
        text: str,
        *,
        chat_id: int,
        user_id: int,
        message_id: int,
        chat_type: str | None = None,
    ) -> UpdateResult:
        """Edit message ``message_id``; see :func:`edited_message`."""
        return self.post(
            edited_message(
                text, chat_id=chat_id, user_id=user_id, message_id=message_id, chat_type=chat_type
            )
        )

    def press(
        self,
        data: str,
        *,
        chat_id: int,
        user_id: int,
        message_id: int | None = None,
        message_text: str | None = None,
        chat_type: str | None = None,
    ) -> UpdateResult:
        """Press an inline button carrying callback ``data``; see :func:`callback_query`."""
        return self.post(
            callback_query(
                data,
                chat_id=chat_id,
                user_id=user_id,
                message_id=message_id,
                message_text=message_text,
                chat_type=chat_type,
                bot_id=self._bot_id(),
            )
        )

    def send_business(
        self, text: str, *, connection_id: str, chat_id: int, user_id: int | None = None
    ) -> UpdateResult:
        """Send a message in a business account's chat; see :func:`business_message`."""
        return self.post(
            business_message(text, connection_id=connection_id, chat_id=chat_id, user_id=user_id)
        )

    def inline_query(
        self, query: str, *, user_id: int, offset: str = "", chat_type: str | None = None
    ) -> UpdateResult:
        """Type an inline query; see :func:`inline_query`."""
        return self.post(inline_query(query, user_id=user_id, offset=offset, chat_type=chat_type))

    def migrate(
        self, old_chat_id: int, new_chat_id: int, *, user_id: int, in_new_chat: bool = False
    ) -> UpdateResult:
        """Turn a group into a supergroup; see :func:`migration`."""
        return self.post(
            migration(old_chat_id, new_chat_id, user_id=user_id, in_new_chat=in_new_chat)
        )

    def _bot_id(self) -> int:
        runner = self._runner()
        runner.initialize()
        bot_id: int = runner.application.bot.id
        return bot_id


def _drop_applications() -> None:
    """Forget every built application and stop its runner (the bots are built anew)."""
    shutdown_runners()
    forget_applications()


# -- finding the webhook --------------------------------------------------------------


def webhook_path(alias: str, urlconf: str | None = None) -> str:
    """The path of the first webhook view in the URLconf that serves bot ``alias``."""
    found = next(
        (
            (pattern, namespaces)
            for pattern, namespaces, served in webhook_urls(get_resolver(urlconf).url_patterns)
            if served == alias
        ),
        None,
    )
    if found is None:
        raise LookupError(
            f"No URL in the URLconf mounts a webhook view for bot {alias!r}; "
            "mount one, or give the client path=."
        )
    pattern, namespaces = found
    if not pattern.name and namespaces:
        raise LookupError(
            f"The webhook view of bot {alias!r} is in a namespace and has no URL name; "
            "name it, or give the client path=."
        )
    try:
        if pattern.name:
            return reverse(":".join([*namespaces, pattern.name]), urlconf=urlconf)
        return reverse(pattern.callback, urlconf=urlconf)
    except NoReverseMatch:
        raise LookupError(
            f"The webhook URL of bot {alias!r} takes arguments ({pattern.pattern}); "
            "give the client path=."
        ) from None


def _is_async_view(path: str) -> bool:
    from django.urls import resolve

    view_class = getattr(resolve(path).func, "view_class", None)
    return bool(getattr(view_class, "view_is_async", False))
