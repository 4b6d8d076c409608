"""Lazy sessions: nothing is read until a handler awaits the session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import SessionKeyError, Sessions

from .probes import RecordingStorage
from .updates import ALICE, inline_query, message

BOT = 123456
KEY = f"chat:{ALICE}"

pytestmark = pytest.mark.django_db


def every_update(callback: Any) -> TypeHandler[Any, Any]:
    return TypeHandler(Update, callback)


def lazy(storage: Any, **options: Any) -> Sessions:
    return Sessions(storage=storage, lazy=True, **options)


async def value_of(awaitable: Any) -> Any:
    return await awaitable


def test_update_reaches_handlers_untouched(make_bot, probe):
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(update.to_dict())

    bot = make_bot(lazy(probe.storage), [every_update(handler)])
    raw = message("hi")
    bot.process(raw)
    assert seen == [Update.de_json(raw, None).to_dict()]


@pytest.mark.parametrize("access", ["read", "write"])
def test_no_key_raises_on_access(make_bot, probe, access):
    async def handler(update, context):
        if access == "read":
            await context.session
        else:
            context.session = 1

    bot = make_bot(lazy(probe.storage), [every_update(handler)])
    bot.process(inline_query())
    assert isinstance(bot.errors[0], SessionKeyError)
    assert probe.counts().reads == 0


def test_raising_handler_writes_nothing(make_bot, probe):
    async def handler(update, context):
        session = await context.session
        session["n"] = 1
        raise RuntimeError("boom")

    bot = make_bot(lazy(probe.storage, initial=dict), [every_update(handler)])
    bot.process(message("x"))
    assert probe.counts().writes == 0


def test_primitive_values_round_trip(make_bot, probe):
    async def handler(update, context):
        context.session = (await context.session) + 1

    bot = make_bot(lazy(probe.storage, initial=lambda: 0), [every_update(handler)])
    bot.process(message("x"))
    bot.process(message("x"))
    assert probe.stored_text(BOT, "", KEY) == "2"


def test_awaiting_twice_reads_once(make_bot, probe):
    async def handler(update, context):
        first = await context.session
        second = await context.session
        assert first is second
        second["n"] += 1

    bot = make_bot(lazy(probe.storage, initial=lambda: {"n": 0}), [every_update(handler)])
    bot.process(message("x"))
    assert probe.counts().reads == 1
    assert probe.stored_text(BOT, "", KEY) == '{"n":1}'


def test_assigning_before_reading_skips_the_read(make_bot, probe):
    async def handler(update, context):
        context.session = {"fresh": True}

    bot = make_bot(lazy(probe.storage), [every_update(handler)])
    bot.process(message("x"))
    bot.process(message("x"))  # an unconditional write over an existing row
    assert probe.counts().reads == 0
    assert probe.stored_text(BOT, "", KEY) == '{"fresh":true}'


def test_no_access_means_no_read_and_no_write(make_bot, probe):
    async def handler(update, context):
        pass

    bot = make_bot(lazy(probe.storage, initial=dict), [every_update(handler)])
    bot.process(message("x"))
    assert probe.counts() == type(probe.counts())()


def test_read_finishing_after_an_assignment_is_discarded(make_bot):
    storage = RecordingStorage()
    seen: list[Any] = []

    async def handler(update, context):
        storage.read_gate = asyncio.Event()
        storage.read_started = asyncio.Event()
        pending = asyncio.ensure_future(value_of(context.session))
        await storage.read_started.wait()
        context.session = {"who": "assigned"}
        storage.read_gate.set()
        seen.append(await pending)

    bot = make_bot(lazy(storage, initial=lambda: {"who": "initial"}), [every_update(handler)])
    bot.process(message("x"))
    assert seen == [{"who": "assigned"}]
    from botsessions import StorageKey

    assert storage.stored(StorageKey(BOT, "", KEY)).data == '{"who":"assigned"}'


def test_assigned_awaitable_is_awaited_and_its_result_written(make_bot, probe):
    async def forty_two() -> int:
        await asyncio.sleep(0)
        return 42

    async def handler(update, context):
        context.session = forty_two()

    bot = make_bot(lazy(probe.storage), [every_update(handler)])
    bot.process(message("x"))
    assert probe.stored_text(BOT, "", KEY) == "42"


def test_an_assigned_awaitable_that_raises_fails_the_handler(make_bot, probe):
    """It is the handler's code: the update ends as a failed handler's (200, nothing
    kept) and the error handlers are told, not as a 500 that Telegram redelivers."""

    async def fetch() -> int:
        raise RuntimeError("the menu service is down")

    async def handler(update, context):
        context.session = fetch()

    bot = make_bot(lazy(probe.storage, initial=dict), [every_update(handler)])
    assert bot.process(message("x")) == "handler_failed"
    assert "the menu service is down" in str(bot.errors[0])
    assert probe.stored_text(BOT, "", KEY) is None


def test_a_lazy_session_assigned_to_itself_stays_as_it_was(make_bot, probe):
    async def count(update, context):
        (await context.session)["n"] += 1

    async def same(update, context):
        context.session = context.session

    bot = make_bot(lazy(probe.storage, initial=lambda: {"n": 0}), [every_update(count)])
    bot.process(message("x"))
    again = make_bot(lazy(probe.storage, initial=lambda: {"n": 0}), [every_update(same)])
    assert again.process(message("y")) == "unchanged"
    assert probe.stored_text(BOT, "", KEY) == '{"n":1}'


def test_pending_read_is_awaited_before_the_commit(make_bot):
    storage = RecordingStorage()

    async def handler(update, context):
        storage.read_gate = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, storage.read_gate.set)
        # Accessed but never awaited: the read it started must finish before the commit.
        context.session  # noqa: B018

    bot = make_bot(lazy(storage, initial=lambda: {"n": 0}), [every_update(handler)])
    assert bot.process(message("x")) == "unchanged"
    assert storage.counts.reads == 1
    assert bot.errors == []


def test_lazy_session_changed_through_the_awaited_object_is_saved(make_bot, probe):
    async def handler(update, context):
        (await context.session)["items"].append(update.message.text)

    bot = make_bot(lazy(probe.storage, initial=lambda: {"items": []}), [every_update(handler)])
    bot.process(message("a"))
    bot.process(message("b"))
    assert probe.stored_text(BOT, "", KEY) == '{"items":["a","b"]}'
