"""runbot's retries of an update whose session could not be stored.

Under long polling an update is confirmed to Telegram as soon as the next batch is
fetched, so giving up on one loses it. The updates here go through PTB's own fetcher
(``application.start()``, then the update queue), as under runbot, with a stand-in for
``process_update`` that fails a given number of times.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, ProgrammingError
from telegram import Update
from telegram.ext import ApplicationBuilder

from botsessions import Sessions, telegram_api, use_sessions
from botsessions.backoff import Backoff
from botsessions.errors import LockTimeout, SessionConflict, StorageError
from botsessions.ptb import SessionApplication

from .fakebotapi import FakeBotAPI
from .harness import TOKEN, poll
from .servers import REPO, Process, manage, server_env, start_runbot
from .updates import BOB, GROUP

QUICK = Backoff(first=0.001, cap=0.004)
# runbot's own, before the tests make them quick.
CONTENTION, OUTAGE = telegram_api.CONTENTION_BACKOFF, telegram_api.OUTAGE_BACKOFF


def application_failing(
    api: FakeBotAPI,
    fails: Callable[[int, int], Exception | None],
    each_try: Callable[[], Awaitable[None]] | None = None,
) -> tuple[SessionApplication, list[int]]:
    """An application whose process_update raises ``fails(update_id, try)``, if not None.

    ``try`` counts from 1 for each update; ``each_try`` is awaited at the start of every
    try. Returns the application, wrapped as runbot wraps it, and the ids of the updates
    as they were tried.
    """
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    assert isinstance(application, SessionApplication)
    tried: list[int] = []

    async def process_update(update: object) -> None:
        assert isinstance(update, Update)
        tried.append(update.update_id)
        if each_try is not None:
            await each_try()
        error = fails(update.update_id, tried.count(update.update_id))
        if error is not None:
            raise error

    application.process_update = process_update  # type: ignore[method-assign]
    telegram_api.keep_polling_through_storage_errors(application)
    return application, tried


def failing(times: int, error: Exception) -> Callable[[int, int], Exception | None]:
    """Every update fails its first ``times`` tries with ``error``."""
    return lambda update_id, attempt: error if attempt <= times else None


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telegram_api, "CONTENTION_BACKOFF", QUICK)
    monkeypatch.setattr(telegram_api, "OUTAGE_BACKOFF", QUICK)


def polling_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == "botsessions.polling"
    ]


@pytest.mark.parametrize(
    "error",
    [SessionConflict("session 1 was changed by another writer"), LockTimeout("not granted")],
    ids=["conflict", "lock-timeout"],
)
def test_contention_is_retried_until_the_update_is_processed(
    api: FakeBotAPI, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    application, tried = application_failing(api, failing(6, error))
    with caplog.at_level(logging.WARNING, logger="botsessions.polling"):
        poll(application, 1)
    assert tried == [1] * 7
    # Logged once when it began, not at every retry, and once when it was over.
    [(first_level, first), (last_level, last)] = polling_log(caplog)
    assert first_level == logging.WARNING and "session held by another process" in first
    assert "update 1 not stored (try 1" in first
    assert last_level == logging.WARNING and "update 1 processed after 7 tries" in last


def deadlock_refusal(database: str) -> StorageError:
    """What the update's processing raises when the database picked it as a deadlock's
    victim: MariaDB's error code, or PostgreSQL's SQLSTATE on the driver's error."""
    refusal = StorageError("the update's transaction ended on the database")
    if database == "mariadb":
        refusal.__cause__ = OperationalError(1213, "Deadlock found when trying to get lock")
    else:
        import psycopg

        cause = OperationalError("deadlock detected")
        cause.__cause__ = psycopg.errors.DeadlockDetected("deadlock detected")
        refusal.__cause__ = cause
    return refusal


@pytest.mark.parametrize("database", ["mariadb", "postgresql"])
def test_a_deadlock_is_retried_as_contention_not_as_an_outage(
    api: FakeBotAPI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    database: str,
) -> None:
    paced: list[str] = []
    monkeypatch.setattr(telegram_api, "CONTENTION_BACKOFF", Backoff(first=0.001, cap=0.001))
    monkeypatch.setattr(telegram_api, "OUTAGE_BACKOFF", Backoff(first=0.5, cap=0.5))
    real_pause = telegram_api._pause_unless_stopping

    async def pause(application: Any, delay: float) -> None:
        paced.append("contention" if delay < 0.1 else "outage")
        await real_pause(application, delay)

    monkeypatch.setattr(telegram_api, "_pause_unless_stopping", pause)
    application, tried = application_failing(api, failing(2, deadlock_refusal(database)))
    with caplog.at_level(logging.INFO, logger="botsessions.polling"):
        poll(application, 1)
    assert tried == [1] * 3 and paced == ["contention"] * 2
    [(level, first), _] = polling_log(caplog)
    assert level == logging.WARNING and "a deadlock with another update" in first


@pytest.mark.parametrize(
    "error",
    [StorageError("database restarting"), OperationalError("server closed the connection")],
    ids=["storage-error", "database-error"],
)
def test_an_outage_is_retried_without_limit_and_logged_as_an_error_while_it_lasts(
    api: FakeBotAPI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    monkeypatch.setattr(telegram_api, "RETRY_LOG_INTERVAL", 0.0)  # log every try here
    application, tried = application_failing(api, failing(12, error))
    with caplog.at_level(logging.INFO, logger="botsessions.polling"):
        poll(application, 1)
    assert tried == [1] * 13
    levels = [level for level, _ in polling_log(caplog)]
    assert levels == [logging.WARNING] + [logging.ERROR] * 11 + [logging.WARNING]
    messages = [message for _, message in polling_log(caplog)]
    assert all("sessions unavailable" in message for message in messages[:-1])
    assert "(try 12," in messages[-2] and "later updates wait for it" in messages[-2]
    assert "update 1 processed after 13 tries" in messages[-1]


def test_later_updates_wait_in_order_and_none_is_lost(api: FakeBotAPI) -> None:
    application, tried = application_failing(
        api,
        lambda update_id, attempt: (
            SessionConflict("busy") if update_id == 1 and attempt <= 5 else None
        ),
    )
    poll(application, 1, 2, 3)
    assert tried == [1] * 6 + [2, 3]


UNAVAILABLE = "sessions unavailable while the bot was stopping"
AGAIN = "Telegram delivers it again on the next start"
UNTRIED = f"update 2 left untried: {UNAVAILABLE}; {AGAIN}"
ALWAYS = 10**6
STOPS = {
    # An outage: the update in its pause gets one more try, the next one none.
    "outage-in-pause": (
        "pause", StorageError("database gone"), ALWAYS, [1, 1],
        [f"update 1 left unprocessed: {UNAVAILABLE} (2 tries): database gone; {AGAIN}",
         UNTRIED],
    ),
    # A try running when the stop began was the last one.
    "outage-in-try": (
        "try", StorageError("database gone"), ALWAYS, [1],
        [f"update 1 left unprocessed: {UNAVAILABLE} (1 try): database gone; {AGAIN}",
         UNTRIED],
    ),
    # Contention is the update's own: it gets a few quick tries, and the next update is
    # still tried, and it works.
    "contention-in-pause": (
        "pause", SessionConflict("busy"), ALWAYS, [1] * 5 + [2],
        ["update 1 left unprocessed: session held by another process while the bot was "
         f"stopping (5 tries): busy; {AGAIN}"],
    ),
    # Contention that ends during the stop: the update is processed, nothing dropped.
    "contention-ending": ("pause", SessionConflict("busy"), 3, [1, 1, 1, 1, 2], []),
}  # fmt: skip


@pytest.mark.parametrize(
    ("stop_during", "error", "failing", "expected", "errors"), STOPS.values(), ids=list(STOPS)
)
def test_a_stop_ends_the_retries_at_once(
    api: FakeBotAPI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    stop_during: str,
    error: Exception,
    failing: int,
    expected: list[int],
    errors: list[str],
) -> None:
    """Ctrl-C while an update is retried: PTB's stop waits for the fetched updates."""
    long = Backoff(first=30.0, cap=30.0)
    monkeypatch.setattr(telegram_api, "OUTAGE_BACKOFF", long)
    monkeypatch.setattr(telegram_api, "CONTENTION_BACKOFF", long)
    first_try = asyncio.Event()

    async def each_try() -> None:
        first_try.set()
        if stop_during == "try":
            await asyncio.sleep(0.1)  # a slow try, still running when the stop begins

    application, tried = application_failing(
        api,
        lambda update_id, attempt: error if update_id == 1 and attempt <= failing else None,
        each_try,
    )

    async def run() -> float:
        async with application:
            await application.start()
            await application.update_queue.put(Update(1))
            await application.update_queue.put(Update(2))
            await asyncio.wait_for(first_try.wait(), 5)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await asyncio.wait_for(application.stop(), 5)
            return loop.time() - began

    with caplog.at_level(logging.INFO, logger="botsessions.polling"):
        took = asyncio.run(run())
    assert took < 2
    assert tried == expected
    assert [message for level, message in polling_log(caplog) if level >= logging.ERROR] == errors


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug"), ProgrammingError("a bug"), IntegrityError("a bug")],
    ids=["runtime-error", "programming-error", "integrity-error"],
)
def test_other_errors_go_to_the_error_handlers_and_polling_goes_on(
    api: FakeBotAPI, error: Exception
) -> None:
    """A retry cannot cure them (a bug, a missing table): one try, then the error
    handlers, and the updates behind it are not held up."""
    application, tried = application_failing(
        api, lambda update_id, attempt: error if update_id == 1 else None
    )
    seen: list[BaseException | None] = []

    async def on_error(update: object, context: Any) -> None:
        seen.append(context.error)

    application.add_error_handler(on_error)
    poll(application, 1, 2)
    assert tried == [1, 2]  # not retried, and the fetcher still runs
    assert [str(error) for error in seen] == ["a bug"]


class Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("missing", ["table", "column"])
def test_a_query_that_can_never_work_goes_to_the_error_handlers_once(
    api: FakeBotAPI, missing: str
) -> None:
    """SQLite (and MariaDB, for a column) reports a table or column not migrated yet as
    an OperationalError, like an outage: retried, it would stop the bot for good."""
    from asgiref.sync import sync_to_async
    from django.db import connection
    from telegram.ext import MessageHandler, filters

    from .updates import message

    sql = {
        "table": "SELECT * FROM table_not_migrated_yet",
        "column": "SELECT column_not_migrated_yet FROM botsessions_session",
    }[missing]
    handled: list[str] = []
    errors: list[BaseException] = []

    def query() -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)

    async def handler(update: Any, context: Any) -> None:
        handled.append(update.message.text)
        if update.message.text == "query":
            await sync_to_async(query)()
        context.session["seen"] = True

    async def record(update: Any, context: Any) -> None:
        errors.append(context.error)

    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.add_handler(MessageHandler(filters.TEXT, handler))
    application.add_error_handler(record)
    telegram_api.keep_polling_through_storage_errors(application)

    poll(application, *(message(text, chat_id=BOB, user_id=BOB) for text in ("query", "next")))
    assert handled == ["query", "next"]
    assert len(errors) == 1


def test_the_delay_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=0.1, cap=2.0)
    highest = [backoff.delay(failures, Highest()) for failures in range(1, 8)]
    assert highest == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    lowest = [backoff.delay(failures, Lowest()) for failures in range(1, 8)]
    assert lowest == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(10**9, Highest()) == 2.0  # no overflow after days of retries


def test_the_delay_is_jittered_within_the_upper_half() -> None:
    backoff = Backoff(first=0.1, cap=2.0)
    delays = [backoff.delay(6, random.Random(seed)) for seed in range(20)]
    assert all(1.0 <= delay <= 2.0 for delay in delays)
    assert len(set(delays)) == 20  # two processes meeting again do not retry in step
    assert delays == [backoff.delay(6, random.Random(seed)) for seed in range(20)]


def test_the_backoffs_runbot_uses() -> None:
    """Contention is over within moments; a database restart takes longer."""
    assert CONTENTION.first <= 0.1 and 2 <= CONTENTION.cap <= 5
    assert OUTAGE.first >= 0.5 and OUTAGE.cap <= 60


def runbot_waiting_for_its_database(
    api: FakeBotAPI, tmp_path: Path
) -> tuple[Process, Callable[[], None], dict[str, str]]:
    """runbot with a 🍕 and a /hunger fetched, both waiting for a database not created yet.

    Returns the process, the function that creates the database, and the environment.
    """
    database = tmp_path / "not-yet" / "db.sqlite3"
    env = server_env(api_base_url=api.base_url, database=f"sqlite:///{database}")

    def create_database() -> None:
        database.parent.mkdir()
        subprocess.run(manage("migrate"), cwd=REPO, env=env, check=True, capture_output=True)

    bot = start_runbot(env)
    try:
        api.queue_message("🍕", chat_id=GROUP, user_id=BOB)
        api.queue_message("/hunger", chat_id=GROUP, user_id=BOB)
        bot.wait_for_log(r"update \d+ not stored \(try 1,")
    except BaseException:
        bot.stop(signal.SIGKILL, timeout=5)
        raise
    return bot, create_database, env


@pytest.mark.slow
def test_runbot_waits_out_a_database_outage_and_loses_nothing(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    """The database appears only after the updates were fetched: both are processed."""
    bot, create_database, _ = runbot_waiting_for_its_database(api, tmp_path)
    try:
        create_database()
        api.wait_for("sendMessage", timeout=60)
        assert api.sent_texts() == ["Your hunger level is 1!"]
        assert "processed after" in bot.log()
        assert bot.stop(signal.SIGINT, timeout=20) == 0
        assert "left" not in bot.log() and "Traceback" not in bot.log()
        assert api.pending_updates() == []  # both confirmed to Telegram
    finally:
        bot.stop(signal.SIGKILL, timeout=5)


@pytest.mark.slow
def test_a_killed_runbot_loses_no_update_it_had_fetched(api: FakeBotAPI, tmp_path: Path) -> None:
    """SIGKILL while the fetched updates wait for the database: the next runbot gets them."""
    bot, create_database, env = runbot_waiting_for_its_database(api, tmp_path)
    try:
        bot.kill()
    finally:
        bot.stop(signal.SIGKILL, timeout=5)
    assert len(api.pending_updates()) == 2
    create_database()
    bot = start_runbot(env)
    try:
        api.wait_for("sendMessage", timeout=60)
        assert api.sent_texts() == ["Your hunger level is 1!"]
        assert bot.stop(signal.SIGINT, timeout=20) == 0
        assert api.pending_updates() == []
    finally:
        bot.stop(signal.SIGKILL, timeout=5)


@pytest.mark.slow
def test_ctrl_c_during_a_database_outage_stops_runbot_at_once(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    database = tmp_path / "missing" / "db.sqlite3"
    env = server_env(api_base_url=api.base_url, database=f"sqlite:///{database}")
    bot = start_runbot(env)
    try:
        first = api.queue_message("one")["update_id"]
        second = api.queue_message("two")["update_id"]
        bot.wait_for_log(r"update \d+ not stored \(try 1,")
        began = time.monotonic()
        assert bot.stop(signal.SIGINT, timeout=10) == 0
        assert time.monotonic() - began < 5
        log = bot.log()
        assert f"update {first} left unprocessed: sessions unavailable while the bot" in log
        assert f"update {second} left untried" in log
        # Neither was confirmed: Telegram keeps them for the next start.
        assert [u["update_id"] for u in api.pending_updates()] == [first, second]
        assert "Stopped." in log and "Traceback" not in log
    finally:
        bot.stop(signal.SIGKILL, timeout=5)


@pytest.mark.slow
def test_a_second_ctrl_c_names_the_updates_it_leaves_unprocessed(api: FakeBotAPI) -> None:
    """PTB ends its graceful stop at a second signal: what was left is logged, not silent."""
    pytest.importorskip("psycopg_pool")
    # Nothing listens on port 1: each try waits for the pool's 10 s, then fails.
    database = "postgres://postgres@127.0.0.1:1/botsessions"
    env = server_env(api_base_url=api.base_url, database=database)
    bot = start_runbot(env)
    try:
        ids = [api.queue_message(text)["update_id"] for text in ("one", "two", "three")]
        bot.wait_for_log(r"not stored \(try 1,", timeout=30)
        bot.send_signal(signal.SIGINT)  # update 1's last try begins, waiting for the pool
        time.sleep(1)
        bot.send_signal(signal.SIGINT)
        bot.wait_for_log("stopped before processing", timeout=10)
        assert (
            f"stopped before processing update(s) {ids[0]}, {ids[1]}, {ids[2]}: Telegram "
            "delivers them again on the next start"
        ) in bot.log()
        assert [u["update_id"] for u in api.pending_updates()] == ids
        # At once, not once the update's database thread is done waiting for the pool.
        started = time.monotonic()
        assert bot.wait(timeout=8) == 130
        assert time.monotonic() - started < 3
    finally:
        bot.stop(signal.SIGKILL, timeout=5)
