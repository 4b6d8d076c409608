"""One update, one unit of work: sessions, the exactly-once record and the handlers' own
rows commit together or not at all, and replies can wait for the commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import OperationalError, connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from telegram.ext import CommandHandler

from botproject.models import Purchase
from botsessions import Fragment, Sessions, per_user
from botsessions.models import ProcessedUpdate, Session
from botsessions.unit import UnitOfWork, may_write

from .fakebotapi import FakeBotAPI
from .sql import lock_statements, locked, release_statements, statements
from .updates import ALICE, BOB, GROUP, message

pytestmark = pytest.mark.django_db

SECRET = "test-secret"


def post(update: dict[str, Any]) -> Any:
    return Client().post(
        "/telegram/webhook/",
        data=json.dumps(update),
        content_type="application/json",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )


async def buy(update: Any, context: Any) -> None:
    """Writes a row of the project's own model, then counts it in the session."""
    await Purchase.objects.acreate(chat_id=update.effective_chat.id, user_id=1, item="tea")
    context.session["bought"] += 1


async def buy_then_fail(update: Any, context: Any) -> None:
    await buy(update, context)
    raise RuntimeError("the payment provider said no")


def shop(**kwargs: Any) -> Sessions:
    return Sessions(initial=lambda: {"bought": 0}, **kwargs)


# -- the handlers' rows are part of the update ------------------------------------------


def test_a_failed_handler_rolls_back_its_own_rows(make_bot: Any) -> None:
    bot = make_bot(shop(), [CommandHandler("buy", buy_then_fail)])
    assert bot.process(message("/buy")) == "handler_failed"
    assert Purchase.objects.count() == 0
    assert Session.objects.count() == ProcessedUpdate.objects.count() == 0
    assert [type(e) for e in bot.errors] == [RuntimeError]  # the error handlers were told


def test_a_handler_that_writes_only_rows_is_not_run_again_on_redelivery(make_bot: Any) -> None:
    calls: list[int] = []

    async def order(update: Any, context: Any) -> None:
        calls.append(update.update_id)
        await Purchase.objects.acreate(chat_id=update.effective_chat.id, user_id=2, item="tea")

    bot = make_bot(shop(), [CommandHandler("order", order)])
    update = message("/order")
    assert bot.process(update) == "committed"  # no session change, but its row and record
    assert ProcessedUpdate.objects.count() == 1
    assert bot.process(update) == "duplicate"
    assert calls == [update["update_id"]]
    assert Purchase.objects.count() == 1


def test_sync_orm_code_wrapped_in_sync_to_async_joins_the_unit(make_bot: Any) -> None:
    from asgiref.sync import sync_to_async

    def record() -> None:
        Purchase.objects.create(chat_id=ALICE, user_id=3, item="tea")

    async def order(update: Any, context: Any) -> None:
        await sync_to_async(record)()
        raise RuntimeError("after the write")

    bot = make_bot(shop(), [CommandHandler("order", order)])
    assert bot.process(message("/order")) == "handler_failed"
    assert Purchase.objects.count() == 0


def test_a_read_only_update_is_not_recorded(make_bot: Any) -> None:
    """What the record costs a read-only update: nothing (no statement, no row)."""

    async def show(update: Any, context: Any) -> None:
        _ = context.session["bought"]
        await Purchase.objects.filter(user_id=1).acount()

    bot = make_bot(shop(), [CommandHandler("show", show)])
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/show")) == "unchanged"
    assert statements(captured) == locked("SELECT", "SELECT")  # the session, the count
    assert ProcessedUpdate.objects.count() == 0


def test_a_savepoint_and_a_compound_read_are_not_writes(make_bot: Any) -> None:
    """Django sends savepoints through the cursor too: reading inside ``atomic`` (and a
    union, which PostgreSQL gets in parentheses) records nothing."""
    from asgiref.sync import sync_to_async
    from django.db import transaction

    def read() -> int:
        with transaction.atomic():
            mine = Purchase.objects.filter(user_id=1).values("id")
            return len(mine.union(Purchase.objects.filter(user_id=2).values("id")))

    async def show(update: Any, context: Any) -> None:
        await sync_to_async(read)()

    bot = make_bot(shop(), [CommandHandler("show", show)])
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/show")) == "unchanged"
    assert any(q["sql"].startswith("SAVEPOINT") for q in captured.captured_queries)
    assert ProcessedUpdate.objects.count() == 0


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("SELECT 1", False),
        ("  (SELECT 1) UNION (SELECT 2)", False),
        ('SAVEPOINT "s1"', False),
        ('RELEASE SAVEPOINT "s1"', False),
        ('ROLLBACK TO SAVEPOINT "s1"', False),
        ("SET TIME ZONE 'UTC'", False),
        ("(\n  SELECT 1) UNION (SELECT 2)", False),
        ("BEGIN IMMEDIATE", False),
        ("START TRANSACTION", False),
        ("EXPLAIN SELECT 1", False),
        ("SET STATEMENT max_statement_time=5 FOR UPDATE t SET a = 1", True),
        ("BEGIN NOT ATOMIC INSERT INTO t VALUES (1); END", True),
        ("EXPLAIN ANALYZE DELETE FROM t", True),
        ("explain (format json, analyse) delete from t", True),
        ("PRAGMA user_version = 3", True),
        ("/* a comment */ SELECT 1", True),  # unsure: counted as a write
        ("INSERT INTO t VALUES (1)", True),
        ("update t set a = 1", True),
        ("WITH x AS (DELETE FROM t RETURNING 1) SELECT 1", True),
        ("", True),
    ],
)
def test_what_counts_as_a_write(sql: str, writes: bool) -> None:
    assert may_write(sql) is writes


def test_a_database_failure_inside_a_handler_is_retried_not_swallowed(make_bot: Any) -> None:
    """A handler's query that fails for want of the database (a lock wait past the
    timeout, a deadlock victim, a lost connection) makes the update fail as a whole."""

    async def order(update: Any, context: Any) -> None:
        await buy(update, context)
        raise OperationalError("deadlock detected (simulated)")

    bot = make_bot(shop(), [CommandHandler("order", order)])
    with pytest.raises(Exception, match="deadlock detected"):
        bot.process(message("/order"))
    assert Purchase.objects.count() == Session.objects.count() == 0


# -- lazy fragments -----------------------------------------------------------------------


def test_an_untouched_lazy_fragment_costs_no_statement(make_bot: Any) -> None:
    async def show(update: Any, context: Any) -> None:
        _ = context.session.chat["n"]

    strict_only = Sessions.multi(chat=Fragment(initial=lambda: {"n": 0}))
    with_lazy = Sessions.multi(
        chat=Fragment(initial=lambda: {"n": 0}),
        user=Fragment(initial=lambda: {"m": 0}, key=per_user, lazy=True),
    )
    counts = []
    for sessions in (strict_only, with_lazy):
        bot = make_bot(sessions, [CommandHandler("show", show)])
        with CaptureQueriesContext(connection) as captured:
            assert bot.process(message("/show")) == "unchanged"
        counts.append(statements(captured))
    assert counts[0] == counts[1] == locked("SELECT")


def test_only_lazy_fragments_untouched_cost_only_the_redelivery_check(make_bot: Any) -> None:
    async def nothing(update: Any, context: Any) -> None:
        pass

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}, lazy=True), [CommandHandler("noop", nothing)]
    )
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/noop")) == "unchanged"
    assert statements(captured) == ["SELECT"]  # the exactly-once record; no lock, no read
    assert "botsessions_session" not in captured.captured_queries[-1]["sql"]


def test_a_lazy_fragment_is_locked_with_the_others_on_first_read(make_bot: Any) -> None:
    async def bump(update: Any, context: Any) -> None:
        (await context.session.chat)["n"] += 1
        (await context.session.user)["m"] += 1

    bot = make_bot(
        Sessions.multi(
            chat=Fragment(initial=lambda: {"n": 0}, lazy=True),
            user=Fragment(initial=lambda: {"m": 0}, key=per_user, lazy=True),
        ),
        [CommandHandler("bump", bump)],
    )
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/bump")) == "committed"
    # The record check, then both keys locked together at the first read, two reads.
    reads = ["SELECT", *lock_statements(), "SELECT", "SELECT"]
    assert statements(captured) == [*reads, "INSERT", "INSERT", "INSERT", *release_statements()]


# -- sends after the commit ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_on_commit_sends_after_the_commit_and_never_after_a_rollback(
    make_bot: Any, api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_end = UnitOfWork.end

    def end(unit: UnitOfWork, outcome: str | None) -> str:
        outcome = real_end(unit, outcome)
        events.append("committed" if outcome == "committed" else "rolled back")
        return outcome

    monkeypatch.setattr(UnitOfWork, "end", end)

    async def paid(update: Any, context: Any) -> None:
        await buy(update, context)

        async def confirm() -> None:
            events.append("sent")
            await update.effective_message.reply_text("paid")

        context.on_commit(confirm)
        if update.effective_message.text.endswith("fail"):
            raise RuntimeError("no")

    bot = make_bot(shop(), [CommandHandler("pay", paid)])
    api.reset()
    assert bot.process(message("/pay fail", chat_id=BOB, user_id=BOB)) == "handler_failed"
    assert api.sent_texts() == [] and events == ["rolled back"]
    assert bot.process(message("/pay", chat_id=ALICE)) == "committed"
    assert api.sent_texts() == ["paid"]
    assert events == ["rolled back", "committed", "sent"]


@pytest.mark.django_db(transaction=True)
def test_a_failing_send_after_commit_is_logged_and_the_update_stays_committed(
    make_bot: Any, api: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async def paid(update: Any, context: Any) -> None:
        await buy(update, context)
        context.on_commit(update.effective_message.reply_text("first"))
        context.on_commit(update.effective_message.reply_text("second"))

    bot = make_bot(shop(), [CommandHandler("pay", paid)])
    api.fail_next("sendMessage", 400, "Bad Request: chat not found")
    assert bot.process(message("/pay")) == "committed"
    assert Purchase.objects.count() == 1
    assert api.sent_texts()[-1] == "second"  # the rest still went out
    assert "send after commit failed" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["waiting thread", "database threads"])
def test_a_send_reads_the_orm_on_the_updates_kind_of_thread(
    make_bot: Any, api: FakeBotAPI, path: str
) -> None:
    """Never on a thread asgiref makes for the caller's context: under ASGI the request
    may have ended, and that thread and its connection (from the pool) would stay."""
    seen: list[tuple[str, int]] = []

    async def paid(update: Any, context: Any) -> None:
        await buy(update, context)

        def count() -> tuple[str, int]:  # what Purchase.objects.acount() does, and where
            return threading.current_thread().name, Purchase.objects.count()

        async def confirm() -> None:
            seen.append(await sync_to_async(count)())

        context.on_commit(confirm)

    bot = make_bot(shop(), [CommandHandler("pay", paid)])
    update = bot.runner.decode(message("/pay"))
    if path == "waiting thread":  # the WSGI view's: the request thread runs it
        assert bot.runner.process(update) == "committed"
        assert seen == [(threading.current_thread().name, 1)]
    else:  # the async view's and runbot's
        assert async_to_sync(bot.runner.aprocess)(update) == "committed"
        assert len(seen) == 1 and seen[0][0].startswith("botsessions-db") and seen[0][1] == 1


def test_on_commit_outside_an_update_is_refused() -> None:
    from botsessions import SessionContext, SessionNotLoadedError

    context = object.__new__(SessionContext)

    async def never() -> None:  # pragma: no cover - closed unawaited
        pass

    with pytest.raises(SessionNotLoadedError):
        context.on_commit(never())


# -- the demo's /buy through the webhook ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_demo_buy_redelivered_after_a_lost_answer_applies_nothing(bot_client: Any) -> None:
    """The answer of a committed update never reached Telegram: the redelivery is
    answered 200 and writes nothing, sends nothing (through the test kit users get)."""
    first = bot_client.send("/buy tea", chat_id=GROUP, user_id=ALICE)
    assert (first.status, first.outcome) == (200, "committed")  # its answer "lost"
    assert first.texts == ["Bought tea. Purchases so far: 1."]
    again = bot_client.post(first.update)
    assert (again.status, again.outcome, again.texts) == (200, "duplicate", [])
    assert Purchase.objects.count() == 1
    user = Session.objects.get(fragment="user", key=f"user:{ALICE}")
    assert user.data == {"messages": 0, "purchases": 1}


def test_demo_buy_in_the_test_transaction_still_replies_after_commit(bot_client: Any) -> None:
    """Inside a test's transaction the update's commit is a savepoint; the kit still
    shows what the bot sent after it."""
    result = bot_client.send("/buy jam", chat_id=GROUP, user_id=BOB)
    assert result.texts == ["Bought jam. Purchases so far: 1."]
    assert Purchase.objects.get().item == "jam"


@pytest.mark.django_db(transaction=True)
def test_a_lock_wait_past_the_timeout_answers_503_and_leaves_nothing(
    fresh_bots: FakeBotAPI, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update holds the user's key (its handler is stuck); a second one of the same
    user gives up after BOTSESSIONS_LOCK_TIMEOUT with a 503 and leaves no row behind."""
    from botproject import bot as demo

    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.5
    if connection.vendor == "sqlite":
        # SQLite's one writer: the wait is the database's own timeout option.
        monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.5)
    entered, release = threading.Event(), threading.Event()
    real_buy = demo.buy

    async def slow_buy(update: Any, context: Any) -> None:
        await real_buy(update, context)
        if update.effective_chat.id == GROUP:
            entered.set()
            import asyncio

            while not release.is_set():
                await asyncio.sleep(0.01)

    monkeypatch.setattr(demo, "buy", slow_buy)

    def hold() -> None:
        try:
            post(message("/buy", chat_id=GROUP, user_id=ALICE))
        finally:
            connections.close_all()  # the test client leaves this thread's connection open

    first = threading.Thread(target=hold)
    first.start()
    try:
        assert entered.wait(10)
        refused = post(message("/buy", chat_id=GROUP - 1, user_id=ALICE))
        assert refused.status_code == 503
        assert refused["Retry-After"]
        if connection.vendor != "sqlite":  # SQLite's own wait ends as "database is locked"
            assert refused.json()["error"].startswith("a session was locked by another update")
    finally:
        release.set()
        first.join(10)
    assert Purchase.objects.count() == 1  # the first one's only
    assert ProcessedUpdate.objects.count() == 1
    assert not Session.objects.filter(key=f"chat:{GROUP - 1}").exists()


@pytest.mark.django_db(transaction=True)
def test_no_database_work_no_transaction_and_the_writes_need_no_savepoint(make_bot: Any) -> None:
    """An update no handler wants opens no transaction (on SQLite it would take the
    write lock); a changed one writes in its transaction directly, with no savepoint."""
    bot = make_bot(shop(), [CommandHandler("buy", buy)])
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("not a command")) == "skipped"
    assert captured.captured_queries == []
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/buy")) == "committed"
    words = [q["sql"].split()[0].upper() for q in captured.captured_queries]
    assert "SAVEPOINT" not in words
    assert words.count("INSERT") == 3  # the purchase, the record, the session


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("urls", ["botproject.urls", "tests.async_urls"], ids=["wsgi", "asgi"])
def test_atomic_requests_do_not_wrap_the_webhook(
    fresh_bots: FakeBotAPI, monkeypatch: pytest.MonkeyPatch, settings: Any, urls: str
) -> None:
    """With ATOMIC_REQUESTS on, each update is still its own unit of work (Django would
    refuse an atomic async view, and MariaDB's key locks would be given back early)."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    settings.ROOT_URLCONF = urls
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    update = message("/buy tea", chat_id=GROUP, user_id=ALICE)
    if urls == "tests.async_urls":

        async def send() -> Any:
            return await AsyncClient().post(
                "/telegram/webhook/",
                data=json.dumps(update),
                content_type="application/json",
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            )

        response = async_to_sync(send)()
    else:
        response = post(update)
    assert response.status_code == 200
    assert response.json()["outcome"] == "committed"
    assert Purchase.objects.count() == 1


@pytest.mark.parametrize("view", ["TelegramWebhookView", "AsyncTelegramWebhookView"])
def test_atomic_requests_wrap_the_webhook_on_no_database(
    monkeypatch: pytest.MonkeyPatch, view: str
) -> None:
    """Sessions routed to a database of their own: ATOMIC_REQUESTS there wraps neither
    view (Django would refuse the async one with a 500 for every update)."""
    from django.core.handlers.base import BaseHandler

    from botsessions import webhook

    sessions_db = {**connections.settings["default"], "ATOMIC_REQUESTS": True}
    monkeypatch.setitem(connections.settings, "sessions", sessions_db)
    mounted = getattr(webhook, view).as_view()
    assert BaseHandler().make_view_atomic(mounted) is mounted


@pytest.mark.django_db(databases=["default", "elsewhere"])
def test_a_write_to_another_database_is_recorded_and_logged(
    make_bot: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """That write commits on its own: the update is recorded all the same (a redelivery
    does not write it twice), and the log says the write is outside the unit."""
    from botsessions import unit

    monkeypatch.setattr(unit, "_warned_elsewhere", set())

    async def note(update: Any, context: Any) -> None:
        _ = context.session["bought"]
        await Session.objects.using("elsewhere").acreate(
            bot_id=1, fragment="audit", key="k", data={}
        )

    bot = make_bot(shop(), [CommandHandler("note", note)])
    update = message("/note")
    assert bot.process(update) == "committed"
    assert bot.process(update) == "duplicate"
    assert Session.objects.using("elsewhere").count() == 1
    assert ProcessedUpdate.objects.filter(update_id=update["update_id"]).exists()
    assert "wrote to database 'elsewhere', outside the update's unit of work" in caplog.text


@pytest.mark.django_db(databases=["default", "elsewhere"])
def test_reading_another_database_in_a_transaction_is_no_write(
    make_bot: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgiref.sync import sync_to_async
    from django.db import transaction

    from botsessions import unit

    monkeypatch.setattr(unit, "_warned_elsewhere", set())

    def count_elsewhere() -> int:
        with transaction.atomic(using="elsewhere"):
            return Session.objects.using("elsewhere").count()

    async def look(update: Any, context: Any) -> None:
        _ = context.session["bought"]
        await sync_to_async(count_elsewhere)()

    bot = make_bot(shop(), [CommandHandler("look", look)])
    update = message("/look")
    assert bot.process(update) == "unchanged"
    assert not ProcessedUpdate.objects.filter(update_id=update["update_id"]).exists()
    assert "wrote to database" not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_send_after_commit_given_as_a_function_reads_the_committed_session(
    make_bot: Any, api: FakeBotAPI
) -> None:
    async def count(update: Any, context: Any) -> None:
        context.session["bought"] += 1
        message = update.effective_message
        context.on_commit(lambda: message.reply_text(f"Bought: {context.session['bought']}."))

    bot = make_bot(shop(), [CommandHandler("buy", count)])
    api.reset()
    assert bot.process(message("/buy")) == "committed"
    assert api.sent_texts() == ["Bought: 1."]


@pytest.mark.django_db(transaction=True)
def test_a_reply_after_commit_alone_is_recorded_and_not_sent_twice(
    make_bot: Any, api: FakeBotAPI
) -> None:
    """A handler that writes nothing but asks for a send after the commit: the update is
    recorded, so its redelivery sends nothing."""

    async def hello(update: Any, context: Any) -> None:
        _ = context.session["bought"]
        context.on_commit(update.effective_message.reply_text("hi"))

    bot = make_bot(shop(), [CommandHandler("hello", hello)])
    update = message("/hello")
    api.reset()
    assert bot.process(update) == "committed"
    assert bot.process(update) == "duplicate"
    assert api.sent_texts() == ["hi"]


def test_a_handler_that_swallows_a_database_error_fails_the_update_without_a_503(
    make_bot: Any,
) -> None:
    """Caught without a savepoint, a database error leaves a transaction that can only be
    rolled back: the update ends as a failed handler's would (200, nothing kept), not as
    a 503 that Telegram would redeliver forever."""
    from django.db import IntegrityError

    async def careless(update: Any, context: Any) -> None:
        await Purchase.objects.acreate(pk=77, chat_id=ALICE, user_id=1, item="tea")
        with contextlib.suppress(IntegrityError):
            await Purchase.objects.acreate(pk=77, chat_id=ALICE, user_id=1, item="tea")
        context.session["bought"] += 1

    bot = make_bot(shop(), [CommandHandler("buy", careless)])
    assert bot.process(message("/buy")) == "handler_failed"
    assert Purchase.objects.count() == Session.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_a_handler_catches_is_refused_where_it_rolled_back_everything(
    make_bot: Any,
) -> None:
    """A handler catches a deadlock in its savepoint, as Django asks. PostgreSQL rolled
    back the savepoint only: the update commits what else it wrote. MariaDB rolled back
    the whole transaction: the update is refused (a 503 for the webhook), keeping nothing,
    not answered as done with its writes silently gone, and its redelivery writes once."""
    from asgiref.sync import sync_to_async

    from botsessions.errors import StorageError

    from .sql import deadlock_with_another_connection

    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer: two connections never wait for each other")
    first, second = (Purchase.objects.create(chat_id=1, user_id=1, item="x").pk for _ in "ab")
    other_done = threading.Event()
    caught: list[Exception] = []

    async def buy_despite_a_deadlock(update: Any, context: Any) -> None:
        await buy(update, context)
        if not caught:
            try:
                await sync_to_async(deadlock_with_another_connection)(first, second, other_done)
            except OperationalError as exc:
                caught.append(exc)

    bot = make_bot(shop(), [CommandHandler("buy", buy_despite_a_deadlock)])
    update = message("/buy", chat_id=GROUP, user_id=ALICE)
    if connection.vendor == "postgresql":
        assert bot.process(update) == "committed"
    else:
        with pytest.raises(StorageError, match="Deadlock found"):
            bot.process(update)
        assert not Purchase.objects.filter(item="tea").exists()
        assert not Session.objects.exists()
        assert other_done.wait(10)
        assert bot.process(update) == "committed"
    assert other_done.wait(10)  # its connection closed before the test's teardown
    assert caught, "the handler saw no deadlock: the test set none up"
    assert Purchase.objects.filter(item="tea").count() == 1
    assert Session.objects.get().data == {"bought": 1}
    assert bot.process(update) == "duplicate"


@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_a_handler_catches_is_refused_not_answered_as_done(
    make_bot: Any,
) -> None:
    """The update's connection dies inside a handler's savepoint and the handler catches
    the error. Its transaction is gone with what it wrote: refused, for a redelivery,
    rather than answered as a failed handler's (200) and lost."""
    from asgiref.sync import sync_to_async
    from django.db import Error, transaction

    from botsessions.errors import StorageError

    if connection.vendor == "sqlite":
        pytest.skip("a SQLite connection cannot be ended from another")
    lost: list[Exception] = []

    def lose_the_connection() -> None:
        own = connection.connection.info.backend_pid if connection.vendor == "postgresql" else None
        with connection.cursor() as cursor:
            if own is None:
                cursor.execute("SELECT CONNECTION_ID()")
                (own,) = cursor.fetchone()
        other = connections.create_connection("default")
        try:
            with transaction.atomic():
                with other.cursor() as cursor:
                    if connection.vendor == "postgresql":
                        cursor.execute("SELECT pg_terminate_backend(%s)", [own])
                    else:
                        cursor.execute(f"KILL {int(own)}")
                Purchase.objects.count()
        except Error as exc:
            lost.append(exc)
        finally:
            other.close()

    async def buy_despite_it(update: Any, context: Any) -> None:
        await buy(update, context)
        if not lost:
            await sync_to_async(lose_the_connection)()

    bot = make_bot(shop(), [CommandHandler("buy", buy_despite_it)])
    update = message("/buy", chat_id=GROUP, user_id=ALICE)
    with pytest.raises(StorageError, match="ended on the database"):
        bot.process(update)
    assert lost, "the connection was not lost: the test set nothing up"
    assert Purchase.objects.count() == Session.objects.count() == 0
    assert bot.process(update) == "committed"
    assert Purchase.objects.count() == Session.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_database_lock_wait_past_the_timeout_fails_the_update(
    make_bot: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two applications (as two processes would be) share the database only: the second
    one waits for the key's lock in the database, not in memory, and gives up after
    BOTSESSIONS_LOCK_TIMEOUT with nothing written."""
    import time

    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.5
    if connection.vendor == "sqlite":
        monkeypatch.setitem(connection.settings_dict["OPTIONS"], "timeout", 0.5)
    entered, release = threading.Event(), threading.Event()

    async def slow(update: Any, context: Any) -> None:
        await buy(update, context)
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    first = make_bot(shop(), [CommandHandler("buy", slow)])
    second = make_bot(shop(), [CommandHandler("buy", buy)])

    def hold() -> None:
        try:
            first.process(message("/buy"))
        finally:
            connections.close_all()  # this thread's connection

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        with pytest.raises(Exception) as refused:
            second.process(message("/buy"))
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
    assert "lock" in str(refused.value).lower() or "timeout" in str(refused.value).lower()
    assert waited < 5
    assert Purchase.objects.count() == 1  # the first update's only


def test_the_private_ptb_attribute_we_read_is_still_there(make_bot: Any) -> None:
    """BotRunner reads Application._initialized to initialize once: pinned here."""
    bot = make_bot(shop(), [])
    assert bot.application._initialized is False
    bot.runner.initialize()
    assert bot.application._initialized is True
