"""Where an update's time goes on the session path (run in a worker, on SQLite).

Two views, because each alone misleads:

- timings without a profiler: each piece of the path timed on its own, many times
  (decoding, PTB's dispatch, driving the loop from the caller's thread, the old
  hand-over to a loop thread for reference, the storage's two calls on the driver's
  cursor and on Django's, the same SQL in raw sqlite3, the JSON work), and the pipeline
  variants side by side in this one process, whose differences give each layer's cost;
- cProfile: the SQLite session path through ``BotRunner`` runs on the caller's thread
  alone (the loop, PTB, the engine and the SQL), so one profiler sees all of it; then
  the storage's two calls alone. A profiler slows Python calls down, so its figures are
  shares and estimates, not absolute costs.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sqlite3
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
    from django.db import connection
    from telegram import Update

    from botsessions.dbthread import run_db
    from botsessions.serializers import default_serializer
    from botsessions.sharedloop import SharedLoop
    from botsessions.storage.base import StorageKey
    from botsessions.storage.db import DatabaseStorage

    from .bots import LoopThreadRunner, plain_application

    repeat = spec.get("repeat", 2000)
    chats = spec["chats"]
    ids = iter(range(spec["first_update_id"], spec["first_update_id"] + 100_000_000))
    out: dict[str, float] = {}

    # Decoding, and PTB's dispatch with the handler on a loop this thread already runs:
    # no driving cost, no hand-over.
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

    async def nothing() -> None:
        return None

    shared = SharedLoop()
    out["SharedLoop.run of an empty coroutine (driving the loop, per update)"] = per_call_us(
        lambda: shared.run(nothing), repeat
    )

    async def db_jobs() -> None:
        for _ in range(repeat):
            await run_db(lambda: None)

    started = time.perf_counter_ns()
    shared.run(db_jobs)
    out["run_db of an empty job, inline on the caller's thread (per job)"] = (
        (time.perf_counter_ns() - started) / repeat / 1e3
    )
    shared.close()

    threaded = LoopThreadRunner(plain_application())
    out["reference: run_coroutine_threadsafe round trip to a loop thread"] = per_call_us(
        lambda: asyncio.run_coroutine_threadsafe(nothing(), threaded.loop).result(), repeat
    )
    threaded.shutdown()

    # The session SQL, called directly on this thread: no loop, no engine.
    storage = DatabaseStorage()
    chat = updates.chat_id(0)
    keys = [StorageKey(BOT_ID, "chat", f"chat:{chat}"), StorageKey(BOT_ID, "user", f"user:{chat}")]
    timed, revision = storage_calls(storage, keys, ids, repeat, through_django=False)
    out.update(timed)
    timed, revision = storage_calls(storage, keys, ids, repeat, through_django=True)
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


def storage_calls(
    storage: Any, keys: list[Any], ids: Iterator[int], repeat: int, *, through_django: bool
) -> tuple[dict[str, float], int]:
    """``load_sync`` and ``commit_sync`` timed alone, and the user row's last revision.

    ``through_django`` installs a pass-through execute_wrapper, which sends the storage's
    statements through Django's cursor (and its commit through ``transaction.atomic``)
    instead of the driver's: the price of being watched.
    """
    from django.db import connection

    from botsessions.storage.base import StoredSession, UpdateMark, Write
    from botsessions.storage.db import _direct

    def pass_through(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        return execute(sql, params, many, context)

    with ExitStack() as stack:
        if through_django:
            stack.enter_context(connection.execute_wrapper(pass_through))
            how, commit_shape = "Django's cursor", "atomic: BEGIN, mark, 1 UPDATE, COMMIT"
        else:
            how, commit_shape = "driver's cursor", "BEGIN, mark, 1 UPDATE, COMMIT"
        if _direct(connection) == through_django:
            raise RuntimeError(f"the storage would not take the {how} path")
        out = {
            f"storage.load_sync, {how} (2 keys + mark)": per_call_us(
                lambda: storage.load_sync(keys, UpdateMark(BOT_ID, next(ids))), repeat
            )
        }
        records, _ = storage.load_sync(keys, None)
        user = records[keys[1]]
        assert user is not None
        revision = [user.revision]

        def commit_one() -> None:
            record = StoredSession(data='{"messages":1}', revision=revision[0] + 1)
            storage.commit_sync(
                [Write(keys[1], record, revision[0])], UpdateMark(BOT_ID, next(ids))
            )
            revision[0] += 1

        out[f"storage.commit_sync, {how} ({commit_shape})"] = per_call_us(commit_one, repeat)
    return out, revision[0]


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

    def commit() -> None:
        raw.execute("BEGIN IMMEDIATE")
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
        raw.execute("COMMIT")
        state[0] += 1

    out["raw sqlite3: BEGIN, mark, UPDATE, COMMIT"] = per_call_us(commit, repeat)
    raw.close()
    return out


# The variants, in report order: what each one is.
VARIANTS = {
    "plain, caller-driven": "the baseline: plain Application on a SharedLoop run by the caller",
    "plain, loop thread": "plain Application on a loop thread, one hand-over per update",
    "sessions off, BotRunner": "session-free handlers through BotRunner.process",
    "memory sessions, BotRunner": "the demo's sessions in a MemoryStorage, through BotRunner",
    "SQLite sessions, BotRunner": "the demo on SQLite through BotRunner (the webhook's path)",
}
SQLITE_VARIANT = "SQLite sessions, BotRunner"


def variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline variants in this one process, interleaved over a few rounds."""
    from botsessions.runner import BotRunner

    from .bots import (
        CallerDrivenRunner,
        LoopThreadRunner,
        memory_application,
        plain_application,
        sessions_off_application,
    )

    chats, count, rounds = spec["chats"], spec["updates"], spec.get("rounds", 3)
    ids = iter(range(spec["first_update_id"] + 400_000_000, 10**15, 1_000_000))
    runners: dict[str, Any] = {
        "plain, caller-driven": CallerDrivenRunner(plain_application()),
        "plain, loop thread": LoopThreadRunner(plain_application()),
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
    ("sqlite3 (C)", lambda f, n: "sqlite3." in n),
    ("asyncio: polling the selector (epoll)", lambda f, n: "select.epoll" in n),
    ("django.db", lambda f, n: "/django/db/" in f),
    ("django (other)", lambda f, n: "/django/" in f),
    ("asgiref (connections[...] Local)", lambda f, n: "/asgiref/" in f),
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


def layer_functions() -> list[tuple[str, Any]]:
    """The functions whose cumulative time splits an update into layers (nested).

    Looked up by name: one the code no longer has is left out of the table.
    """
    from telegram import Update
    from telegram.ext import Application

    from botproject import bot
    from botsessions import (
        chat_migration,
        dbthread,
        locks,
        ptb,
        runner,
        serializers,
        session,
        sharedloop,
    )
    from botsessions.storage import db

    wanted = [
        ("Update.de_json", Update, "de_json"),
        ("BotRunner.process", runner.BotRunner, "process"),
        ("  SharedLoop.run (the caller drives the loop)", sharedloop.SharedLoop, "run"),
        (
            "    SessionApplication.process_update_with_sessions",
            ptb.SessionApplication,
            "process_update_with_sessions",
        ),
        ("      migration_of (is it a migration?)", chat_migration, "migration_of"),
        ("      Application.process_update (PTB dispatch)", Application, "process_update"),
        ("        SessionContext.refresh_data", ptb.SessionContext, "refresh_data"),
        ("          UpdateRun.begin", ptb.UpdateRun, "begin"),
        ("            UpdateSessions.__init__ (keys)", session.UpdateSessions, "__init__"),
        ("            UpdateSessions.begin (locks, read)", session.UpdateSessions, "begin"),
        ("              KeyLocks.take_free", locks.KeyLocks, "take_free"),
        ("              DatabaseStorage.load", db.DatabaseStorage, "load"),
        ("                DatabaseStorage.load_sync (SQL read)", db.DatabaseStorage, "load_sync"),
        ("              FragmentSession.take (decode, snapshot)", session.FragmentSession, "take"),
        ("        count_message (the demo's handler)", bot, "count_message"),
        ("      UpdateRun.finish", ptb.UpdateRun, "finish"),
        ("        UpdateSessions.commit", session.UpdateSessions, "commit"),
        (
            "          FragmentSession.change (serialize, compare)",
            session.FragmentSession,
            "change",
        ),
        ("          DatabaseStorage.commit", db.DatabaseStorage, "commit"),
        ("            DatabaseStorage.commit_sync (SQL write)", db.DatabaseStorage, "commit_sync"),
        ("      UpdateSessions.release (locks)", session.UpdateSessions, "release"),
        ("run_db, all calls", dbthread, "run_db"),
        ("serializers.json_encode, all calls", serializers, "json_encode"),
        ("JSONSerializer.verify, all calls", serializers.JSONSerializer, "verify"),
        ("JSONSerializer.loads, all calls", serializers.JSONSerializer, "loads"),
        ("DatabaseStorage.using, all calls", db.DatabaseStorage, "using"),
        ("storage.db._direct, all calls", db, "_direct"),
    ]
    found = []
    for label, owner, name in wanted:
        function = getattr(owner, name, None)
        if isinstance(function, property):
            function = function.fget
        function = getattr(function, "__func__", function)
        if getattr(function, "__code__", None) is not None:
            found.append((label, function))
    return found


def layers(stats: pstats.Stats, count: int) -> list[tuple[str, float]]:
    """Cumulative profiled µs per update of each layer function (0 when never called)."""
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for label, function in layer_functions():
        code = function.__code__
        entry = table.get((code.co_filename, code.co_firstlineno, code.co_name))
        rows.append((label, entry[3] * 1e6 / count if entry else 0.0))
    return rows


def profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile the SQLite session path through BotRunner.

    The caller's thread runs the loop, PTB, the engine and the SQL, and never waits for
    another thread, so one profiler on it sees the whole update: own time per category
    is what each layer costs.
    """
    runner = Runner("sessions")
    chats, count = spec["chats"], spec["updates"]
    first = spec["first_update_id"] + 200_000_000
    for data in updates.warmup(chats, first):
        runner.run(data)
    work = updates.workload(count, chats, 12, first + chats)
    profiler = cProfile.Profile()
    started = time.perf_counter_ns()
    profiler.enable()
    for data in work:
        runner.run(data)
    profiler.disable()
    elapsed = time.perf_counter_ns() - started
    runner.shutdown()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    return {
        "profiled_us_per_update": elapsed / count / 1e3,
        "categories": categorize(stats, count),
        "layers": layers(stats, count),
        "top": top(stats, count, spec.get("top", 25)),
    }


def storage_profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile the storage's two calls alone, on the driver's cursor: the SQL's own cost."""
    from botsessions.storage.base import StorageKey, StoredSession, UpdateMark, Write
    from botsessions.storage.db import DatabaseStorage

    storage = DatabaseStorage()
    count = spec.get("repeat", 2000)
    chat = updates.chat_id(1)
    keys = [StorageKey(BOT_ID, "chat", f"chat:{chat}"), StorageKey(BOT_ID, "user", f"user:{chat}")]
    ids = iter(range(spec["first_update_id"] + 300_000_000, spec["first_update_id"] + 400_000_000))
    profiler = cProfile.Profile()
    started = time.perf_counter_ns()
    profiler.enable()
    for _ in range(count):
        mark = UpdateMark(BOT_ID, next(ids))
        records, _ = storage.load_sync(keys, mark)
        user = records[keys[1]]
        assert user is not None
        record = StoredSession(data='{"messages":2}', revision=user.revision + 1)
        storage.commit_sync([Write(keys[1], record, user.revision)], mark)
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
