"""Where an update's time goes on the session path (run in a worker, on SQLite).

Two views, because each alone misleads:

- component timings: each piece timed on its own, many times, without a profiler
  (decoding, PTB's dispatch, one thread hand-over, one database job hand-over, the
  session SQL through the storage and the same SQL in raw sqlite3, the JSON work), and
  the pipeline variants side by side in this one process, whose differences give the
  cost of each layer;
- cProfile of the SQLite session path, one profiler per thread (the caller's thread
  runs the SQL, the bot's loop thread runs PTB and the session engine). A profiler
  slows Python calls down, so its figures are shares, not absolute costs.
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
from contextlib import contextmanager
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

    from botsessions.dbthread import process_on_caller_thread, run_db
    from botsessions.serializers import default_serializer
    from botsessions.storage.base import StorageKey, StoredSession, UpdateMark, Write
    from botsessions.storage.db import DatabaseStorage

    from .bots import PlainRunner, plain_application

    repeat = spec.get("repeat", 2000)
    chats = spec["chats"]
    ids = iter(range(spec["first_update_id"], spec["first_update_id"] + 100_000_000))
    out: dict[str, float] = {}

    plain = PlainRunner(plain_application())
    bot = plain.application.bot
    fresh = updates.workload(repeat * 3, chats, 99, next(ids))
    position = iter(fresh)
    out["Update.de_json"] = per_call_us(lambda: Update.de_json(next(position), bot), repeat)

    # PTB's dispatch and the handler, on a loop in this thread: no hand-over at all.
    direct = plain_application()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(direct.initialize())
    decoded = [Update.de_json(data, direct.bot) for data in fresh[:repeat]]

    async def dispatch_all() -> None:
        for update in decoded:
            await direct.process_update(update)

    started = time.perf_counter_ns()
    loop.run_until_complete(dispatch_all())
    out["PTB process_update, same thread"] = (time.perf_counter_ns() - started) / repeat / 1e3
    loop.run_until_complete(direct.shutdown())
    loop.close()

    async def nothing() -> None:
        return None

    out["hand-over: run_coroutine_threadsafe round trip"] = per_call_us(
        lambda: asyncio.run_coroutine_threadsafe(nothing(), plain.loop).result(), repeat
    )
    out["hand-over: process_on_caller_thread, no DB job"] = per_call_us(
        lambda: process_on_caller_thread(nothing, loop=plain.loop), repeat
    )

    async def db_jobs() -> None:
        for _ in range(repeat):
            await run_db(lambda: None)

    started = time.perf_counter_ns()
    process_on_caller_thread(db_jobs, loop=plain.loop)
    out["hand-over: one run_db job (loop → caller → loop)"] = (
        (time.perf_counter_ns() - started) / repeat / 1e3
    )
    plain.shutdown()

    # The session SQL, called directly on this thread: no hand-over, no engine.
    storage = DatabaseStorage()
    chat = updates.chat_id(0)
    keys = [StorageKey(BOT_ID, "chat", f"chat:{chat}"), StorageKey(BOT_ID, "user", f"user:{chat}")]
    out["storage.load_sync (2 keys + mark)"] = per_call_us(
        lambda: storage.load_sync(keys, UpdateMark(BOT_ID, next(ids))), repeat
    )
    records, _ = storage.load_sync(keys, None)
    user = records[keys[1]]
    assert user is not None
    revision = [user.revision]

    def commit_one() -> None:
        record = StoredSession(data='{"messages":1}', revision=revision[0] + 1)
        storage.commit_sync([Write(keys[1], record, revision[0])], UpdateMark(BOT_ID, next(ids)))
        revision[0] += 1

    out["storage.commit_sync (mark + 1 UPDATE)"] = per_call_us(commit_one, repeat)
    connection.close()
    out.update(raw_sqlite(spec, keys, ids, revision[0]) if spec["vendor"] == "sqlite" else {})

    value = {"messages": 12345}
    text = default_serializer.dumps(value)
    out["JSONSerializer.dumps (checked round trip)"] = per_call_us(
        lambda: default_serializer.dumps(value), repeat * 10
    )
    out["JSONSerializer.loads"] = per_call_us(lambda: default_serializer.loads(text), repeat * 10)
    return out


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


@contextmanager
def inline_database_jobs() -> Iterator[None]:
    """What-if: run the storage's database jobs right where they are awaited.

    Only sound when the thread awaiting them is the caller's own (the loop is run by the
    caller's thread, below). Django refuses database calls while an event loop runs in
    the thread, so the running loop is hidden from it for the duration of a job.
    """
    import botsessions.storage.db as db

    async def run_inline(job: Callable[[], Any]) -> Any:
        loop = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return job()
        finally:
            asyncio.events._set_running_loop(loop)

    original = db.run_db
    db.run_db = run_inline  # type: ignore[assignment]
    try:
        yield
    finally:
        db.run_db = original


class CallerLoopRunner:
    """What-if: the caller's thread runs the application's loop itself (no hand-over)."""

    def __init__(self, application: Any) -> None:
        from botsessions.ptb import SessionApplication

        self.application = application
        self.sessions = isinstance(application, SessionApplication)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(application.initialize())

    def decode(self, data: dict[str, Any]) -> Any:
        from telegram import Update

        return Update.de_json(data, self.application.bot)

    def process(self, update: Any) -> str:
        if not self.sessions:
            self.loop.run_until_complete(self.application.process_update(update))
            return "unchanged"
        with inline_database_jobs():
            return str(
                self.loop.run_until_complete(self.application.process_update_with_sessions(update))
            )

    def shutdown(self) -> None:
        self.loop.run_until_complete(self.application.shutdown())
        self.loop.close()


VARIANTS = {
    "plain, caller runs the loop": "no hand-over: Update.de_json + PTB + handler",
    "plain": "the baseline: + one hand-over to the loop thread",
    "off": "session-free handlers through BotRunner.process",
    "memory, caller runs the loop": "session engine, MemoryStorage, no hand-over",
    "memory": "session engine, MemoryStorage, through BotRunner",
    "sessions, caller runs the loop": "SQLite sessions, DB jobs inline, no hand-over",
    "sessions": "SQLite sessions through BotRunner (the webhook's path)",
}


def variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline variants in this one process, interleaved over a few rounds.

    Besides the real paths, two what-ifs run the same applications on a loop driven by
    the caller's thread, with the database jobs inline: what the session path would
    cost without any thread hand-over.
    """
    from botproject.bot import build_application
    from botsessions.runner import BotRunner

    from .bots import PlainRunner, memory_application, plain_application, sessions_off_application

    chats, count, rounds = spec["chats"], spec["updates"], spec.get("rounds", 3)
    ids = iter(range(spec["first_update_id"] + 400_000_000, 10**15, 1_000_000))
    runners: dict[str, Any] = {
        "plain, caller runs the loop": CallerLoopRunner(plain_application()),
        "plain": PlainRunner(plain_application()),
        "off": BotRunner(sessions_off_application()),
        "memory, caller runs the loop": CallerLoopRunner(memory_application()),
        "memory": BotRunner(memory_application()),
        "sessions, caller runs the loop": CallerLoopRunner(build_application()),
        "sessions": Runner("sessions"),
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
    ("waiting: caller blocked on its job queue", lambda f, n: "_queue.SimpleQueue" in n),
    (
        "waiting: waking the loop (self-pipe send, then the GIL back)",
        lambda f, n: n == "<method 'send' of '_socket.socket' objects>",
    ),
    ("waiting: loop idle in epoll", lambda f, n: "select.epoll" in n),
    ("waiting: locks / futures", lambda f, n: "acquire" in n and "lock" in n.lower()),
    ("sqlite3 (C)", lambda f, n: "sqlite3." in n),
    ("psycopg", lambda f, n: "psycopg" in f or "psycopg" in n),
    ("django.db", lambda f, n: "/django/db/" in f),
    ("django (other)", lambda f, n: "/django/" in f),
    ("asgiref (connections[...] Local)", lambda f, n: "/asgiref/" in f),
    ("botsessions", lambda f, n: "/botsessions/" in f),
    ("telegram (PTB)", lambda f, n: "/telegram/" in f),
    ("json", lambda f, n: "/json/" in f or "_json" in n or "json." in n),
    ("asyncio", lambda f, n: "/asyncio/" in f),
    (
        "threads/queues/futures",
        lambda f, n: any(m in f for m in ("threading", "queue", "concurrent")),
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


def profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile the SQLite session path, one profiler in each of the two threads."""
    runner = Runner("sessions")
    chats, count = spec["chats"], spec["updates"]
    first = spec["first_update_id"] + 100_000_000
    for data in updates.warmup(chats, first):
        runner.run(data)
    work = updates.workload(count, chats, 11, first + chats)
    loop = runner._runner.loop
    caller, looper = cProfile.Profile(), cProfile.Profile()
    switched = threading.Event()

    def switch(enable: bool) -> None:
        looper.enable() if enable else looper.disable()
        switched.set()

    loop.call_soon_threadsafe(switch, True)
    switched.wait()
    switched.clear()
    started = time.perf_counter_ns()
    caller.enable()
    for data in work:
        runner.run(data)
    caller.disable()
    elapsed = time.perf_counter_ns() - started
    loop.call_soon_threadsafe(switch, False)
    switched.wait()
    runner.shutdown()
    threads = {}
    for name, profiler in (("caller thread", caller), ("loop thread", looper)):
        stats = pstats.Stats(profiler, stream=io.StringIO())
        threads[name] = {
            "categories": categorize(stats, count),
            "top": top(stats, count, spec.get("top", 18)),
        }
    return {"profiled_us_per_update": elapsed / count / 1e3, "threads": threads}


def layer_functions() -> list[tuple[str, Any]]:
    """The functions whose cumulative time splits an update into layers (nested)."""
    from telegram import Update
    from telegram.ext import Application

    from botproject import bot
    from botsessions import chat_migration, locks, ptb, serializers, session
    from botsessions.storage import db

    wanted = [
        ("Update.de_json", Update, "de_json"),
        (
            "SessionApplication.process_update_with_sessions",
            ptb.SessionApplication,
            "process_update_with_sessions",
        ),
        ("  migrate_chat_sessions (is it a migration?)", chat_migration, "migrate_chat_sessions"),
        ("  Application.process_update (PTB dispatch)", Application, "process_update"),
        ("    UpdateRun.begin (keys, locks, read)", ptb.UpdateRun, "begin"),
        ("      UpdateSessions.__init__ (keys)", session.UpdateSessions, "__init__"),
        ("      KeyLocks.acquire", locks.KeyLocks, "acquire"),
        ("      DatabaseStorage.load_sync (SQL read)", db.DatabaseStorage, "load_sync"),
        ("      FragmentSession.accept (decode, snapshot)", session.FragmentSession, "accept"),
        ("    count_message (the demo's handler)", bot, "count_message"),
        ("  UpdateRun.finish (compare, save)", ptb.UpdateRun, "finish"),
        ("    FragmentSession.change (serialize, compare)", session.FragmentSession, "change"),
        ("    DatabaseStorage.commit_sync (SQL write)", db.DatabaseStorage, "commit_sync"),
        ("  UpdateSessions.release (locks)", session.UpdateSessions, "release"),
        ("JSONSerializer.dumps, all calls", serializers.JSONSerializer, "dumps"),
        ("JSONSerializer.loads, all calls", serializers.JSONSerializer, "loads"),
        ("DatabaseStorage.using, all calls", db.DatabaseStorage, "using"),
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


def inline_profiled(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile the what-if path (caller runs the loop, DB jobs inline): one thread does
    everything and never waits, so own time per category is the cost of each layer."""
    from botproject.bot import build_application

    runner = CallerLoopRunner(build_application())
    chats, count = spec["chats"], spec["updates"]
    first = spec["first_update_id"] + 200_000_000
    for data in updates.warmup(chats, first):
        runner.process(runner.decode(data))
    work = updates.workload(count, chats, 12, first + chats)
    profiler = cProfile.Profile()
    started = time.perf_counter_ns()
    profiler.enable()
    for data in work:
        runner.process(runner.decode(data))
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
    """cProfile the storage's two calls alone, on this thread: the SQL path's own cost."""
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
    from django.db import connection

    spec = {**spec, "vendor": connection.vendor}
    measured = variants(spec)  # first: its warm-up creates the rows the components read
    return {
        "components": components(spec),
        "variants": measured,
        "profile": profiled(spec),
        "inline": inline_profiled(spec),
        "storage": storage_profiled(spec),
    }
