"""Where an update's time goes on the session path (run in a worker, on SQLite).

Two views, because each alone misleads:

- timings without a profiler: each piece of the path timed on its own, many times
  (decoding, PTB's dispatch, handing an update to the bot's loop thread and waiting for
  it, one database call sent back to the waiting thread, the unit of work's empty
  transaction, the storage's two calls, a whole update's SQL, the same SQL in raw
  sqlite3, the JSON work), and the pipeline variants side by side in this one process,
  whose differences give each layer's cost;
- cProfile: an update through ``BotRunner`` runs on two threads (the bot's loop: PTB
  and the session engine; the caller: decoding, and the update's database work while
  it waits), so each thread gets a profiler of its own and is reported apart; then the
  unit's database work alone, on one thread. A profiler slows Python calls down, so its
  figures are shares and estimates, not absolute costs.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sqlite3
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import updates
from .worker import BOT_ID, Runner, measure

Timer = Callable[[], None]


def per_call_us(function: Timer, repeat: int) -> float:
    """The best of three runs of ``repeat`` calls, in µs per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        for _ in range(repeat):
            function()
        best = min(best, (time.perf_counter_ns() - started) / repeat / 1e3)
    return best


def components(spec: dict[str, Any]) -> dict[str, float]:
    """Each piece of the session path, timed alone (µs per call)."""
    from asgiref.current_thread_executor import CurrentThreadExecutor
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import connection
    from telegram import Update

    from botsessions.serializers import default_serializer
    from botsessions.storage.base import StorageKey
    from botsessions.storage.db import DatabaseStorage

    from .bots import PlainRunner, plain_application

    repeat = spec.get("repeat", 2000)
    chats = spec["chats"]
    ids = iter(range(spec["first_update_id"], spec["first_update_id"] + 100_000_000))
    out: dict[str, float] = {}

    # Decoding, and PTB's dispatch with the handler on a loop this thread already runs:
    # no hand-over.
    application = plain_application()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(application.initialize())
    fresh = updates.workload(repeat * 3, chats, 99, next(ids))
    position = iter(fresh)
    bot = application.bot
    out["Update.de_json"] = per_call_us(lambda: Update.de_json(next(position), bot), repeat)
    decoded = [Update.de_json(data, bot) for data in fresh[:repeat]]

    async def dispatch_all() -> None:
        for update in decoded:
            await application.process_update(update)

    started = time.perf_counter_ns()
    loop.run_until_complete(dispatch_all())
    out["PTB process_update, on a loop already running"] = (
        (time.perf_counter_ns() - started) / repeat / 1e3
    )
    loop.run_until_complete(application.shutdown())
    loop.close()

    # The thread hand-over of BotRunner.process (and of the baseline): the coroutine to
    # the loop thread, the caller waiting in a CurrentThreadExecutor.
    plain = PlainRunner(plain_application())

    async def nothing() -> None:
        return None

    def hand_over() -> None:
        executor = CurrentThreadExecutor(None)
        future = asyncio.run_coroutine_threadsafe(nothing(), plain.loop)
        executor.run_until_future(future)
        future.result()

    out["hand-over: an empty coroutine to the loop thread and back (per update)"] = per_call_us(
        hand_over, repeat
    )

    # One database call as the update makes it: thread-sensitive sync_to_async from the
    # loop, run by the waiting thread, the result handed back to the loop.
    def empty() -> None:
        return None

    async def calls(executor: Any) -> None:
        async with ThreadSensitiveContext(executor=executor):
            for _ in range(repeat):
                await sync_to_async(empty)()

    best = float("inf")
    for _ in range(3):
        executor = CurrentThreadExecutor(None)
        started = time.perf_counter_ns()
        future = asyncio.run_coroutine_threadsafe(calls(executor), plain.loop)
        executor.run_until_future(future)
        future.result()
        best = min(best, (time.perf_counter_ns() - started) / repeat / 1e3)
    out["sync_to_async of an empty function, run by the waiting thread (per call)"] = best
    plain.shutdown()

    # The session SQL, called directly on this thread: no loop, no engine.
    storage = DatabaseStorage()
    chat = updates.chat_id(0)
    keys = [StorageKey(BOT_ID, "chat", f"chat:{chat}"), StorageKey(BOT_ID, "user", f"user:{chat}")]
    timed, revision = storage_calls(storage, keys, ids, repeat)
    out.update(timed)
    connection.close()
    out.update(raw_sqlite(spec, keys, ids, revision))

    # What the engine does per fragment: encode to compare, verify what it will store.
    value = {"messages": 12345}
    text = default_serializer.encode(value)
    out["JSONSerializer.encode"] = per_call_us(
        lambda: default_serializer.encode(value), repeat * 10
    )
    out["JSONSerializer.verify"] = per_call_us(
        lambda: default_serializer.verify(value, text), repeat * 10
    )
    out["JSONSerializer.loads"] = per_call_us(lambda: default_serializer.loads(text), repeat * 10)
    return out


class UnitWork:
    """One update's database work on this thread, without the loop or the engine.

    What an update's database thread runs for a text update: the unit of work begins
    (``BEGIN IMMEDIATE`` on SQLite), the storage locks the keys and reads them with the
    exactly-once check, commits the user row with the record, and the unit ends
    (``COMMIT``).
    """

    def __init__(self, storage: Any, keys: list[Any], ids: Iterator[int]) -> None:
        from botsessions.storage.base import StoredSession, UpdateMark, Write

        self.storage, self.keys, self.ids = storage, keys, ids
        self._stored, self._mark, self._write = StoredSession, UpdateMark, Write

    def __call__(self) -> None:
        from botsessions import unit as units

        unit = units.UnitOfWork(self.storage.using)
        # The storage finds the update's unit in this context variable, which the
        # unit's runner sets: without it, commit_sync would open a transaction of its
        # own (a savepoint inside the unit's).
        token = units._current.set(unit)
        try:
            unit.begin()
            committed = False
            try:
                mark = self._mark(BOT_ID, next(self.ids))
                records, _ = self.storage.load_sync(self.keys, mark, self.keys)
                user = records[self.keys[1]]
                assert user is not None
                record = self._stored(data='{"messages":3}', revision=user.revision + 1)
                self.storage.commit_sync([self._write(self.keys[1], record, user.revision)], mark)
                committed = True
            finally:
                unit.end(committed)
        finally:
            units._current.reset(token)


def storage_calls(
    storage: Any, keys: list[Any], ids: Iterator[int], repeat: int
) -> tuple[dict[str, float], int]:
    """The unit of work and the storage's two calls timed alone; the user row's revision.

    Outside an update, ``load_sync`` is one SELECT in autocommit and ``commit_sync`` a
    transaction of its own; ``UnitWork`` is the real shape, all in the unit's transaction.
    """
    from botsessions.storage.base import StoredSession, UpdateMark, Write
    from botsessions.unit import UnitOfWork

    def empty_unit() -> None:
        unit = UnitOfWork(storage.using)
        unit.begin()
        unit.end(True)

    out = {
        "UnitOfWork.begin + end, nothing in between (BEGIN IMMEDIATE, COMMIT)": per_call_us(
            empty_unit, repeat
        ),
        "storage.load_sync, outside a unit (2 keys + mark: 1 SELECT)": per_call_us(
            lambda: storage.load_sync(keys, UpdateMark(BOT_ID, next(ids))), repeat
        ),
    }
    records, _ = storage.load_sync(keys, None)
    user = records[keys[1]]
    assert user is not None
    revision = [user.revision]

    def commit_one() -> None:
        record = StoredSession(data='{"messages":1}', revision=revision[0] + 1)
        storage.commit_sync([Write(keys[1], record, revision[0])], UpdateMark(BOT_ID, next(ids)))
        revision[0] += 1

    out["storage.commit_sync, outside a unit (atomic: BEGIN IMMEDIATE, mark, UPDATE, COMMIT)"] = (
        per_call_us(commit_one, repeat)
    )
    out[
        "a unit's database work: begin, load_sync (keys locked), commit_sync, end "
        "(BEGIN IMMEDIATE, SELECT, mark, UPDATE, COMMIT)"
    ] = per_call_us(UnitWork(storage, keys, ids), repeat)
    records, _ = storage.load_sync(keys, None)
    user = records[keys[1]]
    assert user is not None
    return out, user.revision


def raw_sqlite(spec: dict[str, Any], keys: list[Any], ids: Any, revision: int) -> dict[str, float]:
    """The same statements in plain sqlite3, same file and pragmas: the floor."""
    from django.db import connection

    repeat = spec.get("repeat", 2000)
    raw = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    select = (
        "SELECT bot_id, fragment, key, data, version, expires_at, revision "
        "FROM botsessions_session WHERE (bot_id = ? AND fragment = ? AND key = ?) "
        "OR (bot_id = ? AND fragment = ? AND key = ?) UNION ALL "
        "SELECT bot_id, '', '', NULL, NULL, NULL, -1 FROM botsessions_processedupdate "
        "WHERE bot_id = ? AND update_id = ?"
    )
    params = [value for key in keys for value in (key.bot_id, key.fragment, key.key)]
    out = {
        "raw sqlite3: the same SELECT": per_call_us(
            lambda: raw.execute(select, [*params, BOT_ID, next(ids)]).fetchall(), repeat
        )
    }
    state = [revision]

    def write() -> None:
        raw.execute(
            "INSERT INTO botsessions_processedupdate (bot_id, update_id, processed_at) "
            "VALUES (?, ?, ?)",
            [BOT_ID, next(ids), "2025-11-21 19:00:00.000000"],
        )
        raw.execute(
            "UPDATE botsessions_session SET data = ?, version = ?, expires_at = ?, "
            "revision = ?, updated_at = ? WHERE bot_id = ? AND fragment = ? AND key = ? "
            "AND revision = ?",
            [
                '{"messages":1}',
                None,
                None,
                state[0] + 1,
                "2025-11-21 19:00:00.000000",
                *params[3:],
                state[0],
            ],
        )
        state[0] += 1

    def commit() -> None:
        raw.execute("BEGIN IMMEDIATE")
        write()
        raw.execute("COMMIT")

    def whole() -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(select, [*params, BOT_ID, next(ids)]).fetchall()
        write()
        raw.execute("COMMIT")

    out["raw sqlite3: BEGIN IMMEDIATE, mark, UPDATE, COMMIT"] = per_call_us(commit, repeat)
    out["raw sqlite3: BEGIN IMMEDIATE, SELECT, mark, UPDATE, COMMIT"] = per_call_us(whole, repeat)
    raw.close()
    return out


# The variants, in report order: what each one is.
VARIANTS = {
    "plain, loop thread": "the baseline: plain Application, handed over as BotRunner does",
    "sessions off, BotRunner": "session-free handlers through BotRunner.process (a unit of work)",
    "memory sessions, BotRunner": "the demo's sessions in a MemoryStorage, through BotRunner",
    "SQLite sessions, BotRunner": "the demo on SQLite through BotRunner (the webhook's path)",
}
SQLITE_VARIANT = "SQLite sessions, BotRunner"


def variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline variants in this one process, interleaved over a few rounds."""
    from botsessions.runner import BotRunner

    from .bots import (
        PlainRunner,
        memory_application,
        plain_application,
        sessions_off_application,
    )

    chats, count, rounds = spec["chats"], spec["updates"], spec.get("rounds", 3)
    ids = iter(range(spec["first_update_id"] + 400_000_000, 10**15, 1_000_000))
    runners: dict[str, Any] = {
        "plain, loop thread": PlainRunner(plain_application()),
        "sessions off, BotRunner": BotRunner(sessions_off_application()),
        "memory sessions, BotRunner": BotRunner(memory_application()),
        SQLITE_VARIANT: Runner("sessions"),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    for runner in runners.values():
        for data in updates.warmup(chats, next(ids)):
            runner.process(runner.decode(data))
    for round_ in range(rounds):
        for name, runner in runners.items():
            runs[name].append(measure(runner, updates.workload(count, chats, round_, next(ids))))
    for runner in runners.values():
        runner.shutdown()
    return {
        name: {
            "what": VARIANTS[name],
            "per_update_us": statistics.median(r["per_update_us"] for r in results),
            "p50_us": statistics.median(r["p50_us"] for r in results),
            "p99_us": statistics.median(r["p99_us"] for r in results),
        }
        for name, results in runs.items()
    }


CATEGORIES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    # A thread of the two mostly waits for the other: the loop thread in epoll, the
    # caller in the CurrentThreadExecutor's condition (a lock's acquire).
    (
        "waiting (epoll on the loop, lock.acquire in the caller)",
        lambda f, n: "select.epoll" in n or n == "<method 'acquire' of '_thread.lock' objects>",
    ),
    ("sqlite3 (C)", lambda f, n: "sqlite3." in n),
    ("django.db", lambda f, n: "/django/db/" in f),
    ("django (other)", lambda f, n: "/django/" in f),
    ("asgiref (sync_to_async, executor, Local)", lambda f, n: "/asgiref/" in f),
    ("botsessions", lambda f, n: "/botsessions/" in f),
    ("telegram (PTB)", lambda f, n: "/telegram/" in f),
    ("json", lambda f, n: "/json/" in f or "_json" in n or "json." in n),
    ("asyncio", lambda f, n: "/asyncio/" in f or "_asyncio" in n),
    (
        "threads/locks/queues/futures",
        lambda f, n: (
            any(m in f for m in ("threading", "queue", "concurrent"))
            or ("acquire" in n and "lock" in n.lower())
        ),
    ),
    ("contextvars/copy_context", lambda f, n: "contextvars" in n or "Context" in n),
    ("datetime/decimal", lambda f, n: "datetime" in n or "decimal" in f.lower()),
)


def categorize(stats: pstats.Stats, count: int) -> dict[str, float]:
    """Own time (tottime) per category, in profiled µs per update."""
    totals: dict[str, float] = defaultdict(float)
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        label = "other"
        for category, matches in CATEGORIES:
            if matches(filename, name):
                label = category
                break
        totals[label] += tottime * 1e6 / count
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


_REPO_ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def top(stats: pstats.Stats, count: int, limit: int) -> list[tuple[str, float, float, float]]:
    """The functions with most own time: (name, own µs/update, cumulative µs/update, calls)."""
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.split("site-packages/")[-1].removeprefix(_REPO_ROOT)
        label = f"{where}:{line}({name})" if line else name
        rows.append((label, tottime * 1e6 / count, cumtime * 1e6 / count, calls / count))
    rows.sort(key=lambda row: -row[1])
    return rows[:limit]


def layer_functions() -> list[tuple[str, str, Any]]:
    """The functions whose cumulative time splits an update into layers, by thread.

    Each is (thread, label, function). Looked up by name: one the code no longer has is
    left out of the table. A coroutine's time counts only while it runs on the loop,
    not while it awaits the waiting thread's database work.
    """
    from asgiref.current_thread_executor import CurrentThreadExecutor
    from asgiref.sync import SyncToAsync
    from telegram import Update
    from telegram.ext import Application

    from botproject import bot
    from botsessions import (
        chat_migration,
        dblocks,
        locks,
        ptb,
        runner,
        serializers,
        session,
        unit,
    )
    from botsessions.storage import db

    caller, loop, every = "caller", "loop", "all"
    wanted = [
        (caller, "Update.de_json", Update, "de_json"),
        (caller, "BotRunner.process", runner.BotRunner, "process"),
        (caller, "  UnitOfWork.begin (BEGIN IMMEDIATE)", unit.UnitOfWork, "begin"),
        (
            caller,
            "  CurrentThreadExecutor.run_until_future (waits, runs the DB work)",
            CurrentThreadExecutor,
            "run_until_future",
        ),
        (
            caller,
            "  DatabaseStorage.load_sync (locks, SQL read)",
            db.DatabaseStorage,
            "load_sync",
        ),
        (caller, "    UnitOfWork.lock", unit.UnitOfWork, "lock"),
        (caller, "      dblocks.acquire", dblocks, "acquire"),
        (
            caller,
            "  DatabaseStorage.commit_sync (SQL writes)",
            db.DatabaseStorage,
            "commit_sync",
        ),
        (caller, "  UnitOfWork.end (COMMIT, and writes deferred to it)", unit.UnitOfWork, "end"),
        (loop, "process_as_unit (begin, run_in_unit, end, on the loop)", unit, "process_as_unit"),
        (loop, "run_in_unit (the handlers with sessions, in the unit)", unit, "run_in_unit"),
        (
            loop,
            "  SessionApplication.process_update_with_sessions",
            ptb.SessionApplication,
            "process_update_with_sessions",
        ),
        (loop, "    migration_of (is it a migration?)", chat_migration, "migration_of"),
        (loop, "    Application.process_update (PTB dispatch)", Application, "process_update"),
        (loop, "      SessionContext.refresh_data", ptb.SessionContext, "refresh_data"),
        (loop, "        UpdateRun.begin", ptb.UpdateRun, "begin"),
        (loop, "          UpdateSessions.__init__ (keys)", session.UpdateSessions, "__init__"),
        (loop, "          UpdateSessions.begin (locks, read)", session.UpdateSessions, "begin"),
        (loop, "            KeyLocks.take_free", locks.KeyLocks, "take_free"),
        (loop, "            DatabaseStorage.load", db.DatabaseStorage, "load"),
        (
            loop,
            "            FragmentSession.take (decode, snapshot)",
            session.FragmentSession,
            "take",
        ),
        (loop, "      count_message (the demo's handler)", bot, "count_message"),
        (loop, "    UpdateRun.finish", ptb.UpdateRun, "finish"),
        (loop, "      UpdateSessions.commit", session.UpdateSessions, "commit"),
        (
            loop,
            "        FragmentSession.change (serialize, compare)",
            session.FragmentSession,
            "change",
        ),
        (loop, "        DatabaseStorage.commit", db.DatabaseStorage, "commit"),
        (loop, "    UpdateSessions.release (locks)", session.UpdateSessions, "release"),
        (loop, "SyncToAsync.__call__ (each DB call, loop side)", SyncToAsync, "__call__"),
        (
            caller,
            "SyncToAsync.thread_handler (each DB call, caller side)",
            SyncToAsync,
            "thread_handler",
        ),
        (every, "serializers.json_encode, all calls", serializers, "json_encode"),
        (every, "JSONSerializer.verify, all calls", serializers.JSONSerializer, "verify"),
        (every, "JSONSerializer.loads, all calls", serializers.JSONSerializer, "loads"),
        (every, "DatabaseStorage.using, all calls", db.DatabaseStorage, "using"),
    ]
    found = []
    for thread, label, owner, name in wanted:
        function = getattr(owner, name, None)
        if isinstance(function, property):
            function = function.fget
        function = getattr(function, "__func__", function)
        if getattr(function, "__code__", None) is not None:
            found.append((thread, label, function))
    return found


def layers(stats: pstats.Stats, count: int) -> list[tuple[str, str, float | None]]:
    """Cumulative profiled µs per update of each layer function (``None``: never called)."""
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for thread, label, function in layer_functions():
        code = function.__code__
        entry = table.get((code.co_filename, code.co_firstlineno, code.co_name))
        rows.append((thread, label, entry[3] * 1e6 / count if entry else None))
    return rows


def on_thread_of(loop: asyncio.AbstractEventLoop, function: Timer) -> None:
    """Call ``function`` on the thread running ``loop``, and wait for it."""
    done = threading.Event()
    failed: list[BaseException] = []

    def call() -> None:
        try:
            function()
        except BaseException as exc:
            failed.append(exc)
        finally:
            done.set()

    loop.call_soon_threadsafe(call)
    done.wait()
    if failed:
        raise failed[0]


def profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile the SQLite session path through BotRunner, one profiler per thread.

    The caller's thread decodes, hands the update over and runs its database work while
    it waits; the bot's loop thread runs PTB and the session engine. cProfile follows one
    thread, so each gets its own, both on for the same updates.
    """
    runner = Runner("sessions")
    bot_loop = runner._runner.loop
    chats, count = spec["chats"], spec["updates"]
    first = spec["first_update_id"] + 200_000_000
    for data in updates.warmup(chats, first):
        runner.run(data)
    work = updates.workload(count, chats, 12, first + chats)
    caller, loop = cProfile.Profile(), cProfile.Profile()
    on_thread_of(bot_loop, loop.enable)
    started = time.perf_counter_ns()
    caller.enable()
    for data in work:
        runner.run(data)
    caller.disable()
    elapsed = time.perf_counter_ns() - started
    on_thread_of(bot_loop, loop.disable)
    runner.shutdown()
    caller_stats = pstats.Stats(caller, stream=io.StringIO())
    loop_stats = pstats.Stats(loop, stream=io.StringIO())
    both = pstats.Stats(caller, stream=io.StringIO())
    both.add(loop)
    limit = spec.get("top", 15)
    return {
        "profiled_us_per_update": elapsed / count / 1e3,
        "categories": {
            "caller": categorize(caller_stats, count),
            "loop": categorize(loop_stats, count),
        },
        "layers": layers(both, count),
        "top": {"caller": top(caller_stats, count, limit), "loop": top(loop_stats, count, limit)},
    }


def storage_profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile a unit's database work alone, on this thread: the SQL's own cost."""
    from botsessions.storage.base import StorageKey
    from botsessions.storage.db import DatabaseStorage

    storage = DatabaseStorage()
    count = spec.get("repeat", 2000)
    chat = updates.chat_id(1)
    keys = [StorageKey(BOT_ID, "chat", f"chat:{chat}"), StorageKey(BOT_ID, "user", f"user:{chat}")]
    ids = iter(range(spec["first_update_id"] + 300_000_000, spec["first_update_id"] + 400_000_000))
    work = UnitWork(storage, keys, ids)
    profiler = cProfile.Profile()
    started = time.perf_counter_ns()
    profiler.enable()
    for _ in range(count):
        work()
    profiler.disable()
    elapsed = time.perf_counter_ns() - started
    stats = pstats.Stats(profiler, stream=io.StringIO())
    return {
        "profiled_us_per_update": elapsed / count / 1e3,
        "categories": categorize(stats, count),
        "top": top(stats, count, spec.get("top", 18)),
    }


def profile(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``--profile`` section's measurements; SQLite only (raw sqlite3 is the floor)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        raise RuntimeError("the profile section measures the SQLite path")
    measured = variants(spec)  # first: its warm-up creates the rows the components read
    return {
        "components": components(spec),
        "variants": measured,
        "sqlite_variant": SQLITE_VARIANT,
        "profile": profiled(spec),
        "storage": storage_profiled(spec),
    }
