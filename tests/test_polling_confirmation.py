"""runbot confirms an update to Telegram only once it is processed (botsessions.confirming).

Each test runs PTB's own Updater against the fake Bot API, which forgets an update once
a getUpdates call asks for a later offset, as Telegram does: what it still holds is
what a crash or a stop has not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from telegram import Update
from telegram.ext import ApplicationBuilder

from botsessions import Sessions, telegram_api, use_sessions
from botsessions.backoff import Backoff
from botsessions.confirming import confirm_when_processed
from botsessions.errors import SessionConflict, StorageError
from botsessions.ptb import SessionApplication

from .fakebotapi import FakeBotAPI
from .harness import TOKEN

Process = Callable[[int, int], Awaitable[None]]


def polling_application(
    api: FakeBotAPI, process: Process, *, concurrent_updates: int = 1
) -> SessionApplication:
    """runbot's application, with ``process(update_id, try)`` as its update processing."""
    builder = (
        ApplicationBuilder()
        .token(TOKEN)
        .base_url(api.base_url)
        .concurrent_updates(concurrent_updates)
    )
    application = use_sessions(builder, Sessions(initial=dict)).build()
    assert isinstance(application, SessionApplication)
    tries: dict[int, int] = {}

    async def process_update(update: object) -> None:
        assert isinstance(update, Update)
        tries[update.update_id] = tries.get(update.update_id, 0) + 1
        await process(update.update_id, tries[update.update_id])

    application.process_update = process_update  # type: ignore[method-assign]
    confirming = confirm_when_processed(application)
    telegram_api.keep_polling_through_storage_errors(application, confirming.finished)
    return application


def pending(api: FakeBotAPI) -> list[int]:
    return [update["update_id"] for update in api.pending_updates()]


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def polling(application: SessionApplication) -> AsyncIterator[None]:
    """The application initialized, polling through PTB's Updater, and started."""
    assert application.updater is not None
    async with application:
        await application.updater.start_polling(poll_interval=0, timeout=1)
        await application.start()
        yield


async def stop(application: SessionApplication) -> None:
    """What PTB's run_polling does at a stop signal: the Updater, then the application."""
    assert application.updater is not None
    await application.updater.stop()
    await application.stop()


async def begin_stop(application: SessionApplication) -> asyncio.Task[None]:
    """Start stopping, and return once PTB's last getUpdates has been sent."""
    stopping = asyncio.create_task(stop(application))
    await wait_until(lambda: not application.running)
    return stopping


class Gate:
    """Update processing that holds every update until the test opens the gate."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def __call__(self, update_id: int, attempt: int) -> None:
        self.reached.set()
        await self.opened.wait()


@pytest.fixture(autouse=True)
def long_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry's pause outlasts the test: only a stop ends it."""
    monkeypatch.setattr(telegram_api, "OUTAGE_BACKOFF", Backoff(first=30.0, cap=30.0))
    monkeypatch.setattr(telegram_api, "CONTENTION_BACKOFF", Backoff(first=30.0, cap=30.0))


def test_a_batch_is_confirmed_once_it_is_processed(api: FakeBotAPI) -> None:
    """Until then a crash would lose nothing: Telegram still holds the whole batch."""
    gate = Gate()
    ids = [api.queue_message(text)["update_id"] for text in ("one", "two", "three")]

    async def run() -> None:
        application = polling_application(api, gate)
        async with polling(application):
            await asyncio.wait_for(gate.reached.wait(), 5)
            await asyncio.sleep(0.3)  # time for PTB's next poll, which would confirm them
            assert pending(api) == ids
            assert len(api.calls_to("getUpdates")) == 1
            gate.opened.set()
            await wait_until(lambda: not pending(api))
            await stop(application)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("error", "processed"),
    [(StorageError("database gone"), [1]), (SessionConflict("busy"), [1, 3])],
    ids=["outage", "contention"],
)
def test_a_stop_confirms_what_it_processed_and_leaves_the_rest(
    api: FakeBotAPI, error: Exception, processed: list[int]
) -> None:
    """PTB's last getUpdates comes before the updates it fetched are processed.

    Update 1 is being processed then, and goes through; update 2 cannot be stored
    during the stop. After an outage, update 3 is not tried; after contention, it is,
    and goes through. Telegram still holds update 2 to deliver again, and so update 3
    (an offset confirms the updates before it only), which is skipped then if recorded.
    """
    gate = Gate()
    done: list[int] = []

    async def process(update_id: int, attempt: int) -> None:
        if update_id == ids[1]:
            raise error
        if update_id == ids[0]:
            await gate(update_id, attempt)
        done.append(update_id)

    ids = [api.queue_message(text)["update_id"] for text in ("one", "two", "three")]

    async def run() -> None:
        application = polling_application(api, process)
        async with polling(application):
            await asyncio.wait_for(gate.reached.wait(), 5)
            stopping = await begin_stop(application)
            assert pending(api) == ids
            gate.opened.set()
            await asyncio.wait_for(stopping, 5)

    asyncio.run(run())
    assert done == [ids[number - 1] for number in processed]
    assert pending(api) == ids[1:]


def test_a_stop_with_everything_processed_confirms_it_all(api: FakeBotAPI) -> None:
    gate = Gate()
    ids = [api.queue_message(text)["update_id"] for text in ("one", "two")]

    async def run() -> None:
        application = polling_application(api, gate)
        async with polling(application):
            await asyncio.wait_for(gate.reached.wait(), 5)
            stopping = await begin_stop(application)
            assert pending(api) == ids
            gate.opened.set()
            await asyncio.wait_for(stopping, 5)

    asyncio.run(run())
    assert pending(api) == []


def test_with_concurrent_updates_a_poll_does_not_wait_for_the_batch(api: FakeBotAPI) -> None:
    """One update may wait for another that only a later batch brings: polling goes on."""
    second_arrived = asyncio.Event()
    first = api.queue_message("one")["update_id"]

    async def process(update_id: int, attempt: int) -> None:
        if update_id == first:
            await asyncio.wait_for(second_arrived.wait(), 5)
        else:
            second_arrived.set()

    async def run() -> None:
        application = polling_application(api, process, concurrent_updates=2)
        async with polling(application):
            await wait_until(lambda: not pending(api))  # confirmed when fetched, as in PTB
            api.queue_message("two")
            await asyncio.wait_for(second_arrived.wait(), 5)
            await stop(application)

    asyncio.run(run())
    assert pending(api) == []


def test_a_confirmation_that_fails_at_the_stop_is_logged(
    api: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The updates the stop processed come again on the next start (skipped if recorded)."""
    gate = Gate()
    ids = [api.queue_message(text)["update_id"] for text in ("one", "two")]

    async def run() -> None:
        application = polling_application(api, gate)
        async with polling(application):
            await asyncio.wait_for(gate.reached.wait(), 5)
            stopping = await begin_stop(application)
            api.fail_next("getUpdates", 500, "Internal Server Error")
            gate.opened.set()
            await asyncio.wait_for(stopping, 5)

    asyncio.run(run())
    assert pending(api) == ids
    assert "could not confirm the updates processed while stopping" in caplog.text
