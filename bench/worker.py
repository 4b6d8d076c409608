"""One measurement in a fresh process: ``python -m bench.worker`` reads a JSON spec on stdin.

Each measurement runs in its own process so that every variant is the demo project as
configured (bench.settings, one DATABASE_URL, one bot) with nothing left over from the
others, and so that the orchestrator (bench.run) can interleave variants. The worker
prints its result as one JSON line starting with ``RESULT_PREFIX``.

Modes: ``migrate``, ``fill`` (bulk-load filler sessions), ``pipeline`` (time updates
through decode + process), ``statements`` (count what each kind of update sends to the
database) and ``profile`` (see bench.profiling).
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
BOT_ID = 123456  # the id in bench.settings' token "123456:BENCH"


def setup_django(api_base_url: str) -> None:
    """Configure Django with bench.settings, the Bot API being the fake one at hand."""
    os.environ["TELEGRAM_API_BASE_URL"] = api_base_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    warnings.filterwarnings("ignore", module="telegram")


# The plain-Application variant (no sessions, not servable by the webhook), driven by
# bench.bots.PlainRunner.
PLAIN_BOT = "plain"


class Runner:
    """What a variant is driven through: ``process(decode(dict))``, as the webhook does.

    ``plain`` is the plain Application on a loop thread of its own, driven as
    ``BotRunner`` drives its application (the baseline); any other name is the
    ``BENCH_BOT`` application behind the demo's ``BotRunner``.
    """

    def __init__(self, bot: str) -> None:
        if bot == PLAIN_BOT:
            from .bots import PlainRunner, plain_application

            self._runner: Any = PlainRunner(plain_application())
        else:
            from botsessions.runner import runner_for

            if os.environ.get("BENCH_BOT", "sessions") != bot:
                raise RuntimeError(f"the worker for bot {bot!r} needs BENCH_BOT={bot}")
            self._runner = runner_for("default")
            self._runner.initialize()
        self.decode: Callable[[dict[str, Any]], Any] = self._runner.decode
        self.process: Callable[[Any], str] = self._runner.process

    def run(self, data: dict[str, Any]) -> str:
        return self.process(self.decode(data))

    def shutdown(self) -> None:
        self._runner.shutdown()


def measure(runner: Runner, updates: list[dict[str, Any]]) -> dict[str, Any]:
    """Time each update through decode + process; throughput, latencies and outcomes."""
    gc.collect()
    latencies: list[int] = []
    outcomes: Counter[str] = Counter()
    decode, process, clock = runner.decode, runner.process, time.perf_counter_ns
    started = clock()
    for data in updates:
        begin = clock()
        outcomes[process(decode(data))] += 1
        latencies.append(clock() - begin)
    elapsed = clock() - started
    latencies.sort()
    count = len(updates)
    return {
        "updates": count,
        "seconds": elapsed / 1e9,
        "per_update_us": elapsed / count / 1e3,
        "p50_us": latencies[count // 2] / 1e3,
        "p99_us": latencies[min(count - 1, (count * 99) // 100)] / 1e3,
        "outcomes": dict(outcomes),
    }


def pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up (one 🍕 per chat), then time the seeded workload."""
    from . import updates

    runner = Runner(spec["bot"])
    try:
        chats, first = spec["chats"], spec["first_update_id"]
        for data in updates.warmup(chats, first):
            runner.run(data)
        work = updates.workload(spec["updates"], chats, spec["seed"], first + chats)
        result = measure(runner, work)
        result["kinds"] = updates.kinds(work)
        if spec["bot"] == "sessions":
            result["rows"] = session_rows()
    finally:
        runner.shutdown()
    return result


# -- migrate and fill ------------------------------------------------------------------


def migrate(spec: dict[str, Any]) -> dict[str, Any]:
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    # Django's connection pool, when the demo's settings give the database one.
    return {"ok": True, "pool": connection.settings_dict.get("OPTIONS", {}).get("pool")}


def session_rows() -> int:
    from botsessions.models import Session

    return Session.objects.count()


def fill(spec: dict[str, Any]) -> dict[str, Any]:
    """Add filler sessions (other chats of the same bot) until ``rows`` rows are stored.

    SQLite gets one ``executemany`` in one transaction, PostgreSQL one
    ``INSERT … SELECT generate_series``; both are analyzed afterwards so that the planner
    knows the table's size.
    """
    from django.db import connection, transaction
    from django.utils import timezone

    from .updates import FILLER_BASE

    target = int(spec["rows"])
    started = time.perf_counter()
    missing = target - session_rows()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    if missing > 0 and connection.vendor == "sqlite":
        rows = (
            (
                BOT_ID,
                "chat" if i % 2 else "user",
                f"{'chat' if i % 2 else 'user'}:{FILLER_BASE + i // 2}",
                '{"pizza_count":3}' if i % 2 else '{"messages":7}',
                1,
                now,
                now,
            )
            for i in range(missing)
        )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO botsessions_session (bot_id, fragment, key, data, revision, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
    elif missing > 0:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO botsessions_session (bot_id, fragment, key, data, revision, "
                "created_at, updated_at) "
                "SELECT %s, CASE WHEN mod(i, 2) = 1 THEN 'chat' ELSE 'user' END, "
                "CASE WHEN mod(i, 2) = 1 THEN 'chat:' ELSE 'user:' END || (%s + i / 2), "
                "CASE WHEN mod(i, 2) = 1 THEN '{\"pizza_count\":3}'::jsonb "
                "ELSE '{\"messages\":7}'::jsonb END, 1, now(), now() "
                "FROM generate_series(0, %s - 1) AS i",
                [BOT_ID, FILLER_BASE, missing],
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {
        "rows": session_rows(),
        "added": max(missing, 0),
        "seconds": time.perf_counter() - started,
    }


# -- statements -------------------------------------------------------------------------


_WRITES_SESSION = re.compile(r'(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+[`"]?BOTSESSIONS_SESSION\b')
_RECORDS_UPDATE = re.compile(r'INSERT\s+INTO\s+[`"]?BOTSESSIONS_PROCESSEDUPDATE\b')
# The statements of botsessions.dblocks: PostgreSQL's advisory locks, MariaDB's named
# locks and lock wait, SQLite's write lock taken by a write that changes nothing.
_LOCKS = re.compile(
    r"PG_ADVISORY_XACT_LOCK|GET_LOCK|RELEASE_LOCK|INNODB_LOCK_WAIT_TIMEOUT|BUSY_TIMEOUT"
    r"|WHERE\s+1\s*=\s*0"
)
KINDS = ("read", "write", "mark", "lock", "txn", "other")


def classify(sql: str) -> str:
    """Sort a statement into read, write, mark (exactly-once record), lock, txn or other."""
    head = sql.lstrip().upper()
    if _LOCKS.search(head):
        return "lock"
    if head.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "END")):
        return "txn"
    if _WRITES_SESSION.search(head):
        return "write"
    if _RECORDS_UPDATE.search(head):
        return "mark"
    if head.startswith("SELECT"):
        return "read"
    return "other"


class DriverTrace:
    """Everything the driver sent, including the BEGIN/COMMIT Django's cursor does not run.

    SQLite reports each statement it runs through a trace callback; for PostgreSQL,
    libpq's protocol trace is read: every ``ReadyForQuery`` ends one round trip.
    """

    def __init__(self, trace_file: Any) -> None:
        from django.db import connection

        connection.ensure_connection()
        self.raw = connection.connection
        self.vendor = connection.vendor
        self.statements: list[str] = []
        self.round_trips = 0
        self._file = trace_file

    def start(self) -> None:
        self.statements, self.round_trips = [], 0
        if self.vendor == "sqlite":
            self.raw.set_trace_callback(self.statements.append)
        elif self.vendor == "postgresql":
            from psycopg import pq

            self.raw.pgconn.trace(self._file.fileno())
            self.raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def stop(self) -> None:
        if self.vendor == "sqlite":
            self.raw.set_trace_callback(None)
            self.round_trips = len(self.statements)
        elif self.vendor == "postgresql":
            self.raw.pgconn.untrace()
            self._file.seek(0)
            for line in self._file.read().decode("utf-8", "replace").splitlines():
                fields = line.split("\t")
                if len(fields) < 3:
                    continue
                if fields[0] == "B" and fields[2] == "ReadyForQuery":
                    self.round_trips += 1
                elif fields[0] == "F" and fields[2] in ("Query", "Parse"):
                    text = fields[3].strip() if len(fields) > 3 else ""
                    if fields[2] == "Parse":
                        text = text.removeprefix('"" ')
                    if len(text) > 1 and text[0] == text[-1] == '"':
                        text = text[1:-1]  # the trace quotes the statement
                    self.statements.append(text)


@contextmanager
def counting() -> Iterator[dict[str, Any]]:
    """Count what the update processed inside the block sent, on this thread's connection.

    ``BotRunner.process`` runs the update's database work on the calling thread, and
    every statement of the storage, of the key locks and of the handlers goes through
    Django's cursor: an ``execute_wrapper`` on this thread's connection sees each one,
    and sorts it. Django's cursor does not run COMMIT (nor PostgreSQL's BEGIN, which the
    driver sends by itself), so the driver's trace counts the transaction statements
    and the round trips, everything included; it also tells whether the driver ran any
    statement that the wrapper did not see.
    """
    from django.db import connection

    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    result: dict[str, Any] = {}
    with tempfile.TemporaryFile() as trace_file:
        trace = DriverTrace(trace_file)
        with connection.execute_wrapper(wrapper):
            trace.start()
            try:
                yield result
            finally:
                trace.stop()
    counts = Counter(classify(sql) for sql in seen)
    driver = Counter(classify(sql) for sql in trace.statements)
    result.update({kind: counts.get(kind, 0) for kind in KINDS if kind != "txn"})
    result["txn"] = driver.get("txn", 0)
    result["django"] = len(seen)
    result["round_trips"] = trace.round_trips
    # Statements the driver ran that Django's cursor did not (BEGIN/COMMIT apart).
    result["unseen"] = sum(driver.values()) - driver["txn"] - len(seen) + counts["txn"]
    result["sql"] = [" ".join(sql.split())[:160] for sql in trace.statements]


def statements(spec: dict[str, Any]) -> dict[str, Any]:
    """Process one update of each kind, counting what it sent; outcomes are checked."""
    from . import updates

    first = spec["first_update_id"]
    ids = iter(range(first, first + 1000))
    bot = spec["bot"]
    cases: list[dict[str, Any]] = []
    runner = Runner(bot)
    chat = updates.chat_id(spec["chats"] + 7)  # after the measured chats: new to the database

    def text(kind: str, target: int = chat) -> dict[str, Any]:
        return updates.message(target, next(ids), updates.TEXTS[kind])

    def case(name: str, data: dict[str, Any], expected: str) -> None:
        update = runner.decode(data)
        with counting() as counted:
            outcome = runner.process(update)
        counted.update(name=name, outcome=outcome, expected_outcome=expected)
        cases.append(counted)

    try:
        runner.run(text("pizza"))  # the chat's rows exist from here on
        if bot == "sessions":
            case("unmatched", updates.message(chat, next(ids), "edited", edited=True), "skipped")
            case("read_only", updates.message(chat, next(ids), "/hunger"), "unchanged")
            case("changed_1", text("text"), "committed")
            case("changed_2", text("pizza"), "committed")
            case("new_chat", text("text", updates.chat_id(spec["chats"] + 8)), "committed")
            again = text("text")
            runner.run(again)
            case("duplicate", again, "duplicate")
        elif bot == "lazy":
            case("lazy_untouched", updates.message(chat, next(ids), "/noop"), "unchanged")
            case("lazy_changed", text("text"), "committed")
        else:
            case("off", text("text"), "unchanged")
    finally:
        runner.shutdown()
    return {"cases": cases}


# -- entry point -------------------------------------------------------------------------

MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "migrate": migrate,
    "fill": fill,
    "pipeline": pipeline,
    "statements": statements,
}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    if spec.get("pin") is not None:
        # Before any thread starts: every thread of the worker inherits the one CPU.
        os.sched_setaffinity(0, {int(spec["pin"])})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fakebotapi import FakeBotAPI

    with FakeBotAPI() as api:
        setup_django(api.base_url)
        if spec["mode"] == "profile":
            from .profiling import profile

            result = profile(spec)
        else:
            result = MODES[spec["mode"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
