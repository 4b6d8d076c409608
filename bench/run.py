"""The benchmark: ``python -m bench.run [--quick] [options]`` (see bench/README.md).

It prints, side by side from one run, what sessions cost the demo bot:

1. the in-process pipeline (``Update.de_json`` + the webhook's processing path,
   ``BotRunner.process``) with sessions on SQLite and PostgreSQL against the same
   handlers without sessions in a plain Application, driven the same way (a loop on a
   thread of its own, each update handed over to it);
2. the statements each kind of update sends to the database, as Django's cursor and the
   driver see them;
3. the webhook over HTTP (uvicorn, gunicorn sync workers) with and without sessions;
4. the per-update cost with few and with a million stored sessions;

and, with ``--profile``, where the time of one update goes. Every measurement runs in
a fresh worker process (bench.worker); variants are interleaved, repetition after
repetition, so that noise from the machine falls on all of them alike, and medians are
reported next to the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import updates
from .worker import PLAIN_BOT, RESULT_PREFIX

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/botsessions_bench"


def bench_env() -> dict[str, str]:
    """This environment for a worker or server: the caller's Django, Telegram and bench
    settings left out, bench.settings and the repository put in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "TELEGRAM_", "BENCH_")) and key != "DATABASE_URL"
    }
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return env


@dataclass
class Target:
    """A goal, what was measured against it, and whether it was met."""

    name: str
    goal: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class Database:
    """A database the workers use, by its DATABASE_URL."""

    label: str
    vendor: str
    url: str
    #: Django's connection pool options, when the demo's settings give it one.
    pool: Any = None


@dataclass
class Options:
    reps: int
    updates: int
    chats: int
    http_updates: int
    http_reps: int
    http_clients: int
    http_workers: int
    http_servers: list[str]
    growth_rows: int
    growth_updates: int
    growth_reps: int
    pg_url: str | None
    sections: list[str]
    keep: bool
    seed: int
    quick: bool
    profile_updates: int = 2000
    pin: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 60 s)")
    parser.add_argument("--reps", type=int, help="repetitions of each in-process variant (5)")
    parser.add_argument("--updates", type=int, help="updates per in-process run (10000)")
    parser.add_argument("--chats", type=int, help="chats the updates are spread over (1000)")
    parser.add_argument("--http-updates", type=int, help="requests per HTTP run (2000)")
    parser.add_argument("--http-reps", type=int, help="repetitions of each HTTP run (3)")
    parser.add_argument("--http-clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument(
        "--http-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="gunicorn sync workers (nproc; uvicorn always runs one process)",
    )
    parser.add_argument(
        "--http-servers", default="uvicorn,gunicorn", help="comma-separated: uvicorn,gunicorn"
    )
    parser.add_argument("--growth-rows", type=int, help="stored sessions of the large run (1e6)")
    parser.add_argument("--growth-updates", type=int, help="updates per growth run (3000)")
    parser.add_argument("--growth-reps", type=int, help="repetitions of each growth run (3)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL database to (re)create (env BENCH_PG_URL)",
    )
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--only",
        default="inprocess,statements,http,growth",
        help="comma-separated sections: inprocess,statements,http,growth,profile",
    )
    parser.add_argument("--profile", action="store_true", help="also profile the SQLite path")
    parser.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="pin every in-process worker to this CPU (all its threads on one core)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--seed", type=int, default=20251121)
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: int | None, normal: int, smoke: int) -> int:
        return value if value is not None else (smoke if quick else normal)

    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.profile and "profile" not in sections:
        sections.append("profile")
    return Options(
        reps=pick(args.reps, 5, 1),
        updates=pick(args.updates, 10_000, 600),
        chats=pick(args.chats, 1_000, 100),
        http_updates=pick(args.http_updates, 2_000, 200),
        http_reps=pick(args.http_reps, 3, 1),
        http_clients=args.http_clients,
        http_workers=args.http_workers,
        http_servers=[s.strip() for s in args.http_servers.split(",") if s.strip()],
        growth_rows=pick(args.growth_rows, 1_000_000, 10_000),
        growth_updates=pick(args.growth_updates, 3_000, 300),
        growth_reps=pick(args.growth_reps, 3, 1),
        pg_url=None if args.no_pg else args.pg_url,
        sections=sections,
        keep=args.keep,
        seed=args.seed,
        quick=quick,
        profile_updates=500 if quick else 2_000,
        pin=args.pin,
    )


# -- output -------------------------------------------------------------------------------


def out(line: str = "") -> None:
    print(line, flush=True)


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> None:
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        out(indent + "  ".join(cells).rstrip())


def number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- machinery ----------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker process failed; its output says why."""


class Bench:
    """Runs the sections and collects the targets."""

    def __init__(self, options: Options, stack: ExitStack) -> None:
        self.options = options
        self.stack = stack
        self.targets: list[Target] = []
        self._next_update_id = 1
        self.tmp = Path(tempfile.mkdtemp(prefix="botsessions-bench-"))
        if not options.keep:
            stack.callback(shutil.rmtree, self.tmp, True)
        self.databases: dict[str, Database] = {}
        self.pg_version = ""

    def update_ids(self) -> int:
        """The first of a range of update ids no other worker uses (marks are unique)."""
        first = self._next_update_id
        self._next_update_id += 1_000_000_000  # a worker uses far fewer; bigint has room
        return first

    def worker(
        self, spec: dict[str, Any], database: Database | None, bot: str = "sessions"
    ) -> Any:
        """Run one measurement in a fresh process and return its result."""
        if self.options.pin is not None and spec.get("mode") in ("pipeline", "profile"):
            spec = {**spec, "pin": self.options.pin}
        env = bench_env()
        if bot != PLAIN_BOT:  # a plain application is not one the webhook could serve
            env["BENCH_BOT"] = bot
        if database is not None:
            env["DATABASE_URL"] = database.url
        done = subprocess.run(
            [sys.executable, "-m", "bench.worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=3600,
        )
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
        raise WorkerError(
            f"worker {spec.get('mode')} ({bot}, {database.label if database else 'no db'}) "
            f"failed with exit code {done.returncode}:\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-6000:]}"
        )

    # -- databases ----------------------------------------------------------------------

    def prepare_databases(self) -> None:
        """SQLite files in a temp dir; PostgreSQL databases (re)created; all migrated."""
        needs_growth = "growth" in self.options.sections
        sqlite = Database("SQLite", "sqlite", f"sqlite:///{self.tmp / 'bench.sqlite3'}")
        self.worker({"mode": "migrate"}, sqlite)
        self.databases["sqlite"] = sqlite
        if needs_growth:
            large = self.tmp / "growth.sqlite3"
            shutil.copyfile(self.tmp / "bench.sqlite3", large)
            self.databases["sqlite_large"] = Database("SQLite", "sqlite", f"sqlite:///{large}")
        if self.options.pg_url is None:
            return
        try:
            import psycopg

            admin = self._pg_admin_url(self.options.pg_url)
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                self.pg_version = str(row[0]) if row else "?"
        except Exception as exc:
            out(f"  PostgreSQL not reachable at {self.options.pg_url} ({exc}): skipped.")
            self.options.pg_url = None
            return
        pg = Database("PostgreSQL", "postgresql", self.options.pg_url)
        self._create_pg(pg.url)
        pg.pool = self.worker({"mode": "migrate"}, pg).get("pool")
        self.databases["pg"] = pg
        if needs_growth:
            large_url = self._renamed(pg.url, "_growth")
            self._create_pg(large_url, template=self._db_name(pg.url))
            self.databases["pg_large"] = Database("PostgreSQL", "postgresql", large_url)

    @staticmethod
    def _db_name(url: str) -> str:
        return urlsplit(url).path.lstrip("/")

    @staticmethod
    def _renamed(url: str, suffix: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=parts.path + suffix))

    @staticmethod
    def _pg_admin_url(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))

    def _create_pg(self, url: str, template: str | None = None) -> None:
        import psycopg
        from psycopg import sql

        name = self._db_name(url)
        with psycopg.connect(self._pg_admin_url(url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(create)
        if not self.options.keep:
            self.stack.callback(self._drop_pg, url)

    def _drop_pg(self, url: str) -> None:
        import psycopg
        from psycopg import sql

        name = self._db_name(url)
        with psycopg.connect(self._pg_admin_url(url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- header ---------------------------------------------------------------------------

    def header(self) -> None:
        import django
        import telegram

        o = self.options
        cpu = "?"
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        out(
            "botsessions benchmark"
            + ("  (--quick smoke run: figures are indicative)" if o.quick else "")
        )
        out(
            f"  machine: {os.cpu_count()} cores ({cpu}), {platform.system()} "
            f"{platform.release()}; load average at start {load}"
        )
        out(
            f"  Python {platform.python_version()}, Django {django.__version__}, "
            f"python-telegram-bot {telegram.__version__}, SQLite {sqlite3.sqlite_version}, "
            f"PostgreSQL {self.pg_version or 'not used'}"
        )
        out(
            f"  workload: {o.chats:,} private chats (1 chat + 1 user session each); mix "
            f"{updates.MIX_TEXT}"
        )
        out(
            "  each worker first sends one 🍕 per chat (not timed), so every session row "
            "exists; DEBUG off"
        )
        out(
            f"  repetitions: {o.reps} in-process, {o.http_reps} HTTP, {o.growth_reps} growth; "
            "interleaved; medians"
        )
        if o.pin is not None:
            out(f"  in-process workers pinned to CPU {o.pin} (--pin)")

    # -- 1. in-process --------------------------------------------------------------------

    BASELINE = "baseline: plain Application, loop thread"
    SQLITE = "sessions, SQLite (WAL file)"
    POSTGRES = "sessions, PostgreSQL"

    def inprocess(self) -> None:
        o = self.options
        out()
        out(f"1. In-process pipeline: {o.updates:,} updates per run, Update.de_json + process")
        out("   sessions: BotRunner.process, the webhook's path: the bot's loop runs on a thread")
        out("   of its own; the caller hands the update over and, while it waits, runs the")
        out("   update's database work (asgiref's CurrentThreadExecutor) in one transaction:")
        out("   key locks, one read with the exactly-once check, handlers, the writes and the")
        out("   record, commit.")
        out("   baseline: the same handlers counting into dicts in a plain PTB Application,")
        out("   driven the way BotRunner drives its application (a loop on its own thread, the")
        out("   update handed over with run_coroutine_threadsafe, the caller waiting in a")
        out("   CurrentThreadExecutor): the same thread hand-over, no unit of work, no sessions.")
        out("   sessions off: the session-free handlers through BotRunner.process (the HTTP")
        out("   baseline): the hand-over and the unit of work's transaction, no sessions.")
        variants: list[tuple[str, str, Database | None]] = [
            (self.BASELINE, PLAIN_BOT, None),
            ("sessions off, same BotRunner path", "off", None),
            (self.SQLITE, "sessions", self.databases["sqlite"]),
        ]
        if "pg" in self.databases:
            variants.append((self.POSTGRES, "sessions", self.databases["pg"]))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
        for rep in range(o.reps):
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for name, bot, database in order:
                spec = {
                    "mode": "pipeline",
                    "bot": bot,
                    "chats": o.chats,
                    "updates": o.updates,
                    "seed": o.seed + rep,
                    "first_update_id": self.update_ids(),
                }
                results[name].append(self.worker(spec, database or self.databases["sqlite"], bot))
            out(f"   repetition {rep + 1}/{o.reps} done")

        def rate(name: str) -> float:
            return median([r["updates"] / r["seconds"] for r in results[name]])

        baseline = rate(self.BASELINE)
        rows = []
        for name, bot, _ in variants:
            runs = results[name]
            per_second = rate(name)
            rows.append(
                [
                    name,
                    number(per_second),
                    number(median([r["per_update_us"] for r in runs])),
                    number(median([r["p50_us"] for r in runs])),
                    number(median([r["p99_us"] for r in runs])),
                    f"{per_second / baseline:.2f}",
                    " ".join(number(r["updates"] / r["seconds"]) for r in runs),
                ]
            )
            if bot == "sessions":
                self._check_outcomes(name, runs)
        table(
            ["variant", "updates/s", "µs/update", "p50 µs", "p99 µs", "ratio", "runs (updates/s)"],
            rows,
        )
        sqlite_ratio = rate(self.SQLITE) / baseline
        self.targets.append(
            Target(
                "in-process ratio, SQLite (vs plain Application)",
                "≥ 0.60",
                f"{sqlite_ratio:.2f}",
                sqlite_ratio >= 0.6,
            )
        )
        if self.POSTGRES in results:
            out(f"   PostgreSQL ratio {rate(self.POSTGRES) / baseline:.2f} (no target; reported)")

    def _check_outcomes(self, name: str, runs: list[dict[str, Any]]) -> None:
        """Each run must have committed every text update and skipped every edit."""
        for run in runs:
            kinds, outcomes = run["kinds"], run["outcomes"]
            expected = {"committed": kinds["text"] + kinds["pizza"], "skipped": kinds["edited"]}
            if outcomes != expected:
                out(f"   !! {name}: outcomes {outcomes}, expected {expected}")

    # -- 2. statements --------------------------------------------------------------------

    CASES: tuple[tuple[str, str, str], ...] = (
        ("unmatched", "no handler matched (edited message)", "0 statements, 0 round trips"),
        ("read_only", "session read, unchanged (/hunger)", "1 statement: the read (1 trip)"),
        (
            "changed_1",
            "session changed, 1 fragment (text)",
            "1 read, 1 write, ≤1 mark; BEGIN, COMMIT",
        ),
        ("changed_2", "2 fragments changed (🍕 text)", "(informational)"),
        ("new_chat", "first message of a new chat", "(INSERT instead of UPDATE)"),
        ("duplicate", "redelivered update (already committed)", "(informational)"),
        ("lazy_untouched", "lazy session never touched (/noop)", "(informational)"),
        ("lazy_changed", "lazy session awaited and changed", "(informational)"),
        ("off", "sessions off: BotRunner's unit of work alone", "(informational)"),
    )

    def statements(self) -> None:
        out()
        out("2. Statements per update, on the path BotRunner.process takes. Every statement goes")
        out("   through Django's cursor: an execute_wrapper counts and sorts them. r/w/mark:")
        out("   statements reading sessions (or the exactly-once record), writing sessions,")
        out("   inserting the exactly-once record; lock: taking the session keys' locks")
        out("   (botsessions.dblocks; none on SQLite, whose IMMEDIATE transaction takes the write")
        out("   lock as it begins). txn: BEGIN and COMMIT/ROLLBACK, from the driver's own trace")
        out("   (SQLite's trace callback, libpq's protocol trace), since Django's cursor does not")
        out("   run COMMIT, nor PostgreSQL's BEGIN; (n): everything the driver ran (SQLite), or")
        out("   its round trips to the server (PostgreSQL). django: what Django's cursor ran,")
        out("   what a query logger sees (on SQLite, BEGIN IMMEDIATE included).")
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for key in ("sqlite", "pg"):
            database = self.databases.get(key)
            if database is None:
                continue
            cases: dict[str, dict[str, Any]] = {}
            for bot in ("sessions", "lazy", "off"):
                spec = {"mode": "statements", "bot": bot, "chats": self.options.chats}
                spec["first_update_id"] = self.update_ids()
                for case in self.worker(spec, database, bot)["cases"]:
                    cases[case["name"]] = case
            found[database.label] = cases
        labels = list(found)
        headers = ["case"]
        for label in labels:
            headers += [f"{label}: r/w/mark lock txn (n)", "django"]
        headers += ["target", ""]
        rows = []
        for key, title, goal in self.CASES:
            cells = []
            verdicts = []
            for label in labels:
                run = found[label][key]
                cell = f"{self._rwm(run)} {run['lock']} {run['txn']} ({run['round_trips']})"
                if run["other"]:
                    cell += f" +{run['other']} other"
                if run["unseen"]:
                    cell += f" ({run['unseen']} not seen by Django!)"
                if run["outcome"] != run["expected_outcome"]:
                    cell += f" ({run['outcome']}!)"
                cells += [cell, str(run["django"])]
                verdict = self._statement_verdict(key, run)
                if verdict is not None:
                    verdicts.append(verdict)
            passed = all(verdicts) if verdicts else None
            rows.append(
                [title, *cells, goal, "" if passed is None else ("PASS" if passed else "FAIL")]
            )
            if passed is not None:
                measured = "; ".join(
                    f"{label} {self._rwm(found[label][key])}, lock {found[label][key]['lock']}, "
                    f"txn {found[label][key]['txn']} ({found[label][key]['round_trips']})"
                    for label in labels
                )
                self.targets.append(Target(f"statements: {title}", goal, measured, passed))
        table(headers, rows)
        for label in labels:
            out(f"   {label}, session changed (1 fragment), as the driver ran it:")
            for sql in found[label]["changed_1"]["sql"]:
                out(f"     {sql[:150]}")

    @staticmethod
    def _rwm(run: dict[str, Any]) -> str:
        """reads/writes/marks."""
        return f"{run['read']}/{run['write']}/{run['mark']}"

    @staticmethod
    def _statement_verdict(key: str, run: dict[str, Any]) -> bool | None:
        """The targets, on the complete counts: the round trips include BEGIN, COMMIT and
        the key locks; for a change, the locks and any savepoint count beyond the goal."""
        if run["unseen"] or run["outcome"] != run["expected_outcome"]:
            return False
        if key == "unmatched":
            return run["round_trips"] == 0
        if key == "read_only":
            return run["read"] == 1 and run["round_trips"] == 1
        if key == "changed_1":
            return (
                run["read"] == 1
                and run["write"] == 1
                and run["mark"] <= 1
                and run["txn"] <= 2
                and not run["lock"]
                and not run["other"]
            )
        return None

    # -- 3. HTTP --------------------------------------------------------------------------

    def http(self) -> None:
        from tests.fakebotapi import FakeBotAPI

        from .load import post_all
        from .servers import WEBHOOK_PATH, Server

        o = self.options
        database = self.databases.get("pg")
        out()
        if database is None:
            out("3. HTTP: skipped (needs PostgreSQL)")
            return
        out(
            f"3. HTTP webhook on PostgreSQL: {o.http_clients} concurrent clients, "
            f"{o.http_updates:,} updates per run over {o.chats:,} chats"
        )
        out("   Both servers run the demo's code: 'off' serves the session-free handlers behind")
        out("   the same webhook views and runner, where each update is still a unit of work with")
        out("   a transaction, sessions or not. uvicorn: one process serving botproject.asgi and")
        out("   the webhook view the demo mounts there (with --workers N it loses TCP_NODELAY and")
        out("   each keep-alive request waits ~40 ms for a delayed ACK, uvicorn issue #3149).")
        out("   gunicorn: sync workers serving botproject.wsgi, one per core; they close the")
        out("   HTTP connection after each response.")
        if database.pool:
            out("   Database connections: Django's pool in every server process, as the demo's")
            out(f"   settings configure it ({database.pool}; CONN_MAX_AGE=0: a request")
            out("   borrows a connection and gives it back).")
        else:
            out("   Database connections: uvicorn opens one per request as Django advises under")
            out("   ASGI (CONN_MAX_AGE=0; no pool configured), which 'off' pays for too;")
            out("   gunicorn's workers keep theirs (CONN_MAX_AGE=600).")
        api = self.stack.enter_context(FakeBotAPI())
        rows = []
        for kind in o.http_servers:
            workers, conn_max_age = (1, "0") if kind == "uvicorn" else (o.http_workers, "600")
            title = f"{kind}, {workers} process{'es' if workers > 1 else ''}"
            servers = {}
            with ExitStack() as running:
                for bot in ("off", "sessions"):
                    env = self._server_env(database, api.base_url, bot, conn_max_age)
                    servers[bot] = running.enter_context(Server(kind, env, workers))
                for server in servers.values():
                    warm = updates.warmup(min(o.chats, 50 if o.quick else 200), self.update_ids())
                    post_all(server.port, WEBHOOK_PATH, "bench-secret", warm, o.http_clients)
                results: dict[str, list[dict[str, Any]]] = {"off": [], "sessions": []}
                for rep in range(o.http_reps):
                    order = ["off", "sessions"] if rep % 2 == 0 else ["sessions", "off"]
                    for bot in order:
                        work = updates.workload(
                            o.http_updates, o.chats, o.seed + rep, self.update_ids()
                        )
                        server = servers[bot]
                        result = post_all(
                            server.port, WEBHOOK_PATH, "bench-secret", work, o.http_clients
                        )
                        summary = result.summary()
                        results[bot].append(summary)
                        if summary["statuses"] != {200: len(work)}:
                            out(f"   !! {kind} {bot}: answers {summary['statuses']}")
            off = median([r["per_second"] for r in results["off"]])
            for bot in ("off", "sessions"):
                runs = results[bot]
                per_second = median([r["per_second"] for r in runs])
                rows.append(
                    [
                        f"{title}, sessions {bot if bot == 'off' else 'on'}",
                        number(per_second),
                        number(median([r["p50_us"] for r in runs]) / 1e3, 1),
                        number(median([r["p99_us"] for r in runs]) / 1e3, 1),
                        f"{per_second / off:.2f}",
                        " ".join(number(r["per_second"]) for r in runs),
                    ]
                )
            on = results["sessions"]
            ratio = median([r["per_second"] for r in on]) / off
            p50 = median([r["p50_us"] for r in on])
            p99 = median([r["p99_us"] for r in on])
            self.targets.append(
                Target(
                    f"HTTP {kind}: ratio, p99 vs p50 (sessions on)",
                    "ratio ≥ 0.70, p99 < 3× p50",
                    f"{ratio:.2f}, p99 = {p99 / p50:.1f}× p50",
                    ratio >= 0.7 and p99 < 3 * p50,
                )
            )
        table(["server", "updates/s", "p50 ms", "p99 ms", "ratio", "runs (updates/s)"], rows)

    def _server_env(
        self, database: Database, api: str, bot: str, conn_max_age: str
    ) -> dict[str, str]:
        env = bench_env()
        env.update(
            DATABASE_URL=database.url,
            TELEGRAM_API_BASE_URL=api,
            BENCH_BOT=bot,
            BENCH_CONN_MAX_AGE=conn_max_age,
        )
        return env

    # -- 4. growth ------------------------------------------------------------------------

    def growth(self) -> None:
        o = self.options
        out()
        out(
            f"4. Growth: per-update cost with the measured chats only vs {o.growth_rows:,} "
            f"stored sessions ({o.growth_updates:,} updates per run, in-process, sessions on)"
        )
        pairs = [("sqlite", "sqlite_large")]
        if "pg_large" in self.databases:
            pairs.append(("pg", "pg_large"))
        rows = []
        for small_key, large_key in pairs:
            small, large = self.databases[small_key], self.databases[large_key]
            filled = self.worker({"mode": "fill", "rows": o.growth_rows}, large)
            out(
                f"   {large.label}: loaded {filled['added']:,} filler sessions in "
                f"{filled['seconds']:.1f} s ({filled['rows']:,} stored)"
            )
            timings: dict[str, list[float]] = {"small": [], "large": []}
            stored: dict[str, int] = {}
            for rep in range(o.growth_reps):
                order = [("small", small), ("large", large)]
                if rep % 2:
                    order.reverse()
                for which, database in order:
                    spec = {
                        "mode": "pipeline",
                        "bot": "sessions",
                        "chats": o.chats,
                        "updates": o.growth_updates,
                        "seed": o.seed + 100 + rep,
                        "first_update_id": self.update_ids(),
                    }
                    result = self.worker(spec, database)
                    timings[which].append(result["per_update_us"])
                    stored[which] = result["rows"]
            small_us, large_us = median(timings["small"]), median(timings["large"])
            ratio = large_us / small_us
            rows.append(
                [
                    small.label,
                    f"{stored['small']:,}",
                    number(small_us),
                    f"{stored['large']:,}",
                    number(large_us),
                    f"{ratio:.2f}",
                ]
            )
            self.targets.append(
                Target(
                    f"growth {small.label}: {stored['large']:,} vs {stored['small']:,} rows",
                    "≤ 1.20× per-update cost",
                    f"{ratio:.2f}×",
                    ratio <= 1.2,
                )
            )
        table(
            ["database", "rows (small)", "µs/update", "rows (large)", "µs/update", "ratio"], rows
        )

    # -- profile --------------------------------------------------------------------------

    def profile(self) -> None:
        out()
        out("5. Profile of the session path on SQLite (one worker process)")
        spec = {
            "mode": "profile",
            "chats": self.options.chats,
            "updates": self.options.profile_updates,
            "rounds": 1 if self.options.quick else 3,
            "repeat": 500 if self.options.quick else 2000,
            "first_update_id": self.update_ids(),
        }
        result = self.worker(spec, self.databases["sqlite"])
        out("   components, each timed alone (µs per call, best of 3):")
        for name, value in result["components"].items():
            out(f"     {value:8.1f}  {name}")
        measured = result["variants"]
        plain = next(iter(measured.values()))["per_update_us"]
        out("   pipeline variants in this one process, interleaved, medians")
        out("   (ratio: the first row's µs/update over the row's, i.e. throughput against it):")
        table(
            ["variant", "µs/update", "p50 µs", "p99 µs", "ratio", "what it is"],
            [
                [
                    name,
                    number(run["per_update_us"]),
                    number(run["p50_us"]),
                    number(run["p99_us"]),
                    f"{plain / run['per_update_us']:.2f}",
                    run["what"],
                ]
                for name, run in measured.items()
            ],
            indent="     ",
        )
        profile = result["profile"]
        out(
            f"   cProfile, SQLite sessions through BotRunner, {self.options.profile_updates:,} "
            f"updates, one profiler on each thread: {profile['profiled_us_per_update']:.0f} "
            "µs/update while profiled"
        )
        threads = (
            ("caller", "the caller's thread (decoding, the database work while it waits)"),
            ("loop", "the bot's loop thread (PTB, the session engine)"),
        )
        for thread, title in threads:
            out(f"   own time by category, {title}, profiled µs/update:")
            for name, value in profile["categories"][thread].items():
                if value >= 1:
                    out(f"     {value:8.1f}  {name}")
        unprofiled = measured[result["sqlite_variant"]]["per_update_us"]
        scale = unprofiled / profile["profiled_us_per_update"]
        out(
            "   by layer: cumulative profiled µs/update, and scaled to the unprofiled "
            f"{unprofiled:.0f} µs/update (a profiler slows small calls"
        )
        out("   most, so the scaled figures are estimates). A coroutine counts only while it runs")
        out("   on the loop: its database work shows on the caller's thread.")
        table(
            ["layer", "thread", "profiled µs", "≈ µs"],
            [
                [label, thread, number(value, 1), number(value * scale)]
                for thread, label, value in profile["layers"]
                if value is not None
            ],
            indent="     ",
        )
        unused = [label.strip() for _, label, value in profile["layers"] if value is None]
        if unused:
            out(f"   not called on this path: {'; '.join(unused)}")
        for thread, title in threads:
            self._top(f"top functions, {title}", profile["top"][thread])
        storage = result["storage"]
        out("   a unit's database work alone on one thread (UnitOfWork.begin, load_sync with the")
        out(
            "   keys locked, commit_sync, UnitOfWork.end), cProfile: "
            f"{storage['profiled_us_per_update']:.0f} µs per update while profiled"
        )
        for name, value in storage["categories"].items():
            if value >= 1:
                out(f"     {value:8.1f}  {name}")
        self._top("database work: top functions", storage["top"])

    @staticmethod
    def _top(title: str, rows: list[list[Any]]) -> None:
        out(f"   {title} (own µs, cumulative µs, calls per update)")
        for name, own, cumulative, calls in rows:
            out(f"     {own:8.1f} {cumulative:8.1f} {calls:5.1f}  {name[:110]}")

    # -- summary --------------------------------------------------------------------------

    def summary(self, started: float) -> None:
        out()
        out("Targets")
        table(
            ["target", "goal", "measured", ""],
            [[t.name, t.goal, t.measured, t.verdict] for t in self.targets],
        )
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        out()
        out(f"total {time.perf_counter() - started:.0f} s; load average at the end {load}")


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "inprocess": Bench.inprocess,
    "statements": Bench.statements,
    "http": Bench.http,
    "growth": Bench.growth,
    "profile": Bench.profile,
}


@contextmanager
def running(options: Options) -> Iterator[Bench]:
    with ExitStack() as stack:
        yield Bench(options, stack)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    unknown = [s for s in options.sections if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    started = time.perf_counter()
    with running(options) as bench:
        bench.prepare_databases()
        bench.header()
        for name in SECTIONS:
            if name in options.sections:
                section_started = time.perf_counter()
                SECTIONS[name](bench)
                out(f"   ({name}: {time.perf_counter() - section_started:.0f} s)")
        bench.summary(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
