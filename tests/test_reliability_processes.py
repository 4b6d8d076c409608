"""No lost and no doubled writes across server processes, and across a crash.

Updates that share a session key take turns through the key's lock in the database, in
one process and across processes alike; the revision check behind it stays as a second
guard. These tests post through real servers of the demo
project (uvicorn and gunicorn, on the test database) with a client that behaves like
Telegram: it redelivers the same update after a 503 or a dropped connection.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from botproject.models import Purchase
from botsessions.models import ProcessedUpdate, Session

from .fakebotapi import FakeBotAPI
from .reliabilitybot import (
    HOLD_ENV,
    HOLD_IN_TRANSACTION_USER,
    LOCKING_ENV,
    PAUSE_AFTER_COMMIT_USER,
)
from .servers import (
    SECRET_HEADER,
    WEBHOOK_PATH,
    Kind,
    Server,
    server_env,
    start_server,
    wait_until,
)
from .sql import serializes_every_update
from .updates import ALICE, message

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MESSAGES = 200
CHATS = [-4000000100 - n for n in range(20)]
IN_FLIGHT = 16


def env_for(api: FakeBotAPI, *, locking: bool = True) -> dict[str, str]:
    """The demo bot's handlers, served through tests.reliabilitybot's factory."""
    return server_env(
        api_base_url=api.base_url,
        DJANGO_SETTINGS_MODULE="tests.reliability_settings",
        **{LOCKING_ENV: "1" if locking else "0"},
    )


def deliver(
    servers: Sequence[Server], update: dict[str, Any], patience: float = 60
) -> tuple[str, int]:
    """POST until 200, like Telegram, alternating servers; the outcome and how many 503s."""
    refused = 0
    deadline = time.monotonic() + patience
    while True:
        server = servers[(update["update_id"] + refused) % len(servers)]
        response = server.post_update(update)
        if response.status_code == 200:
            return response.json()["outcome"], refused
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, f"update {update['update_id']} never accepted"
        refused += 1
        time.sleep(random.uniform(0, 0.005))


@pytest.fixture
def two_servers(api: FakeBotAPI, request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    """An ASGI and a WSGI server process of the demo on the same database."""
    env = env_for(api, locking=getattr(request, "param", True))
    with start_server("uvicorn", env) as first, start_server("gunicorn", env) as second:
        yield [first, second]


def send_concurrently(servers: Sequence[Server], updates: list[dict[str, Any]]) -> list[int]:
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return list(pool.map(lambda update: deliver(servers, update)[1], updates))


def stats(servers: Sequence[Server], api: FakeBotAPI) -> str:
    api.reset()
    assert deliver(servers, message("/stats", chat_id=ALICE, user_id=ALICE)) == ("unchanged", 0)
    return api.sent_texts()[-1]


@pytest.mark.parametrize("two_servers", [True], indirect=True, ids=["locked"])
def test_two_processes_count_every_message(two_servers: list[Server], api: FakeBotAPI) -> None:
    """200 messages of one user over 20 chats, 16 in flight, two server processes: all
    200 count, and every first delivery is answered 200. Both processes write the user's
    row; its lock in the database makes them take turns instead of refusing."""
    updates = [
        message("🍕", chat_id=CHATS[i % len(CHATS)], user_id=ALICE) for i in range(MESSAGES)
    ]
    refusals = send_concurrently(two_servers, updates)
    assert stats(two_servers, api) == f"You have sent {MESSAGES} messages."
    user = Session.objects.get(fragment="user", key=f"user:{ALICE}")
    assert user.data == {"messages": MESSAGES}
    assert user.revision == MESSAGES  # one write per message, none doubled
    pizzas = Session.objects.filter(fragment="chat").values_list("data", flat=True)
    assert sorted(d["pizza_count"] for d in pizzas) == [MESSAGES // len(CHATS)] * len(CHATS)
    assert ProcessedUpdate.objects.count() == MESSAGES
    print(f"first deliveries refused: {sum(refusals)} of {MESSAGES}")
    assert sum(refusals) == 0


BUYS = 120
SHOPS = [-4000000300 - n for n in range(12)]


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_two_workers_buying_in_many_chats_agree_everywhere(api: FakeBotAPI, kind: Kind) -> None:
    """One user sends /buy 120 times over 12 group chats, 16 in flight, to two worker
    processes (gunicorn's sync view, uvicorn's async one); every tenth purchase fails in
    its handler. Every first delivery is answered 200; the project's own rows, the
    session's count and the replies agree, and the failed ones left nothing. Then every
    update is delivered again (as when the answers were lost): nothing is written or
    sent a second time."""
    updates = [
        message(
            "/buyfail tea" if i % 10 == 9 else "/buy tea",
            chat_id=SHOPS[i % len(SHOPS)],
            user_id=ALICE,
        )
        for i in range(BUYS)
    ]
    bought = BUYS - BUYS // 10
    with start_server(kind, env_for(api), workers=2) as server:
        api.reset()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            first = list(pool.map(server.post_update, updates))
        refused = sum(response.status_code != 200 for response in first)
        print(f"/buy under {kind}: first deliveries refused: {refused} of {BUYS}")
        assert [response.status_code for response in first] == [200] * BUYS
        outcomes = [response.json()["outcome"] for response in first]
        assert outcomes.count("handler_failed") == BUYS // 10
        replies = [text for text in api.sent_texts() if text.startswith("Bought tea.")]
        user = Session.objects.get(fragment="user", key=f"user:{ALICE}")
        assert Purchase.objects.filter(user_id=ALICE).count() == bought
        assert user.data["purchases"] == bought
        assert user.revision == bought
        assert sorted(replies) == sorted(
            f"Bought tea. Purchases so far: {n}." for n in range(1, bought + 1)
        )
        assert ProcessedUpdate.objects.count() == bought

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            again = list(pool.map(server.post_update, updates))
        assert [response.status_code for response in again] == [200] * BUYS
        assert Purchase.objects.filter(user_id=ALICE).count() == bought
        assert Session.objects.get(pk=user.pk).revision == bought
        assert len([t for t in api.sent_texts() if t.startswith("Bought tea.")]) == bought


@pytest.mark.parametrize("two_servers", [False], indirect=True, ids=["unlocked"])
def test_without_locking_two_processes_lose_messages(
    two_servers: list[Server], api: FakeBotAPI
) -> None:
    """The same run with locks and revision checks off: writes are silently overwritten."""
    updates = [
        message("🍕", chat_id=CHATS[i % len(CHATS)], user_id=ALICE) for i in range(MESSAGES)
    ]
    send_concurrently(two_servers, updates)
    text = stats(two_servers, api)
    counted = int(text.split()[3])
    print(f"without locking: {counted} of {MESSAGES} messages counted")
    if serializes_every_update():
        assert counted == MESSAGES  # SQLite's one writer orders the updates all the same
    else:
        assert counted < MESSAGES


def users_rows() -> dict[str, int]:
    rows = Session.objects.filter(fragment="user").values_list("key", "data")
    return {key: data["messages"] for key, data in rows}


def test_sigkill_loses_no_acknowledged_update(api: FakeBotAPI) -> None:
    """A server is SIGKILLed while updates stream in, with one worker stopped right after a
    COMMIT (answer not sent) and the other inside an open transaction. Every update
    answered 200 is stored; the others, redelivered to a fresh server, apply once."""
    total = 120
    stream = [message("🍕", chat_id=CHATS[i % 4], user_id=3_000_000 + i) for i in range(total)]
    after_commit = message("🍕", chat_id=CHATS[0], user_id=PAUSE_AFTER_COMMIT_USER)
    in_transaction = message("🍕", chat_id=CHATS[1], user_id=HOLD_IN_TRANSACTION_USER)
    updates = [*stream, after_commit, in_transaction]
    answered: set[int] = set()
    lock = threading.Lock()
    server = start_server("gunicorn", {**env_for(api), HOLD_ENV: "1"}, workers=2)
    # A client of our own: the server's is closed when it is killed.
    client = httpx.Client(base_url=server.url, timeout=60)

    def post(update: dict[str, Any]) -> None:
        try:
            response = client.post(
                WEBHOOK_PATH, json=update, headers={SECRET_HEADER: server.secret}
            )
        except httpx.TransportError:
            return  # the server died with this request: Telegram will redeliver it
        assert response.status_code == 200, response.text
        with lock:
            answered.add(update["update_id"])

    def count_answered() -> int:
        with lock:
            return len(answered)

    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool, ThreadPoolExecutor(2) as holders:
            futures = [holders.submit(post, after_commit)]
            server.wait_for_log("HOLD committed")  # one worker is now stuck after COMMIT
            futures += [pool.submit(post, update) for update in stream]
            wait_until(lambda: count_answered() >= 30, 30, "30 answers")
            futures.append(holders.submit(post, in_transaction))
            server.wait_for_log("HOLD inside an open transaction")  # both workers stuck
            server.kill()
            for future in futures:
                future.result()
    finally:
        server.kill()
        client.close()
    acknowledged = set(answered)
    assert 30 <= len(acknowledged) < total  # the kill cut the stream

    recorded = set(ProcessedUpdate.objects.values_list("update_id", flat=True))
    by_user = users_rows()
    for update in updates:
        user = f"user:{update['message']['from']['id']}"
        if update["update_id"] in acknowledged:
            assert update["update_id"] in recorded
            assert by_user[user] == 1
        else:  # either all of its change is there, or none
            assert by_user.get(user) in (None, 1)
            assert (update["update_id"] in recorded) == (user in by_user)
    assert after_commit["update_id"] in recorded - acknowledged
    assert in_transaction["update_id"] not in recorded  # rolled back with the process
    committed_unanswered = recorded - acknowledged

    # Telegram redelivers everything that was not acknowledged; a fresh server takes over.
    redeliver = [u for u in updates if u["update_id"] not in acknowledged]
    with (
        start_server("gunicorn", env_for(api), workers=2) as fresh,
        ThreadPoolExecutor(IN_FLIGHT) as pool,
    ):
        outcomes = dict(
            zip(
                [u["update_id"] for u in redeliver],
                pool.map(lambda update: deliver([fresh], update)[0], redeliver),
                strict=True,
            )
        )
    duplicates = {uid for uid, outcome in outcomes.items() if outcome == "duplicate"}
    assert duplicates == committed_unanswered
    assert set(outcomes.values()) <= {"committed", "duplicate"}
    assert users_rows() == {f"user:{u['message']['from']['id']}": 1 for u in updates}
    pizzas = Session.objects.filter(fragment="chat").values_list("data", flat=True)
    assert sum(d["pizza_count"] for d in pizzas) == len(updates)
    assert ProcessedUpdate.objects.count() == len(updates)
    print(
        f"SIGKILL after {len(acknowledged)} of {len(updates)} answered; "
        f"{len(committed_unanswered)} committed but unanswered (redelivered as duplicates), "
        f"{len(redeliver) - len(committed_unanswered)} not committed (applied on redelivery)"
    )
