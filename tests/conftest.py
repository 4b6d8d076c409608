"""Shared fixtures: the fake Bot API server and a factory of bot harnesses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The plugin's fixture, as the pytest11 entry point of the installed package gives it
# (this checkout is not installed; tests/test_testing_kit.py also loads it as a plugin).
from botsessions.pytest_plugin import bot_client  # noqa: F401

from .fakebotapi import FakeBotAPI
from .harness import BotHarness


@pytest.fixture(scope="session")
def bot_api() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as api:
        yield api


@pytest.fixture
def api(bot_api: FakeBotAPI) -> FakeBotAPI:
    bot_api.reset()
    bot_api.drop_pending_updates()
    return bot_api


@pytest.fixture
def make_bot(api: FakeBotAPI) -> Iterator[Any]:
    """``make_bot(sessions, handlers)`` → a :class:`BotHarness`, shut down after the test."""
    made: list[BotHarness] = []

    def make(sessions: Any, handlers: Any, **kwargs: Any) -> BotHarness:
        harness = BotHarness(api, sessions, handlers, **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture(params=["memory", "db", "redis"])
def probe(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Each test using it runs on the memory storage, the database storage and Redis.

    Modules using it mark themselves ``django_db``.
    """
    from .probes import start_probe, stop_probe

    probe = start_probe(request.param)
    yield probe
    stop_probe(probe)


@pytest.fixture
def fresh_bots(api: FakeBotAPI, settings: Any) -> Iterator[FakeBotAPI]:
    """The configured bots talking to the fake Bot API, built afresh for this test.

    Applications and their runners are cached per process; dropping them before and
    after lets each test's settings (bots, Bot API address) take effect.
    """
    from botsessions.bots import forget_applications
    from botsessions.runner import shutdown_runners

    settings.TELEGRAM_API_BASE_URL = api.base_url
    shutdown_runners()
    forget_applications()
    yield api
    shutdown_runners()
    forget_applications()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own, its keys deleted afterwards (a skip
    without Redis)."""
    from .redis_support import forget, new_prefix, require_redis

    require_redis()
    prefix = new_prefix()
    yield prefix
    forget(prefix)


@pytest.fixture
def raw(prefix: str) -> Iterator[Any]:
    """A plain synchronous Redis client, to look at and tamper with what is stored."""
    import redis

    from .redis_support import URL

    client = redis.Redis.from_url(URL, decode_responses=True)
    yield client
    client.close()
