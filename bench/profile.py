"""Where the time of one update goes (``--profile``), and what the database is sent.

Four bots run in one worker process on the same updates, interleaved over a few rounds:
the baseline (``PlainRunner``) and, through ``BotRunner``, the session-free handlers, the
demo on a ``MemoryStorage`` and the demo on the database. Each step of an update is timed
directly (decoding; PTB's own work, on a loop this thread runs; the SQL and the commit,
by :class:`DatabaseWatch`) or is the difference between two bots (the hand-over, the key
checks and unit of work, the engine, and the rest of the database calls: the trips to
the waiting thread and back, the unit of work, the storage's code). A cProfile of the
database bot on both of its threads then names the functions with most own time (a
profiler slows small calls most: shares, not costs).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count as counter
from pathlib import Path
from statistics import median
from typing import Any

from telegram import Update

from . import updates
from .bots import (
    PlainRunner,
    measure,
    memory_application,
    plain_application,
    sessions_off_application,
)


class DatabaseWatch:
    """What this thread's default connection runs: each statement, commit and rollback.

    Statements are seen through Django's cursor (an ``execute_wrapper``), commits and
    rollbacks by wrapping the connection's methods; psycopg sends a ``BEGIN`` of its own
    before a transaction's first statement on PostgreSQL, so it is logged there too.
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sql_ns = self.end_ns = 0

    def take(self) -> dict[str, Any]:
        """What was run since the last call."""
        taken = {"log": self.log, "sql_ns": self.sql_ns, "end_ns": self.end_ns}
        self.__init__()  # type: ignore[misc]
        return taken

    @contextmanager
    def installed(self) -> Iterator[DatabaseWatch]:
        from django.db import connection

        clock = time.perf_counter_ns
        begun = False

        def execute(run: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal begun
            if connection.vendor == "postgresql" and not (begun or connection.get_autocommit()):
                self.log.append("BEGIN")
                begun = True
            started = clock()
            try:
                return run(sql, params, many, context)
            finally:
                self.sql_ns += clock() - started
                self.log.append(label(sql))

        def ending(method: Any, name: str) -> Any:
            def end() -> None:
                nonlocal begun
                started = clock()
                try:
                    method()
                finally:
                    self.end_ns += clock() - started
                    self.log.append(name)
                    begun = False

            return end

        connection.commit = ending(connection.commit, "COMMIT")  # type: ignore[method-assign]
        connection.rollback = ending(connection.rollback, "ROLLBACK")  # type: ignore[method-assign]
        try:
            with connection.execute_wrapper(execute):
                yield self
        finally:
            del connection.commit, connection.rollback  # the class's methods again


LABELS = (
    (r"PG_ADVISORY_XACT_LOCK|GET_LOCK", "lock"),
    (r"^SELECT .*BOTSESSIONS_SESSION", "read"),
    (r"^SELECT .*BOTSESSIONS_PROCESSEDUPDATE", "read-record"),
    (r"BOTSESSIONS_PROCESSEDUPDATE", "record"),
    (r"^(INSERT|UPDATE|DELETE)\b.*BOTSESSIONS_SESSION", ""),
    (r"^(BEGIN|SAVEPOINT|RELEASE)\b", ""),
)


def label(sql: str) -> str:
    """A statement's short name: lock, read, record, INSERT, UPDATE, BEGIN, ..."""
    head = sql.lstrip().upper()
    for pattern, name in LABELS:
        found = re.search(pattern, head)
        if found:
            return name or found.group(1)
    return head[:30]


def ptb_on_loop(work: list[dict[str, Any]]) -> float:
    """µs per update of the plain application's ``process_update`` on a running loop."""
    application = plain_application()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(application.initialize())
    decoded = [Update.de_json(data, application.bot) for data in work]

    async def process_all() -> None:
        for update in decoded:
            await application.process_update(update)

    started = time.perf_counter_ns()
    loop.run_until_complete(process_all())
    elapsed = time.perf_counter_ns() - started
    loop.run_until_complete(application.shutdown())
    loop.close()
    return elapsed / len(work) / 1e3


def profile(chats: int, count: int, rounds: int, first_update_id: int) -> dict[str, Any]:
    from botsessions.runner import BotRunner, runner_for

    ids = counter(first_update_id, 1_000_000)
    runners: dict[str, Any] = {
        "base": PlainRunner(plain_application()),
        "off": BotRunner(sessions_off_application()),
        "memory": BotRunner(memory_application()),
        "db": runner_for("default"),
    }
    for runner in runners.values():
        for data in updates.warmup(chats, next(ids)):
            runner.process(runner.decode(data))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*runners, "ptb"]}
    with DatabaseWatch().installed() as watch:
        for round_ in range(rounds):
            for name, runner in runners.items():
                work = updates.workload(count, chats, round_, next(ids))
                watch.take()
                result = measure(runner, work)
                seen = watch.take()
                runs[name].append(
                    {
                        **result,
                        "sql": seen["sql_ns"] / count / 1e3,
                        "end": seen["end_ns"] / count / 1e3,
                        "statements": sum(s not in ("COMMIT", "ROLLBACK") for s in seen["log"]),
                    }
                )
            work = updates.workload(count, chats, round_, next(ids))
            runs["ptb"].append({"per_update_us": ptb_on_loop(work)})
    m = {
        name: {key: median(run[key] for run in rs) for key in rs[0] if key != "outcomes"}
        for name, rs in runs.items()
    }
    us = {name: values["per_update_us"] for name, values in m.items()}
    db = m["db"]
    steps = {
        "decoding (Update.de_json)": m["base"]["decode_us"],
        "PTB's own work (dispatch, the handler)": us["ptb"],
        "the hand-over to the bot's loop thread and back": us["base"]
        - m["base"]["decode_us"]
        - us["ptb"],
        "= the baseline (plain Application)": us["base"],
        "+ BotRunner without sessions (key checks, unit of work)": us["off"] - us["base"],
        "+ the session engine (the demo on a MemoryStorage)": us["memory"] - us["off"],
        "+ database calls: trips to the waiting thread and back, unit of work, storage code": (
            us["db"] - us["memory"] - db["sql"] - db["end"]
        ),
        "+ the SQL statements": db["sql"],
        "+ the commit": db["end"],
        "= sessions on the database": us["db"],
    }
    hotspots = top_functions(runners["db"], chats, count, next(ids))
    for runner in runners.values():
        runner.shutdown()
    return {"steps": steps, "statements": db["statements"] / count, "top": hotspots}


_REPO = str(Path(__file__).resolve().parents[1]) + "/"
# What a thread does while it waits for the other: not work of the update.
_WAITS = ("select.epoll", "of '_thread.lock' objects", "of '_thread.RLock' objects")


def top_functions(runner: Any, chats: int, count: int, first: int) -> dict[str, Any]:
    """cProfile the database bot on both of its threads; the most own time, per update."""
    work = updates.workload(count, chats, 99, first)
    caller, on_loop = cProfile.Profile(), cProfile.Profile()
    on_loop_thread(runner.loop, on_loop.enable)
    caller.enable()
    for data in work:
        runner.process(runner.decode(data))
    caller.disable()
    on_loop_thread(runner.loop, on_loop.disable)
    stats = pstats.Stats(caller, stream=io.StringIO())
    stats.add(on_loop)
    rows, waited = [], 0.0
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.split("site-packages/")[-1].removeprefix(_REPO)
        function = f"{where}:{line}({name})" if line else name
        if any(wait in function for wait in _WAITS):
            waited += own
        else:
            rows.append((own * 1e6 / count, cumulative * 1e6 / count, calls / count, function))
    rows.sort(reverse=True)
    return {
        "total_us": sum(row[0] for row in rows),
        "waiting_us": waited * 1e6 / count,
        "rows": [[f[:90], f"{own:.1f}", f"{cum:.1f}", f"{n:.1f}"] for own, cum, n, f in rows[:15]],
    }


def on_loop_thread(loop: asyncio.AbstractEventLoop, function: Any) -> None:
    """Call ``function`` on the thread that runs ``loop`` and wait for it."""
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (function(), done.set()))
    done.wait()
