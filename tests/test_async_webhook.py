"""The async webhook view (ASGI) in-process: the same unit of work as under WSGI.

The view awaits the update on the bot's loop; its database work runs on one of the
application's database threads, each with its own connection, so these tests commit
for real (``transaction=True``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from botproject.models import Purchase
from botsessions.models import ProcessedUpdate, Session

from .fakebotapi import FakeBotAPI
from .updates import ALICE, GROUP, message

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.async_urls")]

SECRET = "test-secret"


async def apost(
    client: AsyncClient, update: Any, secret: str = SECRET, path: str = "/telegram/webhook/"
) -> Any:
    return await client.post(
        path,
        data=update if isinstance(update, str) else json.dumps(update),
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )


def post_all(*updates: Any, secret: str = SECRET) -> list[Any]:
    """Post the updates at the same time, as Telegram does with several connections."""

    async def all_at_once() -> list[Any]:
        client = AsyncClient()
        return await asyncio.gather(*(apost(client, u, secret) for u in updates))

    return async_to_sync(all_at_once)()


def test_buy_commits_the_row_and_the_session_and_replies_after(fresh_bots: FakeBotAPI) -> None:
    update = message("/buy tea", chat_id=GROUP, user_id=ALICE)
    fresh_bots.reset()
    (response,) = post_all(update)
    assert response.status_code == 200
    assert response.json()["outcome"] == "committed"
    assert Purchase.objects.get().item == "tea"
    assert Session.objects.get(fragment="user").data == {"messages": 0, "purchases": 1}
    assert fresh_bots.sent_texts() == ["Bought tea. Purchases so far: 1."]
    (again,) = post_all(update)
    assert again.json()["outcome"] == "duplicate"
    assert Purchase.objects.count() == ProcessedUpdate.objects.count() == 1
    assert len(fresh_bots.sent_texts()) == 1


def test_one_user_buying_in_many_chats_at_once_counts_every_purchase(
    fresh_bots: FakeBotAPI,
) -> None:
    updates = [message("/buy jam", chat_id=GROUP - n, user_id=ALICE) for n in range(20)]
    fresh_bots.reset()
    responses = post_all(*updates)
    assert [r.status_code for r in responses] == [200] * 20
    assert Purchase.objects.count() == 20
    user = Session.objects.get(fragment="user", key=f"user:{ALICE}")
    assert (user.data["purchases"], user.revision) == (20, 20)
    assert sorted(fresh_bots.sent_texts()) == sorted(
        f"Bought jam. Purchases so far: {n}." for n in range(1, 21)
    )


def test_a_webhook_url_with_an_argument(fresh_bots: FakeBotAPI) -> None:
    update = message("🍕", chat_id=GROUP, user_id=ALICE)
    response = async_to_sync(apost)(AsyncClient(), update, path="/telegram/abc123/")
    assert (response.status_code, response.json()["outcome"]) == (200, "committed")


def test_a_failed_handler_leaves_nothing_and_is_answered(
    fresh_bots: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botproject import bot as demo

    real_buy = demo.buy

    async def buy_then_fail(update: Any, context: Any) -> None:
        await real_buy(update, context)
        raise RuntimeError("card declined")

    monkeypatch.setattr(demo, "buy", buy_then_fail)
    fresh_bots.reset()
    (response,) = post_all(message("/buy tea", chat_id=GROUP, user_id=ALICE))
    assert response.json()["outcome"] == "handler_failed"
    assert Purchase.objects.count() == Session.objects.count() == 0
    assert fresh_bots.sent_texts() == []


def test_bad_requests_are_refused_before_anything_runs(fresh_bots: FakeBotAPI) -> None:
    (wrong,) = post_all(message("/buy"), secret="wrong")
    assert wrong.status_code == 403
    (broken,) = post_all("{not json")
    assert broken.status_code == 400
    assert Purchase.objects.count() == Session.objects.count() == 0


def test_a_lock_wait_past_the_timeout_answers_503_and_leaves_nothing(
    fresh_bots: FakeBotAPI, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    from botproject import bot as demo

    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.5
    if connection.vendor == "sqlite":
        monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.5)
    real_buy = demo.buy

    async def slow_buy(update: Any, context: Any) -> None:
        await real_buy(update, context)
        if update.effective_chat.id == GROUP:
            await asyncio.sleep(2)

    monkeypatch.setattr(demo, "buy", slow_buy)

    async def both() -> list[Any]:
        client = AsyncClient()
        first = asyncio.ensure_future(apost(client, message("/buy", chat_id=GROUP, user_id=ALICE)))
        await asyncio.sleep(0.5)
        second = await apost(client, message("/buy", chat_id=GROUP - 1, user_id=ALICE))
        return [await first, second]

    first, second = async_to_sync(both)()
    assert first.status_code == 200
    assert second.status_code == 503
    assert Purchase.objects.count() == ProcessedUpdate.objects.count() == 1


def build_demo_from_the_database() -> Any:
    """A factory that reads the database first, as one reading its token from a model."""
    from botproject.bot import build_application

    Purchase.objects.exists()
    return build_application()


def test_a_bot_factory_that_uses_the_orm_is_built_off_the_loop(
    fresh_bots: FakeBotAPI, settings: Any
) -> None:
    settings.BOTSESSIONS_BOTS = {
        "default": {
            **settings.BOTSESSIONS_BOTS["default"],
            "APPLICATION": "tests.test_async_webhook.build_demo_from_the_database",
        }
    }
    (response,) = post_all(message("🍕", chat_id=GROUP, user_id=ALICE))
    assert (response.status_code, response.json()["outcome"]) == (200, "committed")


def test_post_init_runs_once_whole_when_the_first_client_goes_away(
    fresh_bots: FakeBotAPI,
) -> None:
    from botsessions.runner import runner_for

    runner = runner_for("default")
    steps: list[str] = []

    async def post_init(application: Any) -> None:
        steps.append("began")
        await asyncio.sleep(0.5)
        steps.append("ended")

    runner.application.post_init = post_init

    async def first_gives_up_then_second() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runner.ainitialize(), 0.1)
        await runner.ainitialize()

    async_to_sync(first_gives_up_then_second)()
    assert steps == ["began", "ended"]


def stop_with_an_update_whose_client_went_away(
    api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch, application: Any, send: Any
) -> None:
    """A 🍕 whose handler takes 0.5 s and replies after its commit, its client gone after
    0.1 s; then the server's lifespan, startup and shutdown, through WebhookBodyLimit."""
    from botproject import bot as demo
    from botsessions.asgi import WebhookBodyLimit
    from botsessions.runner import runner_for

    async def slow_count(update: Any, context: Any) -> None:
        await asyncio.sleep(0.5)
        context.on_commit(update.effective_message.reply_text("late but sent"))

    monkeypatch.setattr(demo, "count_message", slow_count)
    runner = runner_for("default")
    update = runner.decode(message("🍕", chat_id=GROUP, user_id=ALICE))

    async def serve_then_stop() -> None:
        with pytest.raises(TimeoutError):  # the client gave up
            await asyncio.wait_for(runner.aprocess(update), 0.1)
        lifespan = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            return next(lifespan)

        await WebhookBodyLimit(application)({"type": "lifespan"}, receive, send)

    api.reset()
    async_to_sync(serve_then_stop)()


def test_the_servers_stop_waits_for_updates_whose_client_went_away(
    fresh_bots: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lifespan shutdown (after the server's last request) waits for the update,
    so what it committed is also sent."""
    events: list[str] = []

    async def send(message: Any) -> None:
        events.append(f"{message['type']}, sent: {fresh_bots.sent_texts()}")

    stop_with_an_update_whose_client_went_away(fresh_bots, monkeypatch, lambda *args: None, send)
    assert events == [
        "lifespan.startup.complete, sent: []",
        "lifespan.shutdown.complete, sent: ['late but sent']",
    ]


def test_an_application_that_takes_lifespan_events_hears_of_the_stop_after_the_updates(
    fresh_bots: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:  # one with lifespan hooks
        while True:
            event = await receive()
            heard.append(f"{event['type']}, sent: {fresh_bots.sent_texts()}")
            await send({"type": f"{event['type']}.complete"})
            if event["type"] == "lifespan.shutdown":
                return

    async def send(message: Any) -> None:
        pass

    stop_with_an_update_whose_client_went_away(fresh_bots, monkeypatch, inner, send)
    assert heard == [
        "lifespan.startup, sent: []",
        "lifespan.shutdown, sent: ['late but sent']",
    ]
