"""Sessions in Redis across server processes: no refusals, nothing lost or doubled.

The demo bot with ``REDIS_URL`` set keeps both its fragments in Redis (under a prefix
of the test's own), served by uvicorn and gunicorn at once, with a client that
redelivers like Telegram. The exactly-once records are in Redis too. Then Redis goes
away in the middle of a stream (a proxy the test cuts): the updates it catches get a
503 with ``Retry-After``, and once it is back their redeliveries apply each of them once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from botsessions.models import ProcessedUpdate, Session

from .fakebotapi import FakeBotAPI
from .redis_support import URL, RedisProxy
from .servers import Server, server_env, start_server, wait_until
from .updates import ALICE, message

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BOT = 123456
MESSAGES = 200
CHATS = [-4000000500 - n for n in range(20)]
IN_FLIGHT = 16


def env_for(api: FakeBotAPI, prefix: str, url: str = URL) -> dict[str, str]:
    return server_env(
        api_base_url=api.base_url,
        DJANGO_SETTINGS_MODULE="tests.reliability_settings",
        REDIS_URL=url,
        REDIS_PREFIX=prefix,
    )


def deliver(servers: Sequence[Server], update: dict[str, Any], patience: float = 90) -> list[str]:
    """POST until 200, like Telegram, alternating servers; the outcome of each attempt.

    Every refusal must be a 503 that says when to come back.
    """
    attempts: list[str] = []
    deadline = time.monotonic() + patience
    while True:
        server = servers[(update["update_id"] + len(attempts)) % len(servers)]
        response = server.post_update(update)
        if response.status_code == 200:
            return [*attempts, response.json()["outcome"]]
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()
        assert time.monotonic() < deadline, f"update {update['update_id']} never accepted"
        attempts.append("503")
        time.sleep(random.uniform(0.01, 0.05))


def session(raw: Any, prefix: str, fragment: str, key: str) -> tuple[int, Any]:
    revision, _version, _expiry, data = raw.get(f"{prefix}{{{BOT}}}:s:{fragment}:{key}").split(
        "|", 3
    )
    return int(revision), json.loads(data)


def records(raw: Any, prefix: str) -> int:
    return len(list(raw.scan_iter(match=f"{prefix}{{{BOT}}}:done:*", count=1000)))


def check_every_message_counted_once(raw: Any, prefix: str, total: int) -> None:
    assert session(raw, prefix, "user", f"user:{ALICE}") == (total, {"messages": total})
    pizzas = [session(raw, prefix, "chat", f"chat:{chat}")[1]["pizza_count"] for chat in CHATS]
    assert pizzas == [total // len(CHATS)] * len(CHATS)
    assert records(raw, prefix) == total
    assert list(raw.scan_iter(match=f"{prefix}{{{BOT}}}:lock:*")) == []  # all given back
    assert not Session.objects.exists() and not ProcessedUpdate.objects.exists()


def test_two_processes_on_redis_count_every_message_once(
    api: FakeBotAPI, prefix: str, raw: Any
) -> None:
    """200 messages of one user over 20 chats, 16 in flight, uvicorn and gunicorn: all
    200 count, every first delivery is answered 200, and delivering them all again
    changes nothing."""
    updates = [
        message("🍕", chat_id=CHATS[i % len(CHATS)], user_id=ALICE) for i in range(MESSAGES)
    ]
    env = env_for(api, prefix)
    with start_server("uvicorn", env) as first, start_server("gunicorn", env) as second:
        servers = [first, second]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            attempts = list(pool.map(lambda update: deliver(servers, update), updates))
        refused = sum(a.count("503") for a in attempts)
        print(f"Redis, two processes: first deliveries refused: {refused} of {MESSAGES}")
        assert refused == 0
        assert [a[-1] for a in attempts] == ["committed"] * MESSAGES
        check_every_message_counted_once(raw, prefix, MESSAGES)

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            again = list(pool.map(lambda update: deliver(servers, update), updates))
        assert [a[-1] for a in again] == ["duplicate"] * MESSAGES
        check_every_message_counted_once(raw, prefix, MESSAGES)


def test_redis_going_away_mid_stream(api: FakeBotAPI, prefix: str, raw: Any) -> None:
    """Redis is cut while 200 updates stream to two processes, then comes back: the
    updates caught meanwhile get 503 with Retry-After, and in the end every update
    counts exactly once: none half-written, none lost, none doubled."""
    updates = [
        message("🍕", chat_id=CHATS[i % len(CHATS)], user_id=ALICE) for i in range(MESSAGES)
    ]
    proxy = RedisProxy()
    answered = 0
    lock = threading.Lock()

    def send(servers: list[Server], update: dict[str, Any]) -> list[str]:
        nonlocal answered
        result = deliver(servers, update)
        with lock:
            answered += 1
        return result

    def count() -> int:
        with lock:
            return answered

    env = env_for(api, prefix, proxy.url)
    try:
        with start_server("uvicorn", env) as first, start_server("gunicorn", env) as second:
            servers = [first, second]
            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                futures = [pool.submit(send, servers, update) for update in updates]
                wait_until(lambda: count() >= 50, 60, "50 answers")
                proxy.cut()
                time.sleep(1.0)
                proxy.restore()
                attempts = [future.result() for future in futures]
    finally:
        proxy.close()
    refused = sum(a.count("503") for a in attempts)
    print(f"Redis cut for 1 s: {refused} deliveries refused with 503, all redelivered")
    assert refused > 0
    assert {a[-1] for a in attempts} <= {"committed", "duplicate"}
    check_every_message_counted_once(raw, prefix, MESSAGES)
