"""No lost and no doubled session writes, in one process: concurrency, redelivery, failure.

What an update answered 200 promises is that its session change is in the database
exactly once. These tests break each part of that on purpose (concurrent updates of one
key, the same update delivered twice, the database failing mid-commit, rows that cannot
be read) and check what is stored afterwards, not only what the webhook answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone
from telegram.ext import CommandHandler, MessageHandler, filters

from botproject.bot import count_message
from botproject.bot import sessions as demo_sessions
from botsessions import Sessions
from botsessions.errors import SessionConflict
from botsessions.models import ProcessedUpdate, Session
from botsessions.purge import prune_processed_updates
from botsessions.storage.base import StorageKey, StoredSession, UpdateMark, Write
from botsessions.storage.db import DatabaseStorage
from botsessions.unit import UnitOfWork, process_as_unit

from .fakebotapi import FakeBotAPI
from .harness import BotHarness
from .sql import serializes_every_update
from .updates import ALICE, BOB, GROUP, message

pytestmark = pytest.mark.django_db

BOT_ID = 123456
SECRET = "test-secret"
WEBHOOK_URL = "/telegram/webhook/"


# -- helpers --------------------------------------------------------------------------


@pytest.fixture
def pooled_db(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Real commits, seen by every connection: updates run on database threads.

    Without a pool, those threads keep their connection between updates (``CONN_MAX_AGE``):
    reconnecting for every update costs 50 ms a time on some MariaDB servers.
    """
    if "pool" not in connections["default"].settings_dict["OPTIONS"]:
        monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 60)
    yield


def run_concurrently(bot: BotHarness, updates: list[dict[str, Any]]) -> list[Any]:
    """Process ``updates`` at the same time on the bot's loop; outcomes or exceptions.

    Each update is a unit of work on a database thread of its own, with its own
    connection: as concurrent as updates of one process get.
    """
    runner = bot.runner
    runner.initialize()
    decoded = [runner.decode(update) for update in updates]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(process_as_unit(bot.application, u, fresh_connections=True) for u in decoded),
            return_exceptions=True,
        )

    return runner.run(all_at_once())


def stored(fragment: str, key: str) -> tuple[Any, int] | None:
    """A row's data and revision, or ``None``."""
    row = Session.objects.filter(bot_id=BOT_ID, fragment=fragment, key=key).first()
    return None if row is None else (row.data, row.revision)


def raw_rows() -> dict[tuple[str, str], tuple[str, int, Any]]:
    """Every session row as stored text (some tests store text that is not JSON)."""
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {q('fragment')}, {q('key')}, {q('data')}, {q('revision')}, "
            f"{q('updated_at')} FROM {q(Session._meta.db_table)}"
        )
        return {
            (fragment, key): (data if isinstance(data, str) else json.dumps(data), rev, at)
            for fragment, key, data, rev, at in cursor.fetchall()
        }


class Webhook:
    """The demo project's webhook, called through Django's test client."""

    def __init__(self) -> None:
        self.client = Client()

    def post(self, update: dict[str, Any], secret: str = SECRET) -> HttpResponse:
        return self.client.post(
            WEBHOOK_URL,
            data=json.dumps(update),
            content_type="application/json",
            headers={"X-Telegram-Bot-Api-Secret-Token": secret},
        )

    def outcome(self, update: dict[str, Any]) -> str:
        response = self.post(update)
        assert response.status_code == 200, response.content
        return str(response.json()["outcome"])


@pytest.fixture
def webhook(fresh_bots: FakeBotAPI) -> Webhook:
    """The demo bot behind its webhook, replying to the fake Bot API."""
    return Webhook()


async def count(update: Any, context: Any) -> None:
    """Read, yield to the loop, write: the window in which a concurrent update could slip."""
    seen = context.session["n"]
    await asyncio.sleep(0)
    context.session["n"] = seen + 1


def counter(locking: bool = True) -> Sessions:
    return Sessions(initial=lambda: {"n": 0}, locking=locking)


# -- 1. no lost updates under concurrency ---------------------------------------------


def test_concurrent_updates_of_one_chat_all_count(make_bot: Any, pooled_db: None) -> None:
    """40 updates of one chat at once: all 40 increments are stored, each recorded once."""
    bot = make_bot(counter(), [MessageHandler(filters.TEXT, count)])
    outcomes = run_concurrently(bot, [message("hi", chat_id=GROUP) for _ in range(40)])
    assert outcomes == ["committed"] * 40
    assert stored("", f"chat:{GROUP}") == ({"n": 40}, 40)
    assert ProcessedUpdate.objects.count() == 40


def test_without_locking_concurrent_updates_are_lost(make_bot: Any, pooled_db: None) -> None:
    """The same load with ``locking=False`` loses increments silently: what locks prevent."""
    bot = make_bot(counter(locking=False), [MessageHandler(filters.TEXT, count)])
    assert bot.process(message("first", chat_id=GROUP)) == "committed"
    outcomes = run_concurrently(bot, [message("hi", chat_id=GROUP) for _ in range(40)])
    assert outcomes == ["committed"] * 40  # last write wins: no error tells of the loss
    data, _ = stored("", f"chat:{GROUP}") or ({}, 0)
    if serializes_every_update():
        assert data["n"] == 41  # SQLite's one writer orders the updates all the same
    else:
        assert data["n"] < 41


@pytest.mark.parametrize("locking", [True, False], ids=["locked", "unlocked"])
def test_one_user_in_many_chats_counts_every_message(
    make_bot: Any, pooled_db: None, locking: bool
) -> None:
    """The demo's multi session: the user fragment's key is locked too, not only the chat's."""
    sessions = Sessions.multi(locking=locking, **demo_sessions.fragments)
    bot = make_bot(sessions, [MessageHandler(filters.TEXT & ~filters.COMMAND, count_message)])
    assert bot.process(message("hello", chat_id=ALICE, user_id=ALICE)) == "committed"
    chats = [-4000000000 - n for n in range(30)]
    outcomes = run_concurrently(bot, [message("🍕", chat_id=c, user_id=ALICE) for c in chats])
    assert outcomes == ["committed"] * 30
    messages = stored("user", f"user:{ALICE}")[0]["messages"]  # type: ignore[index]
    if locking:
        assert messages == 31
        assert all(stored("chat", f"chat:{c}") == ({"pizza_count": 1}, 1) for c in chats)
    elif serializes_every_update():
        assert messages == 31
    else:
        assert messages < 31


class Rendezvous:
    """Two handlers that wait for each other: they meet only if they run at the same time."""

    def __init__(self, first: dict[str, Any], second: dict[str, Any], patience: float) -> None:
        a, b = first["update_id"], second["update_id"]
        self.other = {a: b, b: a}
        self.arrived = {a: asyncio.Event(), b: asyncio.Event()}
        self.patience = patience
        self.met: list[int] = []

    async def handler(self, update: Any, context: Any) -> None:
        me = update.update_id
        self.arrived[me].set()
        try:
            await asyncio.wait_for(self.arrived[self.other[me]].wait(), self.patience)
        except TimeoutError:
            pass
        else:
            self.met.append(me)
        context.session.chat["pizza_count"] += 1
        context.session.user["messages"] += 1


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ((ALICE, ALICE), (BOB, BOB), False),
        ((GROUP, ALICE), (GROUP, BOB), True),  # same chat, different users
        ((ALICE, ALICE), (GROUP, ALICE), True),  # same user, different chats
    ],
    ids=["different-keys", "same-chat", "same-user"],
)
def test_updates_wait_only_for_updates_sharing_a_key(
    make_bot: Any, pooled_db: None, first: tuple[int, int], second: tuple[int, int], shared: bool
) -> None:
    """Different keys run side by side; any shared fragment key makes them take turns.

    Each handler waits for the other: without a shared key both meet at once; with one,
    the first gives up after its patience (it would wait forever), then the second runs.
    SQLite has one writer for the whole file: there every update takes its turn.
    """

    a = message("a", chat_id=first[0], user_id=first[1])
    b = message("b", chat_id=second[0], user_id=second[1])
    takes_turns = shared or serializes_every_update()
    meeting = Rendezvous(a, b, patience=0.3 if takes_turns else 5.0)
    bot = make_bot(demo_sessions, [MessageHandler(filters.TEXT, meeting.handler)])
    assert run_concurrently(bot, [a, b]) == ["committed", "committed"]
    assert len(meeting.met) == (1 if takes_turns else 2)
    if shared:
        key = ("chat", f"chat:{GROUP}") if first[0] == second[0] else ("user", f"user:{ALICE}")
        assert stored(*key)[1] == 2  # type: ignore[index]


def _race(writers: int, attempt: Callable[[int], Any]) -> list[Any]:
    """Run ``attempt(i)`` on ``writers`` threads released together, each on a connection."""
    barrier = threading.Barrier(writers)

    def run(i: int) -> Any:
        barrier.wait(10)
        try:
            return attempt(i)
        except SessionConflict:
            return "conflict"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(writers) as pool:
        return list(pool.map(run, range(writers)))


KEY = StorageKey(BOT_ID, "", f"chat:{GROUP}")


def _record(n: int, revision: int) -> StoredSession:
    return StoredSession(data=json.dumps({"n": n}), revision=revision)


def test_racing_writes_of_one_revision_only_one_wins(transactional_db: None) -> None:
    """Writers on separate connections, as separate processes are: one write, the rest refused."""
    storage = DatabaseStorage()
    assert storage.commit_sync([Write(KEY, _record(0, 1), 0)], None)

    def write(i: int) -> str:
        storage.commit_sync([Write(KEY, _record(100 + i, 2), 1)], UpdateMark(BOT_ID, 900 + i))
        return f"won {i}"

    results = _race(6, write)
    winners = [r for r in results if r != "conflict"]
    assert len(winners) == 1, results
    winner = int(winners[0].split()[1])
    assert stored("", KEY.key) == ({"n": 100 + winner}, 2)
    # A refused write left no record behind: its update can be retried.
    assert list(ProcessedUpdate.objects.values_list("update_id", flat=True)) == [900 + winner]


def test_racing_creations_of_one_key_only_one_wins(transactional_db: None) -> None:
    """Two "no row yet" reads that both try to create the row: one is refused."""
    storage = DatabaseStorage()

    def create(i: int) -> str:
        storage.commit_sync([Write(KEY, _record(i, 1), 0)], UpdateMark(BOT_ID, 900 + i))
        return f"won {i}"

    results = _race(6, create)
    assert len([r for r in results if r != "conflict"]) == 1, results
    assert Session.objects.count() == ProcessedUpdate.objects.count() == 1


def test_racing_deliveries_of_one_update_apply_once(transactional_db: None) -> None:
    """The same update committed by several processes at once: applied by exactly one."""
    storage = DatabaseStorage()
    assert storage.commit_sync([Write(KEY, _record(0, 1), 0)], None)

    def deliver(i: int) -> bool:
        return storage.commit_sync([Write(KEY, _record(1, 2), 1)], UpdateMark(BOT_ID, 77))

    results = _race(6, deliver)
    # The loser of the mark is told "already processed", never a conflict to retry.
    assert sorted(results, key=str) == [False] * 5 + [True]
    assert stored("", KEY.key) == ({"n": 1}, 2)


# -- 2. exactly once under redelivery -------------------------------------------------


def test_redelivered_update_is_answered_but_not_applied_again(webhook: Webhook) -> None:
    """Telegram sends an update again (our 200 got lost): 200, and the session is unchanged."""
    update = message("🍕", chat_id=GROUP, user_id=ALICE)
    assert webhook.outcome(update) == "committed"
    before = raw_rows()
    assert stored("chat", f"chat:{GROUP}") == ({"pizza_count": 1}, 1)
    assert webhook.outcome(update) == "duplicate"
    assert webhook.outcome(update) == "duplicate"
    assert raw_rows() == before
    assert ProcessedUpdate.objects.count() == 1


def test_redelivered_update_does_not_run_handlers_again(make_bot: Any, api: FakeBotAPI) -> None:
    """Side effects of handlers (a reply here) happen once too, not only the write."""

    async def count_and_reply(update: Any, context: Any) -> None:
        context.session["n"] += 1
        await update.message.reply_text(f"n={context.session['n']}")

    bot = make_bot(counter(), [MessageHandler(filters.TEXT, count_and_reply)])
    update = message("hi")
    assert bot.process(update) == "committed"
    assert bot.process(update) == "duplicate"
    assert api.sent_texts() == ["n=1"]


def test_update_ids_are_per_bot(make_bot: Any) -> None:
    """The same update_id from another bot is another update."""
    first = make_bot(counter(), [MessageHandler(filters.TEXT, count)])
    second = make_bot(counter(), [MessageHandler(filters.TEXT, count)], token="654321:other")
    update = message("hi")
    assert first.process(update) == "committed"
    assert second.process(update) == "committed"
    assert first.process(update) == second.process(update) == "duplicate"


def test_redelivered_read_only_update_runs_again(webhook: Webhook, api: FakeBotAPI) -> None:
    """Documented limit: an update that changed nothing leaves no record, so it runs again."""
    assert webhook.outcome(message("hello", user_id=ALICE)) == "committed"
    stats = message("/stats", user_id=ALICE)
    assert webhook.outcome(stats) == "unchanged"
    assert webhook.outcome(stats) == "unchanged"
    assert api.sent_texts() == ["You have sent 1 messages."] * 2
    assert ProcessedUpdate.objects.count() == 1


def test_records_are_pruned_after_the_redelivery_window(make_bot: Any) -> None:
    """Records older than the retention (25 h: Telegram gives up after 24 h) are deleted."""
    bot = make_bot(counter(), [MessageHandler(filters.TEXT, count)])
    old, recent = message("old"), message("recent")
    assert bot.process(old) == bot.process(recent) == "committed"
    ProcessedUpdate.objects.filter(update_id=old["update_id"]).update(
        processed_at=timezone.now() - timedelta(hours=25, minutes=1)
    )
    assert prune_processed_updates() == 1
    assert list(ProcessedUpdate.objects.values_list("update_id", flat=True)) == [
        recent["update_id"]
    ]
    assert bot.process(recent) == "duplicate"
    # Past the window the record is gone: a (no longer possible) redelivery would apply again.
    assert bot.process(old) == "committed"


# -- 3. acknowledged only after the commit --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_write_failing_mid_commit_answers_503_and_leaves_nothing(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the second row of an update: nothing of it is kept, not the
    first row, not the exactly-once record; the retried delivery applies once.

    The refusal is real: a negative revision breaks the column's constraint.
    """
    update = message("🍕", chat_id=GROUP, user_id=ALICE)
    real_commit = DatabaseStorage.commit_sync
    applied: list[StorageKey] = []

    def commit_with_a_bad_second_row(self: DatabaseStorage, changes: Any, mark: Any) -> bool:
        applied.extend(change.key for change in changes)
        assert len(changes) == 2
        first, second = changes
        bad = Write(second.key, dataclasses.replace(second.record, revision=-1), 0)
        return real_commit(self, [first, bad], mark)

    monkeypatch.setattr(DatabaseStorage, "commit_sync", commit_with_a_bad_second_row)
    response = webhook.post(update)
    assert response.status_code == 503
    assert response["Retry-After"]
    assert len(applied) == 2
    assert Session.objects.count() == ProcessedUpdate.objects.count() == 0

    monkeypatch.undo()
    assert webhook.outcome(update) == "committed"
    assert webhook.outcome(update) == "duplicate"
    assert stored("chat", f"chat:{GROUP}") == ({"pizza_count": 1}, 1)
    assert stored("user", f"user:{ALICE}") == ({"messages": 1}, 1)


@pytest.mark.django_db(transaction=True)
def test_database_down_answers_503_then_the_retry_applies_once(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection can be made: 503, then after the outage the update counts once."""
    assert webhook.outcome(message("one", user_id=ALICE)) == "committed"
    update = message("two", user_id=ALICE)
    db = connections["default"]
    db.close()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("could not connect to server (simulated outage)")

    monkeypatch.setattr(db, "get_new_connection", refuse)
    assert webhook.post(update).status_code == 503
    assert webhook.post(update).status_code == 503
    monkeypatch.undo()
    assert webhook.outcome(update) == "committed"
    assert webhook.outcome(update) == "duplicate"
    assert stored("user", f"user:{ALICE}") == ({"messages": 2}, 2)


@pytest.mark.django_db(transaction=True)
def test_commit_that_succeeded_but_was_not_confirmed_is_not_applied_twice(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops right after COMMIT: we answer 503 although it was stored, and
    Telegram's redelivery finds the record, so a 5xx never doubles a write."""
    real_end = UnitOfWork.end

    def commit_then_drop(self: UnitOfWork, outcome: str | None) -> str:
        real_end(self, outcome)
        raise OperationalError("connection lost before the COMMIT was confirmed (simulated)")

    monkeypatch.setattr(UnitOfWork, "end", commit_then_drop)
    update = message("🍕", chat_id=GROUP, user_id=ALICE)
    assert webhook.post(update).status_code == 503
    monkeypatch.undo()
    assert webhook.outcome(update) == "duplicate"
    assert stored("chat", f"chat:{GROUP}") == ({"pizza_count": 1}, 1)


# -- 4. rows that cannot be read ------------------------------------------------------


def _store_raw(fragment: str, key: str, text: str, version: int | None = None) -> None:
    """Write a session row as literal text, bypassing JSON validity checks where they exist."""
    q = connection.ops.quote_name
    now = timezone.now()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = 1")
        elif connection.vendor == "mysql":
            cursor.execute("SET SESSION check_constraint_checks = 0")
        try:
            cursor.execute(
                f"INSERT INTO {q(Session._meta.db_table)} ({q('bot_id')}, {q('fragment')}, "
                f"{q('key')}, {q('data')}, {q('version')}, {q('revision')}, "
                f"{q('created_at')}, {q('updated_at')}) VALUES (%s, %s, %s, %s, %s, 1, %s, %s)",
                [
                    BOT_ID,
                    fragment,
                    key,
                    text,
                    version,
                    connection.ops.adapt_datetimefield_value(now),
                    connection.ops.adapt_datetimefield_value(now),
                ],
            )
        finally:
            if connection.vendor == "sqlite":
                cursor.execute("PRAGMA ignore_check_constraints = 0")
            elif connection.vendor == "mysql":
                cursor.execute("SET SESSION check_constraint_checks = 1")


def _assert_logged(caplog: pytest.LogCaptureFixture, fragment: str, key: str) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"{BOT_ID}/{fragment}/{key}" in e and f"bot {BOT_ID}" in e for e in errors), errors


def test_undecodable_row_is_left_alone_and_other_chats_work(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    """A row holding text that is not JSON: the update is answered, the row kept as it is."""
    if connection.vendor == "postgresql":
        pytest.skip("jsonb cannot hold text that is not JSON (see the migration test)")
    _store_raw("chat", f"chat:{GROUP}", '{"pizza_count": 3,')
    before = raw_rows()
    assert webhook.outcome(message("🍕", chat_id=GROUP, user_id=ALICE)) == "bad_stored_data"
    assert raw_rows() == before  # neither the bad row nor the user's row was written
    _assert_logged(caplog, "chat", f"chat:{GROUP}")
    # The same user elsewhere and other users keep working.
    assert webhook.outcome(message("🍕", chat_id=ALICE, user_id=ALICE)) == "committed"
    assert webhook.outcome(message("🍕", chat_id=BOB, user_id=BOB)) == "committed"
    assert stored("user", f"user:{ALICE}") == ({"messages": 1}, 1)
    assert raw_rows()[("chat", f"chat:{GROUP}")] == before[("chat", f"chat:{GROUP}")]


@pytest.mark.parametrize(
    ("column", "value"), [("version", "not a number"), ("expires_at", "2024-13-45 99:00:00")]
)
def test_row_with_a_tampered_column_is_left_alone(
    webhook: Webhook, caplog: pytest.LogCaptureFixture, column: str, value: str
) -> None:
    """SQLite lets a hand edit put any text in a typed column: the row is bad stored data
    (answered, untouched, logged), not a storage failure redelivered for ever."""
    if connection.vendor != "sqlite":
        pytest.skip("the server refuses such values in a decimal or datetime column")
    _store_raw("chat", f"chat:{GROUP}", '{"pizza_count": 3}')
    q = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {q(Session._meta.db_table)} SET {q(column)} = %s WHERE {q('key')} = %s",
            [value, f"chat:{GROUP}"],
        )
    before = {k: v for k, v in raw_rows().items() if k[0] != "chat"}
    assert webhook.outcome(message("🍕", chat_id=GROUP, user_id=ALICE)) == "bad_stored_data"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"session {BOT_ID}/chat/chat:{GROUP} cannot" in e for e in errors), errors
    assert {k: v for k, v in raw_rows().items() if k[0] != "chat"} == before
    assert Session.objects.filter(key=f"chat:{GROUP}").count() == 1
    assert webhook.outcome(message("🍕", chat_id=ALICE, user_id=ALICE)) == "committed"


def test_row_whose_migration_raises_is_left_alone(
    webhook: Webhook, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored row whose upgrade fails: answered, untouched, logged; other rows upgrade."""
    settings.BOTSESSIONS_BOTS = {
        "default": {
            "APPLICATION": "tests.reliabilitybot.build_versioned_application",
            "WEBHOOK_SECRET": SECRET,
        }
    }
    _store_raw("chat", f"chat:{GROUP}", '{"pizza_count": 3, "broken": true}', version=1)
    _store_raw("chat", f"chat:{ALICE}", '{"pizza_count": 5}', version=1)
    before = raw_rows()
    assert webhook.outcome(message("🍕", chat_id=GROUP, user_id=BOB)) == "bad_stored_data"
    assert raw_rows() == before
    _assert_logged(caplog, "chat", f"chat:{GROUP}")
    assert webhook.outcome(message("🍕", chat_id=ALICE, user_id=ALICE)) == "committed"
    assert stored("chat", f"chat:{ALICE}") == ({"pizza_count": 6, "upgraded": True}, 2)
    assert raw_rows()[("chat", f"chat:{GROUP}")] == before[("chat", f"chat:{GROUP}")]


def test_handler_that_raises_discards_its_change(make_bot: Any) -> None:
    """A buggy handler is answered (no redelivery storm) and stores nothing half-done."""

    async def half_then_fail(update: Any, context: Any) -> None:
        context.session["n"] += 1
        raise RuntimeError("bug after the change")

    bot = make_bot(
        counter(),
        [CommandHandler("fail", half_then_fail), MessageHandler(filters.TEXT, count)],
    )
    assert bot.process(message("hi")) == "committed"
    assert bot.process(message("/fail")) == "handler_failed"
    assert stored("", f"chat:{ALICE}") == ({"n": 1}, 1)
    assert ProcessedUpdate.objects.count() == 1
