"""Strict sessions: read before the handlers, written after them, only when changed.

Ports the intent of grammY's strict-session cases to both storages, plus the places
where grammY writes back data nobody changed.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import (
    Fragment,
    JSONSerializer,
    MemoryStorage,
    SessionDataError,
    SessionKeyError,
    Sessions,
    StorageError,
)
from botsessions.models import Session

from .updates import ALICE, inline_query, message

BOT = 123456

pytestmark = pytest.mark.django_db


def every_update(callback: Any) -> TypeHandler[Any, Any]:
    return TypeHandler(Update, callback)


def test_update_reaches_handlers_untouched(make_bot, probe):
    seen: list[dict[str, Any]] = []

    async def handler(update, context):
        seen.append(update.to_dict())

    bot = make_bot(Sessions(storage=probe.storage), [every_update(handler)])
    raw = message("hello")
    bot.process(raw)
    assert seen == [Update.de_json(raw, None).to_dict()]


@pytest.mark.parametrize("access", ["read", "write"])
def test_no_key_raises_a_clear_error(make_bot, probe, access):
    async def handler(update, context):
        if access == "read":
            context.session  # noqa: B018
        else:
            context.session = {"x": 1}

    bot = make_bot(Sessions(storage=probe.storage), [every_update(handler)])
    assert bot.process(inline_query()) == "handler_failed"
    [error] = bot.errors
    assert isinstance(error, SessionKeyError)
    assert "inline_query" in str(error)
    assert probe.counts().reads == 0
    assert probe.counts().writes == 0


def test_custom_resolver_returning_none_raises(make_bot, probe):
    async def handler(update, context):
        context.session  # noqa: B018

    sessions = Sessions(storage=probe.storage, key=lambda update: None)
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("hi"))
    assert isinstance(bot.errors[0], SessionKeyError)
    assert "message" in str(bot.errors[0])


def test_raising_handler_reads_once_and_writes_nothing(make_bot, probe):
    async def handler(update, context):
        context.session["count"] = 99
        raise RuntimeError("boom")

    bot = make_bot(
        Sessions(storage=probe.storage, initial=lambda: {"count": 0}), [every_update(handler)]
    )
    assert bot.process(message("hi")) == "handler_failed"
    counts = probe.counts()
    assert (counts.reads, counts.writes, counts.deletes) == (1, 0, 0)
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") is None


def test_primitive_values_then_none_deletes(make_bot, probe):
    async def increment(update, context):
        if update.message.text == "drop":
            context.session = None
        else:
            context.session += 1

    bot = make_bot(Sessions(storage=probe.storage, initial=lambda: 0), [every_update(increment)])
    bot.process(message("inc"))
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") == "1"
    bot.process(message("inc"))
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") == "2"
    bot.process(message("drop"))
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") is None
    assert probe.counts().deletes == 1


def test_custom_resolver_and_prefix_make_the_storage_key(make_bot, probe):
    async def handler(update, context):
        context.session = {"seen": True}

    sessions = Sessions(
        storage=probe.storage,
        key=lambda update: f"custom-{update.effective_user.id}",
        prefix="pre:",
    )
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("hi"))
    assert probe.stored_text(BOT, "", f"pre:custom-{ALICE}") == '{"seen":true}'


def test_object_sessions_over_four_updates(make_bot, probe):
    initial_calls = 0

    def initial() -> dict[str, Any]:
        nonlocal initial_calls
        initial_calls += 1
        return {}

    async def handler(update, context):
        text = update.message.text
        if text == "drop":
            context.session = None
        else:
            context.session[text] = len(context.session) + 1

    bot = make_bot(Sessions(storage=probe.storage, initial=initial), [every_update(handler)])
    key = f"chat:{ALICE}"
    bot.process(message("a"))
    assert probe.stored_text(BOT, "", key) == '{"a":1}'
    bot.process(message("b"))
    assert probe.stored_text(BOT, "", key) == '{"a":1,"b":2}'
    bot.process(message("drop"))
    assert probe.stored_text(BOT, "", key) is None
    bot.process(message("c"))
    assert probe.stored_text(BOT, "", key) == '{"c":1}'
    counts = probe.counts()
    assert initial_calls == 2
    assert (counts.reads, counts.writes, counts.deletes) == (4, 3, 1)


def test_read_only_updates_do_not_write(make_bot, probe):
    """grammY writes back every session it touched (its issues #707, #774); we compare."""

    async def handler(update, context):
        if update.message.text == "set":
            context.session["n"] = 5
        else:
            _ = context.session["n"]
            context.session["n"] = 5  # the same value again is not a change

    bot = make_bot(
        Sessions(storage=probe.storage, initial=lambda: {"n": 0}), [every_update(handler)]
    )
    assert bot.process(message("set")) == "committed"
    for _ in range(3):
        assert bot.process(message("look")) == "unchanged"
    counts = probe.counts()
    assert (counts.reads, counts.writes) == (4, 1)


def test_new_session_left_at_initial_is_not_written(make_bot, probe):
    async def handler(update, context):
        _ = context.session["n"]

    bot = make_bot(
        Sessions(storage=probe.storage, initial=lambda: {"n": 0}), [every_update(handler)]
    )
    assert bot.process(message("look")) == "unchanged"
    assert probe.counts().writes == 0


def test_initial_is_called_per_session_and_never_shared(make_bot, probe):
    async def handler(update, context):
        context.session["items"].append(update.effective_chat.id)

    bot = make_bot(
        Sessions(storage=probe.storage, initial=lambda: {"items": []}), [every_update(handler)]
    )
    bot.process(message("x", chat_id=ALICE))
    bot.process(message("x", chat_id=-4012345678, user_id=ALICE))
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") == f'{{"items":[{ALICE}]}}'
    assert probe.stored_text(BOT, "", "chat:-4012345678") == '{"items":[-4012345678]}'


def test_async_initial_is_awaited(make_bot, probe):
    async def initial() -> dict[str, int]:
        return {"n": 41}

    async def handler(update, context):
        context.session["n"] += 1

    bot = make_bot(Sessions(storage=probe.storage, initial=initial), [every_update(handler)])
    bot.process(message("x"))
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") == '{"n":42}'


def test_no_initial_means_none(make_bot, probe):
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(context.session)

    bot = make_bot(Sessions(storage=probe.storage), [every_update(handler)])
    assert bot.process(message("x")) == "unchanged"
    assert seen == [None]


def test_64_bit_and_negative_ids_round_trip(make_bot, probe):
    big_user = 2**62 + 12345
    supergroup = -1009876543210123

    async def handler(update, context):
        context.session = {"user": update.effective_user.id}

    sessions = Sessions(storage=probe.storage, key=lambda u: f"chat:{u.effective_chat.id}")
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("x", chat_id=supergroup, user_id=big_user))
    assert probe.stored_text(BOT, "", f"chat:{supergroup}") == f'{{"user":{big_user}}}'


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"pair": (1, 2)}, "tuple"),
        ({1: "int key"}, "int key"),
        ({"set": {1}}, "set"),
        ({"nan": float("nan")}, "NaN"),
        ({"when": object()}, "object"),
    ],
)
def test_non_json_data_is_refused_and_nothing_written(make_bot, probe, value, why):
    async def handler(update, context):
        context.session = value

    bot = make_bot(Sessions(storage=probe.storage, initial=lambda: {}), [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed", why
    assert "JSON" in str(bot.errors[0])
    assert probe.counts().writes == 0


def test_sessions_of_different_bots_never_mix(make_bot, probe):
    async def handler(update, context):
        context.session["n"] += 1

    sessions = Sessions(storage=probe.storage, initial=lambda: {"n": 0})
    first = make_bot(sessions, [every_update(handler)], token="111:first")
    second = make_bot(sessions, [every_update(handler)], token="222:second")
    first.process(message("x"))
    first.process(message("x"))
    second.process(message("x"))
    assert probe.stored_text(111, "", f"chat:{ALICE}") == '{"n":2}'
    assert probe.stored_text(222, "", f"chat:{ALICE}") == '{"n":1}'


def test_unmatched_update_costs_nothing(make_bot, probe):
    from telegram.ext import CommandHandler

    async def handler(update, context):
        context.session["n"] = 1

    bot = make_bot(
        Sessions(storage=probe.storage, initial=lambda: {"n": 0}),
        [CommandHandler("only", handler)],
    )
    assert bot.process(message("not a command")) == "skipped"
    assert probe.counts() == type(probe.counts())()


def test_fragment_config_is_validated():
    from datetime import timedelta

    from botsessions import ConfigurationError

    with pytest.raises(ConfigurationError, match="initial"):
        Fragment(initial={"shared": "object"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ttl"):
        Fragment(ttl=timedelta(0))
    with pytest.raises(ConfigurationError, match="key"):
        Fragment(key="chat")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="storage"):
        Fragment(storage=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="year 9999"):
        Fragment(ttl=timedelta(days=10_000_000))
    with pytest.raises(ConfigurationError, match=r"JSONSerializer\(\), not the class"):
        Fragment(serializer=JSONSerializer)  # type: ignore[arg-type]
    Fragment(serializer=PlainJSON)  # type: ignore[arg-type]  # its methods are static
    with pytest.raises(ConfigurationError, match="not function"):
        Sessions(lambda: {"n": 0})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_key", ["k" * 256, 12345, ""])
def test_unusable_keys_are_refused_before_any_storage_call(make_bot, probe, bad_key):
    """A resolver bug must not become a write that fails on every redelivery."""

    async def handler(update, context):
        context.session["n"] = 1

    sessions = Sessions(storage=probe.storage, initial=dict, key=lambda update: bad_key)
    bot = make_bot(sessions, [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed"
    assert isinstance(bot.errors[0], SessionKeyError)
    assert "255 characters" in str(bot.errors[0])
    assert probe.counts() == type(probe.counts())()


class FailingStorage(MemoryStorage):
    """A storage of a user's own that fails with an error of its own kind, not StorageError."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    async def load(self, keys: Any, mark: Any, *, lock: Any = ()) -> Any:
        if self.failing == "read":
            raise ConnectionError("storage server went away")
        return await super().load(keys, mark, lock=lock)

    async def commit(self, changes: Any, mark: Any = None) -> bool:
        if self.failing == "write":
            raise TimeoutError("storage server timed out")
        return await super().commit(changes, mark)


@pytest.mark.parametrize(
    ("failing", "lazy", "cause"),
    [
        ("read", False, ConnectionError),
        ("read", True, ConnectionError),
        ("write", False, TimeoutError),
    ],
)
def test_any_error_of_a_storage_asks_for_redelivery(make_bot, failing, lazy, cause):
    """Acknowledged (200) with its session unread or unsaved, the update would be lost."""
    ran: list[int] = []

    async def count(update, context):
        session = await context.session if lazy else context.session
        session["n"] = session.get("n", 0) + 1
        ran.append(session["n"])

    storage = FailingStorage(failing)
    bot = make_bot(Sessions(storage=storage, initial=dict, lazy=lazy), [every_update(count)])
    with pytest.raises(StorageError) as raised:
        bot.process(message("hello"))
    assert isinstance(raised.value.__cause__, cause)
    assert ran == ([1] if failing == "write" else [])
    storage.failing = ""
    assert bot.process(message("hello")) == "committed"  # the redelivery
    assert ran[-1] == 1


def test_an_error_of_initial_data_is_a_failed_handler_not_a_storage_failure(make_bot):
    def broken_initial() -> dict[str, Any]:
        raise KeyError("settings")

    async def read(update, context):
        context.session  # noqa: B018

    bot = make_bot(Sessions(storage=MemoryStorage(), initial=broken_initial), [every_update(read)])
    assert bot.process(message("hello")) == "handler_failed"
    assert isinstance(bot.errors[0], KeyError)


class PickledText:
    """A serializer of a project's own whose text is not JSON (base64 of a pickle)."""

    def dumps(self, value: Any) -> str:
        return base64.b64encode(pickle.dumps(value)).decode("ascii")

    def loads(self, text: str) -> Any:
        return pickle.loads(base64.b64decode(text))


class Bytes(PickledText):
    """One whose dumps() gives bytes, as orjson.dumps does."""

    def dumps(self, value: Any) -> Any:
        return json.dumps(value).encode("utf-8")


def test_a_serializer_giving_bytes_fails_the_handler_and_writes_nothing(make_bot, probe):
    async def handler(update, context):
        context.session["n"] = 1

    sessions = Sessions(storage=probe.storage, initial=dict, serializer=Bytes())
    bot = make_bot(sessions, [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed"
    assert isinstance(bot.errors[0], SessionDataError)
    assert "dumps() returned bytes, not str" in str(bot.errors[0])
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") is None


def test_text_that_is_not_json_is_refused_only_by_the_database(make_bot, probe):
    """The database's data column holds JSON: refused before the write (no 503 loop)."""
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(dict(context.session))
        context.session["n"] = context.session.get("n", 0) + 1

    sessions = Sessions(storage=probe.storage, initial=dict, serializer=PickledText())
    bot = make_bot(sessions, [every_update(handler)])
    first, second = bot.process(message("x")), bot.process(message("y"))
    if probe.kind == "db":
        assert (first, second) == ("handler_failed", "handler_failed")
        assert "not JSON, which DatabaseStorage cannot keep" in str(bot.errors[0])
        assert not Session.objects.exists()
    else:
        assert (first, second) == ("committed", "committed")
        assert seen == [{}, {"n": 1}]


def test_an_initial_that_shares_objects_still_gives_each_session_its_own(make_bot, probe):
    defaults: dict[str, Any] = {"notes": []}

    async def note(update: Any, context: Any) -> None:
        context.session["notes"].append(update.effective_message.text)

    sessions = Sessions(storage=probe.storage, initial=defaults.copy)  # a shallow copy
    bot = make_bot(sessions, [every_update(note)])
    bot.process(message("alice's secret", chat_id=ALICE))
    bot.process(message("bob's note", chat_id=ALICE + 1))
    assert probe.stored_text(BOT, "", f"chat:{ALICE + 1}") == '{"notes":["bob\'s note"]}'
    assert defaults == {"notes": []}


def test_more_than_4_mib_of_json_is_refused_on_every_storage(make_bot, probe):
    """MariaDB refuses a statement past its max_allowed_packet: refused everywhere."""

    async def write(update: Any, context: Any) -> None:
        size = int(update.effective_message.text)
        context.session["text"] = "é" * size  # two bytes each

    bot = make_bot(Sessions(storage=probe.storage, initial=dict), [every_update(write)])
    assert bot.process(message(str(2 * 1024 * 1024), chat_id=ALICE)) == "handler_failed"
    assert "more than the 4,194,304 a session may hold" in str(bot.errors[0])
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") is None
    assert bot.process(message(str(2 * 1024 * 1024 - 8), chat_id=ALICE)) == "committed"


class Exploding(PickledText):
    """A serializer of the project's own that fails with an error of its own (as orjson
    raises TypeError for a type it does not know)."""

    def dumps(self, value: Any) -> str:
        raise TypeError("Type is not JSON serializable: Decimal")


def test_a_serializer_failing_its_own_way_fails_the_handler_not_the_request(make_bot, probe):
    async def handler(update: Any, context: Any) -> None:
        context.session["n"] = 1

    sessions = Sessions(storage=probe.storage, initial=dict, serializer=Exploding())
    bot = make_bot(sessions, [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed"
    assert "could not store the data: TypeError: Type is not JSON" in str(bot.errors[0])


class PlainJSON:
    """A serializer class of static methods: its functions need no instance."""

    dumps = staticmethod(json.dumps)
    loads = staticmethod(json.loads)


def test_nan_from_a_serializer_of_ones_own_is_refused_by_the_database(make_bot, probe):
    async def handler(update: Any, context: Any) -> None:
        context.session["x"] = float("nan")

    sessions = Sessions(storage=probe.storage, initial=dict, serializer=PlainJSON)
    bot = make_bot(sessions, [every_update(handler)])
    if probe.kind == "db":
        assert bot.process(message("x")) == "handler_failed"
        assert "NaN is not JSON" in str(bot.errors[0])
    else:
        assert bot.process(message("x")) == "committed"


@pytest.mark.parametrize("version", ["'NaN'", "'abc'", "1e300"])
def test_a_version_a_hand_edit_made_unreadable_is_bad_stored_data(make_bot, version):
    """SQLite keeps any value in the version column: what no version column could hold
    is not compared with versions, and the row is left as it is."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("only SQLite keeps text in a numeric column")
    seen: list[Any] = []

    async def handler(update: Any, context: Any) -> None:
        seen.append(context.session)

    bot = make_bot(Sessions(initial=dict), [every_update(handler)])
    Session.objects.create(bot_id=BOT, fragment="", key=f"chat:{ALICE}", data={"n": 1})
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE botsessions_session SET version = {version}")
    assert bot.process(message("x")) == "bad_stored_data"
    assert seen == [] and Session.objects.values_list("data", flat=True).get() == {"n": 1}
