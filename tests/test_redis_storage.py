"""The Redis storage: the engine's guarantees where the sessions live in Redis.

The storage contract itself runs on Redis in ``tests/test_storages.py``. These tests
need a Redis server (``REDIS_URL``, default the local one); without one they are skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from telegram.ext import MessageHandler, filters

from botsessions import Fragment, SessionConflict, Sessions, StorageError, per_user
from botsessions.errors import LockTimeout
from botsessions.outcome import Outcome
from botsessions.storage.base import Delete, StorageKey, StoredSession, UpdateMark, Write

from .redis_support import URL, RedisProxy
from .updates import ALICE, BOB, GROUP, message

pytestmark = pytest.mark.django_db

BOT = 123456  # the harness's token is 123456:...
KEY = StorageKey(BOT, "", f"chat:{ALICE}")


def storage(prefix: str, url: str = URL, **options: Any) -> Any:
    from botsessions.storage.redis import RedisStorage

    return RedisStorage(url=url, prefix=prefix, **options)


def run(coroutine: Any) -> Any:
    async def call() -> Any:
        return await coroutine

    return async_to_sync(call)()


async def count(update: Any, context: Any) -> None:
    context.session["count"] += 1


def counter(prefix: str, **kwargs: Any) -> Sessions:
    return Sessions(initial=lambda: {"count": 0}, storage=storage(prefix), **kwargs)


def stored_count(prefix: str, key: StorageKey = KEY) -> int | None:
    import json

    record = run(storage(prefix).read(key))
    return None if record is None else json.loads(record.data)["count"]


# -- through the engine -----------------------------------------------------------------


def test_sessions_live_in_redis_under_namespaced_keys(make_bot, prefix, raw):
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    assert bot.process(message()) == Outcome.COMMITTED
    assert bot.process(message()) == Outcome.COMMITTED
    assert stored_count(prefix) == 2
    names = raw.keys(prefix + "*")
    assert f"{prefix}{{{BOT}}}:s::chat:{ALICE}" in names
    assert len([n for n in names if ":done:" in n]) == 2
    assert len(names) == 3  # the locks are given back


def test_a_redelivered_update_is_not_applied_twice(make_bot, prefix, raw):
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    update = message()
    assert bot.process(update) == Outcome.COMMITTED
    assert bot.process(update) == Outcome.DUPLICATE
    assert stored_count(prefix) == 1
    record = f"{prefix}{{{BOT}}}:done:{update['update_id']}"
    # The record expires by itself after the retention window (25 hours by default).
    assert 24 * 3600 < raw.ttl(record) <= 25 * 3600


def test_exactly_once_records_follow_the_retention_setting(make_bot, prefix, raw, settings):
    settings.BOTSESSIONS_PROCESSED_UPDATES_RETENTION = timedelta(seconds=90)
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    update = message()
    bot.process(update)
    assert 0 < raw.ttl(f"{prefix}{{{BOT}}}:done:{update['update_id']}") <= 90


def test_a_failed_handler_writes_nothing_and_gives_its_locks_back(make_bot, prefix, raw):
    async def fail(update: Any, context: Any) -> None:
        context.session["count"] += 1
        raise RuntimeError("no")

    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, fail)])
    assert bot.process(message()) == Outcome.HANDLER_FAILED
    assert raw.keys(prefix + "*") == []  # no session, no record, no lock


def test_a_lazy_read_a_failed_handler_never_awaited_gives_its_lock_back(make_bot, prefix, raw):
    """The read starts on access and takes the key's lock once it runs, after the handler
    has failed: it must not be left holding the lock until it expires."""

    async def fail(update: Any, context: Any) -> None:
        context.session  # noqa: B018  (starts the lazy read, never awaited)
        raise RuntimeError("no")

    lazy = Sessions(storage=storage(prefix), lazy=True, initial=lambda: {"count": 0})
    bot = make_bot(lazy, [MessageHandler(filters.TEXT, fail)])
    assert bot.process(message()) == Outcome.HANDLER_FAILED
    time.sleep(0.3)  # time enough for a read left running to take its lock
    assert raw.keys(prefix + "*") == []  # no session, no record, no lock


def test_a_lock_timeout_under_a_millisecond_still_locks(make_bot, prefix, settings):
    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.0005  # E011 allows it; Redis refuses PX 0
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    try:
        outcome = bot.process(message())
    except SessionConflict as exc:  # a lock of 1 ms may expire before the commit
        outcome = str(exc)
    assert outcome == Outcome.COMMITTED or "expired before the commit" in outcome


def test_a_ttl_is_redis_expiry(make_bot, prefix, raw):
    bot = make_bot(
        counter(prefix, ttl=timedelta(milliseconds=400)), [MessageHandler(filters.TEXT, count)]
    )
    bot.process(message())
    name = f"{prefix}{{{BOT}}}:s::chat:{ALICE}"
    assert 0 < raw.pttl(name) <= 400
    time.sleep(0.5)
    assert raw.exists(name) == 0  # gone with nobody purging
    bot.process(message())
    assert stored_count(prefix) == 1  # started afresh


def test_data_round_trips_as_json(make_bot, prefix):
    value = {"text": "🍕 ünïcode | pipes | too", "nested": [1, 2.5, None, True, {"a": []}]}

    async def store(update: Any, context: Any) -> None:
        context.session = value

    async def check(update: Any, context: Any) -> None:
        assert context.session == value
        context.session = {**value, "checked": True}

    bot = make_bot(
        Sessions(storage=storage(prefix)),
        [MessageHandler(filters.Regex("store"), store), MessageHandler(filters.TEXT, check)],
    )
    assert bot.process(message("store")) == Outcome.COMMITTED
    assert bot.process(message("check")) == Outcome.COMMITTED
    assert not bot.errors


def mixed(prefix: str, url: str = URL, **options: Any) -> Sessions:
    """The chat's fragment in Redis (first, so once it held the record), the user's in the
    database."""
    return Sessions.multi(
        chat=Fragment(initial=lambda: {"count": 0}, storage=storage(prefix, url, **options)),
        user=Fragment(initial=lambda: {"count": 0}, key=per_user),
    )


async def count_both(update: Any, context: Any) -> None:
    context.session.chat["count"] += 1
    context.session.user["count"] += 1


CHAT_KEY = StorageKey(BOT, "chat", f"chat:{ALICE}")


def test_redis_and_database_fragments_mix(make_bot, prefix, raw):
    """With a fragment in the database, the exactly-once record lives there."""
    from botsessions.models import ProcessedUpdate, Session

    bot = make_bot(mixed(prefix), [MessageHandler(filters.TEXT, count_both)])
    update = message(chat_id=ALICE)
    assert bot.process(update) == Outcome.COMMITTED
    assert bot.process(update) == Outcome.DUPLICATE
    assert stored_count(prefix, CHAT_KEY) == 1
    assert Session.objects.get(fragment="user").data == {"count": 1}
    assert list(ProcessedUpdate.objects.values_list("update_id", flat=True)) == [
        update["update_id"]
    ]
    assert [n for n in raw.keys(prefix + "*") if ":done:" in n or ":lock:" in n] == []


def test_redis_commits_after_the_database_and_keeps_its_lock_until_then(
    make_bot, prefix, raw, monkeypatch
):
    from botsessions.storage.db import DatabaseStorage

    seen: list[tuple[int, int]] = []
    apply = DatabaseStorage._apply

    def look_at_redis(self: Any, connection: Any, cursor: Any, change: Any, now: Any) -> None:
        # The database's writes run just before its COMMIT.
        session, lock = store.name(CHAT_KEY), store.lock_name(CHAT_KEY)
        seen.append((raw.exists(session), raw.exists(lock)))
        apply(self, connection, cursor, change, now)

    monkeypatch.setattr(DatabaseStorage, "_apply", look_at_redis)
    sessions = mixed(prefix)
    store = sessions.fragments["chat"].storage
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_both)])
    assert bot.process(message(chat_id=ALICE)) == Outcome.COMMITTED
    assert seen == [(0, 1)]  # not written yet, still locked
    assert stored_count(prefix, CHAT_KEY) == 1
    assert raw.exists(store.lock_name(CHAT_KEY)) == 0  # given back after its commit


def test_a_failed_database_commit_leaves_redis_untouched(make_bot, prefix, raw, monkeypatch):
    """The database's write fails after the handler: 503, nothing in Redis, and the
    redelivery is processed once."""
    from django.db import DatabaseError

    from botsessions.models import ProcessedUpdate, Session
    from botsessions.storage.db import DatabaseStorage

    failures = {"left": 1}
    apply = DatabaseStorage._apply

    def fail_once(self: Any, connection: Any, cursor: Any, change: Any, now: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise DatabaseError("the disk is full")
        apply(self, connection, cursor, change, now)

    monkeypatch.setattr(DatabaseStorage, "_apply", fail_once)
    bot = make_bot(mixed(prefix), [MessageHandler(filters.TEXT, count_both)])
    update = message(chat_id=ALICE)
    with pytest.raises(StorageError, match="disk is full"):
        bot.process(update)
    assert raw.keys(prefix + "*") == []  # no session, no record, no lock
    assert not Session.objects.exists() and not ProcessedUpdate.objects.exists()

    assert bot.process(update) == Outcome.COMMITTED  # Telegram's redelivery
    assert bot.process(update) == Outcome.DUPLICATE
    assert stored_count(prefix, CHAT_KEY) == 1
    assert Session.objects.get(fragment="user").data == {"count": 1}
    assert ProcessedUpdate.objects.count() == 1


def test_a_duplicate_found_at_the_database_commit_leaves_redis_untouched(make_bot, prefix):
    """Another delivery recorded the update meanwhile: this one writes nothing anywhere."""
    from botsessions.storage.base import UpdateMark
    from botsessions.storage.db import DatabaseStorage

    update = message(chat_id=ALICE)

    async def record_meanwhile(update_: Any, context: Any) -> None:
        await count_both(update_, context)
        # Recorded before this delivery's own record is written at the end.
        mark = UpdateMark(BOT, update["update_id"])
        await sync_to_async(DatabaseStorage().commit_sync)([], mark)

    bot = make_bot(mixed(prefix), [MessageHandler(filters.TEXT, record_meanwhile)])
    assert bot.process(update) == Outcome.DUPLICATE
    assert stored_count(prefix, CHAT_KEY) is None


def test_redis_failing_after_the_database_commit_is_logged(make_bot, prefix, raw, caplog):
    """The database has committed, record included: the update is done (200) and a
    redelivery is a duplicate; the Redis fragment's change is lost, and the log says so."""
    from botsessions.models import Session

    sessions = mixed(prefix)
    store = sessions.fragments["chat"].storage
    original = store._run

    async def no_commit(name: str, *args: Any) -> Any:
        if name == "commit":
            raise StorageError("saving sessions in Redis failed: connection reset")
        return await original(name, *args)

    store._run = no_commit
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_both)])
    update = message(chat_id=ALICE)
    assert bot.process(update) == Outcome.COMMITTED
    assert "could not be saved and are lost" in caplog.text
    assert Session.objects.get(fragment="user").data == {"count": 1}
    assert raw.keys(prefix + "*") == []  # nothing written, the lock given back
    store._run = original
    assert bot.process(update) == Outcome.DUPLICATE


async def count_and_buy(update: Any, context: Any) -> None:
    from botproject.models import Purchase

    context.session["count"] += 1
    await Purchase.objects.acreate(chat_id=ALICE, user_id=ALICE, item="pizza")


@pytest.mark.django_db(transaction=True)
def test_sessions_in_redis_and_handler_rows_a_failed_commit_loses_neither(
    make_bot, prefix, raw, monkeypatch
):
    """Every fragment in Redis, a handler writing rows: the record commits with the rows in
    the database and Redis follows that COMMIT. A failed COMMIT leaves Redis untouched, so
    the redelivery writes the row (once) instead of being taken as a duplicate."""
    from django.db import DatabaseError
    from django.db.backends.base.base import BaseDatabaseWrapper

    from botproject.models import Purchase
    from botsessions.models import ProcessedUpdate

    failures = {"left": 1}
    commit = BaseDatabaseWrapper.commit

    def fail_once(self: Any) -> None:
        if failures["left"] and self.in_atomic_block is False:
            failures["left"] -= 1
            raise DatabaseError("the server went away at COMMIT")
        commit(self)

    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count_and_buy)])
    update = message(chat_id=ALICE)
    monkeypatch.setattr(BaseDatabaseWrapper, "commit", fail_once)
    with pytest.raises(DatabaseError, match="went away"):  # the webhook's 503
        bot.process(update)
    assert raw.keys(prefix + "*") == []  # no session, no record, no lock
    assert not Purchase.objects.exists() and not ProcessedUpdate.objects.exists()

    assert bot.process(update) == Outcome.COMMITTED  # the redelivery
    assert bot.process(update) == Outcome.DUPLICATE
    assert Purchase.objects.count() == 1
    assert stored_count(prefix) == 1
    assert ProcessedUpdate.objects.count() == 1  # the record went with the row


def test_sessions_in_redis_and_no_rows_keep_the_record_in_redis(make_bot, prefix, raw):
    """Handlers that write no rows cost the database nothing: the record stays in Redis."""
    from botsessions.models import ProcessedUpdate

    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    update = message(chat_id=ALICE)
    assert bot.process(update) == Outcome.COMMITTED
    assert bot.process(update) == Outcome.DUPLICATE
    assert not ProcessedUpdate.objects.exists()
    assert [n for n in raw.keys(prefix + "*") if ":done:" in n] != []


async def count_chat_and_buy(update: Any, context: Any) -> None:
    from botproject.models import Purchase

    context.session.chat["count"] += 1
    await Purchase.objects.acreate(chat_id=ALICE, user_id=ALICE, item="pizza")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bot_kind", ["mixed", "all in Redis, rows"])
@pytest.mark.parametrize("path", ["wsgi", "asgi"])
def test_same_key_updates_whose_redis_commit_follows_the_database_lose_nothing(
    make_bot, prefix, bot_kind, path
):
    """Redis commits after the database's COMMIT: the next update of the same key in this
    process must wait for that commit (and its lock), not read what it is replacing."""
    from botproject.models import Purchase

    if bot_kind == "mixed":
        bot = make_bot(mixed(prefix), [MessageHandler(filters.TEXT, count_both)])
    else:
        sessions = Sessions.multi(
            chat=Fragment(initial=lambda: {"count": 0}, storage=storage(prefix))
        )
        bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_chat_and_buy)])

    def deliver(_: int) -> str:
        from django.db import connections

        update = bot.runner.decode(message(chat_id=ALICE))
        try:
            if path == "wsgi":
                return bot.runner.process(update)
            return asyncio.run(bot.runner.aprocess(update))
        finally:
            connections.close_all()  # this thread's, as a request's end would

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(deliver, range(12)))
    assert outcomes == [Outcome.COMMITTED] * 12
    assert stored_count(prefix, CHAT_KEY) == 12
    if bot_kind != "mixed":
        assert Purchase.objects.count() == 12


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_commit_still_lets_redis_follow_and_frees_the_keys(
    make_bot, prefix, monkeypatch, settings
):
    """Closing the connections after the COMMIT fails: Redis still commits, and the next
    update of the same key in this process is not left waiting for keys never given back."""
    from botsessions import unit

    settings.BOTSESSIONS_LOCK_TIMEOUT = 2
    calls = {"n": 0}
    close = unit.close_old_connections

    def fail_at_the_end() -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first update's end (its begin was the first call)
            raise RuntimeError("closing failed")
        close()

    monkeypatch.setattr(unit, "close_old_connections", fail_at_the_end)
    bot = make_bot(mixed(prefix), [MessageHandler(filters.TEXT, count_both)])

    def deliver() -> str:
        return asyncio.run(bot.runner.aprocess(bot.runner.decode(message(chat_id=ALICE))))

    with pytest.raises(RuntimeError, match="closing failed"):
        deliver()
    assert stored_count(prefix, CHAT_KEY) == 1  # committed in the database, then in Redis
    assert deliver() == Outcome.COMMITTED
    assert stored_count(prefix, CHAT_KEY) == 2


@pytest.mark.django_db(transaction=True)
def test_two_database_storages_write_in_the_update_transaction(make_bot, monkeypatch):
    """A fragment given a DatabaseStorage of its own beside the default one: both are
    written by the unit, in its transaction, not deferred past its COMMIT."""
    from django.db import connection

    from botsessions.models import Session
    from botsessions.storage.db import DatabaseStorage

    seen: list[bool] = []
    commit_sync = DatabaseStorage.commit_sync

    def spy(self: Any, changes: Any, mark: Any = None) -> bool:
        seen.append(connection.in_atomic_block)
        return commit_sync(self, changes, mark)

    monkeypatch.setattr(DatabaseStorage, "commit_sync", spy)
    sessions = Sessions.multi(
        a=Fragment(initial=lambda: {"count": 0}),
        b=Fragment(initial=lambda: {"count": 0}, storage=DatabaseStorage()),
    )

    async def count_a_and_b(update: Any, context: Any) -> None:
        context.session.a["count"] += 1
        context.session.b["count"] += 1

    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_a_and_b)])
    assert bot.process(message(chat_id=ALICE)) == Outcome.COMMITTED
    assert seen == [True, True]
    assert sorted(Session.objects.values_list("fragment", "data")) == [
        ("a", {"count": 1}),
        ("b", {"count": 1}),
    ]


# -- versions and bad data, as with the database -------------------------------------------


def test_migrations_upgrade_stored_data(make_bot, prefix):
    run(storage(prefix).write(KEY, StoredSession('{"n": 1}', version=Decimal(1))))
    migrations = {1: lambda d: d, 2: lambda d: {"count": d["n"]}}
    bot = make_bot(counter(prefix, migrations=migrations), [MessageHandler(filters.TEXT, count)])
    assert bot.process(message()) == Outcome.COMMITTED
    record = run(storage(prefix).read(KEY))
    assert record.version == 2 and stored_count(prefix) == 2


def test_newer_data_is_refused_and_left_alone(make_bot, prefix, raw):
    run(storage(prefix).write(KEY, StoredSession('{"count": 5}', version=Decimal(7))))
    name = f"{prefix}{{{BOT}}}:s::chat:{ALICE}"
    before = raw.get(name)
    bot = make_bot(counter(prefix, migrations={1: dict}), [MessageHandler(filters.TEXT, count)])
    assert bot.process(message()) == Outcome.BAD_STORED_DATA
    assert raw.get(name) == before


# Revisions int() reads but the commit script does not: each would refuse every write.
ODD_REVISIONS = {"negative": "-1", "spaced": " 1", "underscored": "1_0", "arabic": "\u0661"}


@pytest.mark.parametrize(
    "kind",
    ["not json", "not our format", "a hash", "a year past 9999", "400 digits", *ODD_REVISIONS],
)
def test_bad_stored_data_is_left_alone_and_other_chats_go_on(make_bot, prefix, raw, kind):
    name = f"{prefix}{{{BOT}}}:s::chat:{ALICE}"
    if kind in ODD_REVISIONS:
        raw.set(name, ODD_REVISIONS[kind] + '|||{"count": 5}')
    elif kind == "not json":
        raw.set(name, "1|||{not json")
    elif kind == "not our format":
        raw.set(name, '{"count": 1}')
    elif kind == "a year past 9999":
        raw.set(name, '1||99999999999999999999|{"count": 1}')
    elif kind == "400 digits":
        raw.set(name, "1||" + "9" * 400 + '|{"count": 1}')
    else:
        raw.hset(name, "count", 1)
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    assert bot.process(message(chat_id=ALICE)) == Outcome.BAD_STORED_DATA
    assert bot.process(message(chat_id=BOB)) == Outcome.COMMITTED
    assert raw.type(name) == ("hash" if kind == "a hash" else "string")
    assert raw.exists(f"{prefix}{{{BOT}}}:lock::chat:{ALICE}") == 0


def test_a_chat_migration_moves_the_rest_past_a_bad_key_and_leaves_it(
    make_bot, prefix, raw, caplog
):
    """One undecodable session of the group must not fail the migration for good: it is
    left where it is, logged, and the chat's other sessions move."""
    from botsessions import per_user_in_chat

    from .updates import GROUP, SUPERGROUP, service_message

    store = storage(prefix)
    sessions = Sessions.multi(
        chat=Fragment(initial=lambda: {"count": 0}, storage=store),
        member=Fragment(initial=dict, key=per_user_in_chat, storage=store),
        migrate_chats=True,
    )
    bot = make_bot(sessions, [])
    run(store.write(StorageKey(BOT, "chat", f"chat:{GROUP}"), StoredSession('{"count": 3}')))
    bad = f"{prefix}{{{BOT}}}:s:member:chat:{GROUP}:user:{ALICE}"
    raw.set(bad, "x|||{}")
    notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    assert bot.process(notice) == Outcome.COMMITTED
    moved = run(store.read(StorageKey(BOT, "chat", f"chat:{SUPERGROUP}")))
    assert moved is not None and moved.data == '{"count": 3}'
    assert raw.get(bad) == "x|||{}"  # left alone
    assert f"member/chat:{GROUP}:user:{ALICE} not moved" in caplog.text


def connections_named(raw: Any, name: str) -> int:
    return sum(1 for client in raw.client_list() if client.get("name") == name)


def test_a_loop_that_ended_leaves_no_client_behind(prefix, raw):
    """A storage made from url= used from one asyncio.run() after another (a script's
    loop of calls) keeps no connection of a loop that has ended."""
    import gc
    import secrets

    name = f"bs-{secrets.token_hex(4)}"
    store = storage(prefix, client_name=name)
    for _ in range(5):
        asyncio.run(store.read(KEY))
    gc.collect()
    deadline = time.monotonic() + 5
    while connections_named(raw, name) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server sees the sockets close
    assert connections_named(raw, name) <= 1
    del store  # and the last loop's, which ended too, goes with the storage
    gc.collect()


def test_a_runner_shutting_down_closes_its_redis_connections(make_bot, prefix, raw):
    import secrets

    name = f"bs-{secrets.token_hex(4)}"
    sessions = Sessions(initial=lambda: {"count": 0}, storage=storage(prefix, client_name=name))
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count)])
    assert bot.process(message()) == Outcome.COMMITTED
    assert connections_named(raw, name) >= 1
    bot.runner.shutdown()
    deadline = time.monotonic() + 5
    while connections_named(raw, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections_named(raw, name) == 0


def test_redis_going_away_is_a_storage_error_and_nothing_is_written(make_bot, prefix, raw):
    from botsessions.storage.redis import RedisStorage

    gone = RedisStorage(url="redis://127.0.0.1:1/0", prefix=prefix)
    bot = make_bot(
        Sessions(initial=lambda: {"count": 0}, storage=gone),
        [MessageHandler(filters.TEXT, count)],
    )
    with pytest.raises(StorageError):
        bot.process(message())
    assert raw.keys(prefix + "*") == []


def test_redis_going_away_between_read_and_commit(make_bot, prefix, raw):
    """The commit is one script: it runs whole or not at all; the update is redelivered."""
    store = storage(prefix)
    failing = {"on": False}
    original = store._run

    async def flaky(name: str, *args: Any) -> Any:
        if failing["on"] and name == "commit":
            raise StorageError("saving sessions in Redis failed: connection reset")
        return await original(name, *args)

    store._run = flaky

    async def count_then_break(update: Any, context: Any) -> None:
        context.session["count"] += 1
        failing["on"] = True

    bot = make_bot(
        Sessions(initial=lambda: {"count": 0}, storage=store),
        [MessageHandler(filters.TEXT, count_then_break)],
    )
    update = message()
    with pytest.raises(StorageError):
        bot.process(update)
    assert raw.keys(prefix + "*") == []  # nothing written, lock given back
    failing["on"] = False
    store._run = original
    assert bot.process(update) == Outcome.COMMITTED  # the redelivery
    assert stored_count(prefix) == 1


# -- replies that never come: Redis ran the script, or not, and the client cannot tell -----

OTHER = StorageKey(BOT, "", f"chat:{BOB}")


@pytest.fixture
def proxy(prefix: str) -> Iterator[RedisProxy]:
    proxy = RedisProxy()
    yield proxy
    proxy.close()


def behind(proxy: RedisProxy, prefix: str) -> Any:
    """A storage talking to Redis through ``proxy``, waiting 0.3 s at most for a reply."""
    return storage(prefix, proxy.url, socket_timeout=0.3)


async def warm_up(store: Any) -> None:
    """Write KEY and OTHER (revision 1) and read one back through ``store``: Redis knows
    its scripts, and its connection is open for the proxy to hold."""
    old = StoredSession('"old"', revision=1)
    await store.commit([Write(KEY, old, 0), Write(OTHER, old, 0)])
    await store.read(KEY)


def locks(raw: Any, prefix: str) -> list[str]:
    return [name for name in raw.keys(prefix + "*") if ":lock:" in name]


def test_a_second_redis_storage_failing_after_the_first_committed_is_logged_as_lost(
    make_bot, prefix, raw, proxy, caplog
):
    """Two RedisStorage objects (two servers, say) are two commits: the first holds the
    update's record, so once it has committed the update is done. The second one
    failing then loses its changes, said in the log, instead of a 503 whose redelivery
    would be a duplicate that loses them without a word."""
    cut: list[bool] = []

    async def both(update: Any, context: Any) -> None:
        context.session.menu["n"] += 1
        context.session.wizard["n"] += 1
        if cut:
            proxy.cut()  # the second server goes away before the commit

    sessions = Sessions.multi(
        menu=Fragment(initial=lambda: {"n": 0}, storage=storage(prefix)),
        wizard=Fragment(initial=lambda: {"n": 0}, key=per_user, storage=behind(proxy, prefix)),
    )
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, both)])
    assert bot.process(message()) == Outcome.COMMITTED
    cut.append(True)
    update = message()
    assert bot.process(update) == Outcome.COMMITTED
    assert "could not be saved and are lost" in caplog.text
    proxy.restore()
    assert bot.process(update) == Outcome.DUPLICATE


def test_a_commit_whose_reply_is_lost_but_landed_is_committed(make_bot, api, prefix, raw, proxy):
    """Redis ran the commit, record included; its reply never came. The update is
    committed all the same: its sends after the commit go out, a redelivery is a
    duplicate, and its lock is given back."""

    async def count_and_reply(update: Any, context: Any) -> None:
        context.session["count"] += 1
        context.on_commit(lambda: update.effective_message.reply_text("counted"))
        if context.session["count"] == 2:
            proxy.hold_replies()  # the commit, next, runs and is never answered

    sessions = Sessions(initial=lambda: {"count": 0}, storage=behind(proxy, prefix))
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_and_reply)])
    assert bot.process(message()) == Outcome.COMMITTED  # Redis knows the scripts now
    update = message()
    assert bot.process(update) == Outcome.COMMITTED
    assert api.sent_texts() == ["counted", "counted"]
    assert stored_count(prefix) == 2
    assert raw.exists(f"{prefix}{{{BOT}}}:done:{update['update_id']}") == 1
    assert locks(raw, prefix) == []
    assert bot.process(update) == Outcome.DUPLICATE


def test_a_redis_commit_after_the_database_whose_reply_is_lost_but_landed_is_not_lost(
    make_bot, prefix, raw, proxy, caplog
):
    """The mixed case: no record in Redis, so what the keys hold tells that it landed."""

    async def count_both_and_hold(update: Any, context: Any) -> None:
        await count_both(update, context)
        if context.session.chat["count"] == 2:
            proxy.hold_replies()

    sessions = mixed(prefix, proxy.url, socket_timeout=0.3)
    bot = make_bot(sessions, [MessageHandler(filters.TEXT, count_both_and_hold)])
    assert bot.process(message(chat_id=ALICE)) == Outcome.COMMITTED
    assert bot.process(message(chat_id=ALICE)) == Outcome.COMMITTED
    assert "could not be saved" not in caplog.text
    assert stored_count(prefix, CHAT_KEY) == 2
    assert locks(raw, prefix) == []


def test_a_commit_without_a_record_is_settled_by_the_revisions_it_wrote(prefix, raw, proxy):
    store = behind(proxy, prefix)

    async def scene() -> bool:
        await warm_up(store)
        await store.load([KEY, OTHER], None, lock=[KEY, OTHER])
        proxy.hold_replies()
        new = StoredSession('"new"', revision=2)
        landed: bool = await store.commit([Write(KEY, new, 1), Delete(OTHER, 1)])
        await store.aclose()
        return landed

    assert asyncio.run(scene()) is True
    assert run(storage(prefix).read(KEY)).data == '"new"'
    assert raw.exists(storage(prefix).name(OTHER)) == 0
    assert locks(raw, prefix) == []


def test_a_landed_commit_is_settled_by_its_locked_keys_alone(prefix, raw, proxy):
    """A key the commit wrote without its lock (``lock=False``) may be changed by another
    writer before the commit is settled: that does not make a landed commit fail."""
    store, other_writer = behind(proxy, prefix), storage(prefix)

    async def scene() -> bool:
        await warm_up(store)
        await store.load([KEY, OTHER], None, lock=[KEY])
        proxy.hold_replies()
        commit = asyncio.ensure_future(
            store.commit(
                [
                    Write(KEY, StoredSession('"new"', revision=2), 1),
                    Write(OTHER, StoredSession('"new"', revision=2), 1),
                ]
            )
        )
        await asyncio.sleep(0.1)  # the commit has landed; its reply is held
        await other_writer.commit([Write(OTHER, StoredSession('"later"', revision=3), 2)])
        landed: bool = await commit
        await store.aclose()
        await other_writer.aclose()
        return landed

    assert asyncio.run(scene()) is True
    assert run(storage(prefix).read(KEY)).data == '"new"'
    assert run(storage(prefix).read(OTHER)).data == '"later"'
    assert locks(raw, prefix) == []


@pytest.mark.parametrize("with_record", [True, False])
def test_a_commit_that_never_reached_redis_fails_and_can_never_land_late(
    prefix, raw, proxy, with_record
):
    """Its locks are given back as it fails, so the script, arriving late, finds them
    gone and writes nothing."""
    store = behind(proxy, prefix)
    mark = UpdateMark(BOT, 7) if with_record else None

    async def scene() -> None:
        await warm_up(store)
        await store.load([KEY], None, lock=[KEY])
        proxy.hold_requests()
        with pytest.raises(StorageError, match="saving sessions in Redis failed"):
            await store.commit([Write(KEY, StoredSession('"new"', revision=2), 1)], mark)
        assert locks(raw, prefix) == []
        proxy.release()  # the script reaches Redis now
        await store.aclose()

    asyncio.run(scene())
    assert run(storage(prefix).read(KEY)).data == '"old"'
    assert raw.exists(f"{prefix}{{{BOT}}}:done:7") == 0


def test_a_commit_refused_by_redis_whose_reply_is_lost_fails(prefix, raw, proxy, settings):
    """The script found its lock expired and taken by another update: nothing written,
    and the other update's lock is left alone."""
    store, successor = behind(proxy, prefix), storage(prefix)

    async def scene() -> None:
        await warm_up(store)
        settings.BOTSESSIONS_LOCK_TIMEOUT = 0.2
        await store.load([KEY], None, lock=[KEY])
        await asyncio.sleep(0.3)  # its lock expires
        settings.BOTSESSIONS_LOCK_TIMEOUT = 10
        await successor.load([KEY], None, lock=[KEY])
        proxy.hold_replies()
        with pytest.raises(StorageError, match="saving sessions in Redis failed"):
            await store.commit([Write(KEY, StoredSession('"new"', revision=2), 1)])
        await store.aclose()

    asyncio.run(scene())
    assert run(storage(prefix).read(KEY)).data == '"old"'
    assert locks(raw, prefix) == [storage(prefix).lock_name(KEY)]  # the successor's


def test_a_commit_whose_outcome_cannot_be_told_says_so(prefix, proxy):
    """Redis out of reach after the commit was sent: it may or may not have landed."""
    store = behind(proxy, prefix)

    async def scene() -> None:
        await warm_up(store)
        await store.load([KEY], UpdateMark(BOT, 7), lock=[KEY])
        proxy.go_silent()
        with pytest.raises(StorageError, match=r"unknown.* may or may not have been saved"):
            await store.commit(
                [Write(KEY, StoredSession('"new"', revision=2), 1)], UpdateMark(BOT, 7)
            )
        await store.aclose()

    asyncio.run(scene())


def test_a_refused_connection_is_not_settled(prefix):
    """Nothing was sent: a plain failure, with no second attempt to reach Redis."""
    from botsessions.storage.redis import RedisStorage

    gone = RedisStorage(url="redis://127.0.0.1:1/0", prefix=prefix)
    with pytest.raises(StorageError) as failure:
        run(gone.commit([Write(KEY, StoredSession("1", revision=1), None)], UpdateMark(BOT, 7)))
    assert "unknown" not in str(failure.value)


def test_a_lock_taking_read_whose_reply_is_lost_leaves_no_lock(prefix, raw, proxy):
    """Redis took the lock, the reply never came: the read fails and gives the lock
    back, rather than leaving the chat locked until the lock expires."""
    store = behind(proxy, prefix)

    async def scene() -> None:
        await warm_up(store)
        proxy.hold_replies()
        with pytest.raises(StorageError, match="reading sessions in Redis failed"):
            await store.load([KEY], None, lock=[KEY])
        await store.aclose()

    asyncio.run(scene())
    assert locks(raw, prefix) == []


# -- locks ----------------------------------------------------------------------------------


def test_same_key_updates_in_one_process_lose_nothing(make_bot, prefix):
    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, count)])
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: bot.process(message()), range(40)))
    assert outcomes == [Outcome.COMMITTED] * 40
    assert stored_count(prefix) == 40


async def increment(store: Any, times: int) -> None:
    """What an update does to a counter, step by step through the storage contract."""
    for _ in range(times):
        records, _ = await store.load([KEY], None, lock=[KEY])
        record = records[KEY]
        value = int(record.data) if record else 0
        revision = record.revision if record else 0
        await asyncio.sleep(0)
        await store.commit(
            [Write(KEY, StoredSession(str(value + 1), revision=revision + 1), revision)]
        )
        await store.unlock([KEY])


def test_two_clients_take_turns(prefix):
    """Two storages with clients of their own, as two processes have."""

    async def both() -> None:
        await asyncio.gather(increment(storage(prefix), 30), increment(storage(prefix), 30))

    asyncio.run(both())
    assert run(storage(prefix).read(KEY)).data == "60"


WORKER = """
import asyncio, os, sys
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from botsessions.storage.redis import RedisStorage
from tests.test_redis_storage import increment
asyncio.run(increment(RedisStorage(url=sys.argv[1], prefix=sys.argv[2]), int(sys.argv[3])))
"""


@pytest.mark.slow
def test_two_processes_take_turns(prefix):
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, URL, prefix, "50"], cwd=root, env=env)
        for _ in range(2)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    assert run(storage(prefix).read(KEY)).data == "100"


def test_a_lock_wait_past_the_timeout_is_a_lock_timeout(prefix, settings):
    holder, waiter = storage(prefix), storage(prefix)

    async def scene() -> float:
        await holder.load([KEY], None, lock=[KEY])  # expires in 10 s
        settings.BOTSESSIONS_LOCK_TIMEOUT = 0.3
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            await waiter.load([KEY], None, lock=[KEY])
        return time.monotonic() - started

    assert 0.25 < asyncio.run(scene()) < 1.0
    assert issubclass(LockTimeout, StorageError)  # the webhook's 503


def test_a_waiter_gets_the_lock_as_soon_as_it_is_given_back(prefix):
    holder, waiter = storage(prefix), storage(prefix)

    async def scene() -> float:
        await holder.load([KEY], None, lock=[KEY])
        task = asyncio.ensure_future(waiter.load([KEY], None, lock=[KEY]))
        await asyncio.sleep(0.2)
        assert not task.done()
        given_back = time.monotonic()
        await holder.unlock([KEY])
        await task
        return time.monotonic() - given_back

    assert asyncio.run(scene()) < 0.1


def test_a_live_process_keeps_its_locks_however_long_its_update_runs(prefix, settings):
    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.2
    slow, other = storage(prefix), storage(prefix)

    async def scene() -> None:
        await slow.load([KEY], None, lock=[KEY])
        await asyncio.sleep(0.7)  # a slow handler: more than three lock lifetimes
        with pytest.raises(LockTimeout):  # still held: the other process waits in vain
            await other.load([KEY], None, lock=[KEY])
        assert await slow.commit([Write(KEY, StoredSession('"slow"', revision=1), 0)])
        await slow.unlock([KEY])
        await other.load([KEY], None, lock=[KEY])  # given back: taken at once
        await other.unlock([KEY])
        await slow.close_for_loop()

    asyncio.run(scene())
    assert run(storage(prefix).read(KEY)).data == '"slow"'


def test_a_stale_owner_whose_lock_expired_cannot_overwrite_its_successor(prefix, settings):
    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.2
    stale, successor = storage(prefix), storage(prefix)
    stale._keep_locks = lambda: None  # a process frozen (SIGSTOP) renews nothing

    async def scene() -> None:
        await stale.load([KEY], None, lock=[KEY])
        await asyncio.sleep(0.3)  # its lock expires
        await successor.load([KEY], None, lock=[KEY])
        with pytest.raises(SessionConflict, match="expired"):
            await stale.commit([Write(KEY, StoredSession('"stale"', revision=1), 0)])
        await stale.unlock([KEY])  # does not give back the successor's lock
        assert await successor.commit([Write(KEY, StoredSession('"new"', revision=1), 0)])
        await successor.unlock([KEY])

    asyncio.run(scene())
    assert run(storage(prefix).read(KEY)).data == '"new"'


def test_locks_of_several_keys_are_taken_all_at_once(prefix):
    """No update holds one key while waiting for another: no deadlocks."""
    a, b = StorageKey(BOT, "chat", "chat:1"), StorageKey(BOT, "user", "user:1")
    first, second, third = storage(prefix), storage(prefix), storage(prefix)

    async def scene() -> None:
        await first.load([], None, lock=[b])
        task = asyncio.ensure_future(second.load([], None, lock=[a, b]))
        await asyncio.sleep(0.05)
        # ``a`` is free while ``second`` waits for ``b``.
        await asyncio.wait_for(third.load([], None, lock=[a]), 1)
        await third.unlock([a])
        await first.unlock([b])
        await asyncio.wait_for(task, 1)

    asyncio.run(scene())


def test_contention_is_never_refused(make_bot, prefix):
    """Slow same-key updates wait for each other, within the lock timeout."""
    gate = threading.Semaphore(0)

    async def slow(update: Any, context: Any) -> None:
        context.session["count"] += 1
        await asyncio.sleep(0.02)
        gate.release()

    bot = make_bot(counter(prefix), [MessageHandler(filters.TEXT, slow)])
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: bot.process(message()), range(18)))
    assert outcomes.count(Outcome.COMMITTED) == 18
    assert stored_count(prefix) == 18


def test_storage_needs_a_url_or_a_client():
    from botsessions.storage.redis import RedisStorage

    with pytest.raises(ValueError):
        RedisStorage()


def test_a_client_of_your_own(prefix):
    from redis.asyncio import Redis

    from botsessions.storage.redis import RedisStorage

    async def scene() -> Any:
        client = Redis.from_url(URL)
        store = RedisStorage(client=client, prefix=prefix)
        await store.commit([Write(KEY, StoredSession("1", revision=1), 0)], UpdateMark(BOT, 1))
        result = await store.load([KEY], UpdateMark(BOT, 1))
        await client.aclose()
        return result

    records, processed = asyncio.run(scene())
    assert records[KEY].data == "1" and processed


def test_a_migration_waits_for_a_key_another_update_of_the_process_holds(prefix):
    """The migration moves keys beside its own: one another update holds here is waited
    for, never taken over with that update's token (whose commit it would spoil)."""
    from botsessions.unit import UnitOfWork, _current

    shared = storage(prefix)
    member, own = StorageKey(BOT, "u", "chat:-1:user:5"), StorageKey(BOT, "u", "chat:-1")
    events: list[str] = []

    async def update_in_the_group() -> None:
        _current.set(UnitOfWork("default"))
        await shared.load([member], None, lock=[member])
        await asyncio.sleep(0.3)  # its handler runs
        assert await shared.commit([Write(member, StoredSession('{"n":2}', revision=2), 1)])
        events.append("committed")
        await shared.unlock([member])

    async def migration() -> None:
        _current.set(UnitOfWork("default"))
        await asyncio.sleep(0.05)
        moved = await shared.rename_chat(BOT, ["u"], -1, -100, lock=[own])
        events.append(f"moved {[key.key for key in moved]}")
        await shared.unlock([own])

    async def scene() -> None:
        await shared.commit([Write(member, StoredSession('{"n":1}', revision=1), 0)])
        await asyncio.gather(update_in_the_group(), migration())
        await shared.close_for_loop()

    asyncio.run(scene())
    assert events == ["committed", "moved ['chat:-100:user:5']"]
    assert run(storage(prefix).read(StorageKey(BOT, "u", "chat:-100:user:5"))).data == '{"n":2}'


@pytest.mark.django_db(transaction=True)
def test_lazy_fragments_in_two_storages_awaited_in_either_order_never_wait_in_a_cycle(
    make_bot, prefix, settings
):
    """Two processes (two applications), the same chat and user: one awaits the chat in
    Redis first, the other the user in the database first. Both lock the storages in
    one order, whichever they await first, so neither waits out the lock timeout."""
    settings.BOTSESSIONS_LOCK_TIMEOUT = 3

    def mixed() -> Sessions:
        return Sessions.multi(
            chat=Fragment(initial=lambda: {"n": 0}, lazy=True, storage=storage(prefix)),
            user=Fragment(initial=lambda: {"n": 0}, key=per_user, lazy=True),
        )

    async def in_either_order(update: Any, context: Any) -> None:
        order = ["chat", "user"] if update.message.text == "chat first" else ["user", "chat"]
        for name in order:
            data = await getattr(context.session, name)
            data["n"] += 1
            await asyncio.sleep(0.3)

    bots = [make_bot(mixed(), [MessageHandler(filters.TEXT, in_either_order)]) for _ in "ab"]
    outcomes: dict[str, Any] = {}

    def deliver(bot: Any, text: str, update_id: int) -> None:
        from django.db import connections

        started = time.monotonic()
        try:
            outcomes[text] = bot.process(message(text, chat_id=ALICE, update_id=update_id))
        finally:
            connections.close_all()  # this thread's, as a request's end closes it
        outcomes[f"{text}: seconds"] = time.monotonic() - started < 2

    threads = [
        threading.Thread(target=deliver, args=(bots[0], "chat first", 1)),
        threading.Thread(target=deliver, args=(bots[1], "user first", 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == {
        "chat first": "committed",
        "chat first: seconds": True,
        "user first": "committed",
        "user first: seconds": True,
    }


def two_stores(prefix: str) -> Sessions:
    """Two storages (two Redis prefixes), fragment ``b`` alone in the second."""
    first, second = storage(f"{prefix}first:"), storage(f"{prefix}second:")
    return Sessions.multi(
        a=Fragment(initial=dict, lazy=True, storage=first),
        b=Fragment(initial=dict, key=per_user, lazy=True, storage=second),
        c=Fragment(initial=dict, key=per_user, lazy=True, storage=first),
    )


def deliver_at_once(bots: list[Any], updates: list[dict[str, Any]]) -> list[Any]:
    """Each update to its own bot (a process of its own), at once; outcome, or error."""
    outcomes: list[Any] = [None] * len(updates)

    def deliver(n: int) -> None:
        started = time.monotonic()
        try:
            outcome: Any = bots[n].process(updates[n])
        except Exception as exc:
            outcome = type(exc).__name__
        outcomes[n] = (outcome, time.monotonic() - started < 1.5)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(len(updates))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_storages_are_locked_in_one_order_whichever_fragments_have_keys(
    make_bot, prefix, settings
):
    """An inline query has no chat: fragment ``a`` has no key. Its update still locks the
    first storage before the second, as a message does: no wait in a cycle."""
    from .updates import inline_query

    settings.BOTSESSIONS_LOCK_TIMEOUT = 2

    async def in_the_order_of_its_text(update: Any, context: Any) -> None:
        names = ["b", "c"] if update.inline_query is not None else ["c", "b"]
        for name in names:
            (await getattr(context.session, name))["by"] = update.update_id
            await asyncio.sleep(0.3)

    from telegram import Update
    from telegram.ext import TypeHandler

    handlers = [TypeHandler(Update, in_the_order_of_its_text)]
    bots = [make_bot(two_stores(prefix), handlers) for _ in "ab"]
    updates = [message("hi", chat_id=GROUP, user_id=ALICE), inline_query(ALICE)]
    assert deliver_at_once(bots, updates) == [("committed", True)] * 2


def test_lazy_fragments_gathered_take_their_locks_one_after_the_other(make_bot, prefix, settings):
    settings.BOTSESSIONS_LOCK_TIMEOUT = 2

    async def one_by_one(update: Any, context: Any) -> None:
        (await context.session.a)["n"] = 1
        await asyncio.sleep(0.3)
        (await context.session.b)["n"] = 1

    async def gathered(update: Any, context: Any) -> None:
        for data in await asyncio.gather(context.session.b, context.session.a):
            data["n"] = 2

    bots = [
        make_bot(two_stores(prefix), [MessageHandler(filters.TEXT, one_by_one)]),
        make_bot(two_stores(prefix), [MessageHandler(filters.TEXT, gathered)]),
    ]
    updates = [message("one", chat_id=ALICE), message("two", chat_id=ALICE)]
    assert deliver_at_once(bots, updates) == [("committed", True)] * 2


def test_reading_a_storage_locked_already_locks_no_other(make_bot, prefix):
    """The second fragment of a storage whose keys are locked: no round trip elsewhere."""
    from botsessions import MemoryStorage

    class Watched(MemoryStorage):
        def __init__(self) -> None:
            super().__init__()
            self.loads: list[list[StorageKey]] = []

        async def load(self, keys: Any, mark: Any, *, lock: Any = ()) -> Any:
            self.loads.append([*keys, *lock])
            return await super().load(keys, mark, lock=lock)

    elsewhere, first = Watched(), storage(prefix)
    sessions = Sessions.multi(
        a1=Fragment(initial=dict, lazy=True, storage=first),
        a2=Fragment(initial=dict, key=per_user, lazy=True, storage=first),
        z=Fragment(initial=dict, lazy=True, storage=elsewhere),  # never awaited
    )

    async def both_of_the_first(update: Any, context: Any) -> None:
        (await context.session.a1)["n"] = 1
        (await context.session.a2)["n"] = 1

    bot = make_bot(sessions, [MessageHandler(filters.TEXT, both_of_the_first)])
    assert bot.process(message("hi", chat_id=ALICE)) == "committed"
    assert elsewhere.loads == []


def test_a_loop_that_closes_while_its_locks_are_renewed_closes(prefix, settings):
    """The keeper of the locks is cancelled with its loop, whatever call it is in (the
    client may turn that cancellation into an error of its own, which it must not
    shrug off and carry on renewing forever)."""
    settings.BOTSESSIONS_LOCK_TIMEOUT = 0.06  # a renewal every 20 ms

    async def scene(holder: Any, pause: float) -> None:
        await holder.load([KEY], None, lock=[KEY])  # never given back
        await asyncio.sleep(pause)

    def loops() -> None:
        for n in range(150):  # the loop closes at every moment of a renewal, in turn
            asyncio.run(scene(storage(f"{prefix}{n}:"), 0.021 * (n % 5)))

    worker = threading.Thread(target=loops, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
