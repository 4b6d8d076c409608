"""runbot's guard against a storage failure ending PTB's update fetcher."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from telegram.ext import ApplicationBuilder

from botsessions import Sessions, telegram_api, use_sessions
from botsessions.errors import StorageError
from botsessions.ptb import SessionApplication


def application_failing(times: int, error: Exception) -> tuple[SessionApplication, list[Any]]:
    """An application whose process_update fails ``times`` times, then succeeds."""
    builder = ApplicationBuilder().token("123456:TEST-token").updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    assert isinstance(application, SessionApplication)
    calls: list[Any] = []

    async def process_update(update: object) -> None:
        calls.append(update)
        if len(calls) <= times:
            raise error

    application.process_update = process_update  # type: ignore[method-assign]
    telegram_api.keep_polling_through_storage_errors(application)
    return application, calls


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telegram_api, "STORAGE_RETRY_DELAYS", (0.0, 0.0, 0.0))


def test_storage_error_is_retried_until_it_works() -> None:
    application, calls = application_failing(2, StorageError("database restarting"))
    asyncio.run(application.process_update("update"))
    assert calls == ["update"] * 3


def test_update_is_given_up_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    application, calls = application_failing(99, StorageError("database gone"))
    with caplog.at_level(logging.WARNING, logger="botsessions.polling"):
        asyncio.run(application.process_update("update"))  # does not raise: polling goes on
    assert len(calls) == 4
    assert caplog.records[-1].levelno == logging.ERROR
    assert "dropped" in caplog.records[-1].getMessage()


def test_other_errors_are_not_retried() -> None:
    application, calls = application_failing(1, RuntimeError("a bug"))
    with pytest.raises(RuntimeError):
        asyncio.run(application.process_update("update"))
    assert len(calls) == 1
