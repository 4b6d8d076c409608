"""The benchmark: ``python -m bench.run [--quick] [--profile] [--explore]`` (bench/README.md).

It measures what sessions cost the demo bot against the project's targets: in-process
against a plain PTB Application, the statements each kind of update sends, the webhook
over HTTP on PostgreSQL under the recommended deployments, and the per-update cost with
a million stored sessions. Variants run side by side, interleaved repetition after
repetition; a ratio is the median of the repetitions' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import updates
from .worker import ANSWER, PLAIN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/botsessions_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
REDIS = "redis"  # BENCH_BOT of the demo with its sessions in Redis (bench.settings)
PTB = "ptb"  # BENCH_BOT of the demo's handlers on chat_data/user_data (DjangoPersistence)
Runs = list[dict[str, Any]]


@dataclass(frozen=True)
class Deployment:
    """A way to serve the demo with gunicorn (the README's "Deployment")."""

    name: str
    worker_class: str
    workers: int
    threads: int = 1
    server: str = "gunicorn"  # or "uvicorn" (its own CLI; worker_class unused)


UVICORN_WORKER = "uvicorn.workers.UvicornWorker"
# The README's recommendations, and the plain deployment the targets compare with.
WSGI = Deployment("WSGI: gthread, 2 workers × 8 threads", "gthread", 2, 8)
ASGI = Deployment("ASGI: UvicornWorker, 2 workers", UVICORN_WORKER, 2)
PLAIN_SYNC = Deployment("gunicorn, 2 sync workers", "sync", 2)
# Telegram's max_connections, as recommended: the concurrent clients.
MAX_CONNECTIONS = 16
# What --explore compares, each with and without sessions.
CANDIDATES = [
    PLAIN_SYNC,
    Deployment("sync, 4 workers", "sync", 4),
    Deployment("sync, 8 workers", "sync", 8),
    Deployment("gthread, 2 × 4", "gthread", 2, 4),
    WSGI,
    Deployment("gthread, 2 × 16", "gthread", 2, 16),
    Deployment("gthread, 4 × 4", "gthread", 4, 4),
    ASGI,
    Deployment("UvicornWorker, 4 workers", UVICORN_WORKER, 4),
    Deployment("uvicorn --workers 2", "", 2, server="uvicorn"),
]
SIZES = {  # full run, --quick
    "reps": (5, 2),
    "updates": (10_000, 1_000),  # per in-process run
    "chats": (1_000, 200),
    "http_updates": (2_000, 300),
    "growth_rows": (1_000_000, 20_000),
    "growth_chats": (500, 100),
    "growth_updates": (2_000, 300),
    "profile_updates": (2_000, 300),
    "profile_rounds": (3, 1),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run, about a minute")
    parser.add_argument("--profile", action="store_true", help="add where the time goes")
    parser.add_argument("--explore", action="store_true", help="only compare deployments")
    parser.add_argument("--only", help="sections: inprocess,statements,http,growth,profile")
    parser.add_argument("--reps", type=int, help="interleaved repetitions (5; --quick 2)")
    parser.add_argument("--clients", type=int, default=MAX_CONNECTIONS, help="HTTP clients")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis rows")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args(argv)
    reps = args.reps
    for name, sizes in SIZES.items():
        setattr(args, name, sizes[args.quick])
    args.reps = reps or args.reps
    sections = ["inprocess", "statements", "http", "growth"] + ["profile"] * args.profile
    args.sections = (
        args.only.split(",") if args.only else ["explore"] if args.explore else sections
    )
    return args


def out(line: str = "") -> None:
    print(line, flush=True)


def table(rows: list[list[Any]], indent: str = "   ") -> None:
    """The first row is the header; the first column is left-aligned, the others right."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        line = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]  # noqa: B905
        out(indent + "  ".join(line).rstrip())


def ratio(runs: Runs, against: Runs, key: str = "per_second") -> float:
    """The median of the repetitions' ratios (higher is better for ``key``)."""
    return median(run[key] / other[key] for run, other in zip(runs, against, strict=True))


def group(leader: int) -> list[int]:
    """The processes of ``leader``'s process group (a server and its workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == leader:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user and system) the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def bench_env(**extra: str) -> dict[str, str]:
    """A worker's or server's environment: bench.settings, none of the caller's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "TELEGRAM_", "BENCH_")) and key != "DATABASE_URL"
    }
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, "DJANGO_SETTINGS_MODULE": "bench.settings", "PYTHONPATH": path, **extra}


class Worker:
    """A bench.worker process measuring one bot on one database, kept between commands."""

    def __init__(self, stack: ExitStack, bot: str, database_url: str, redis_url: str = "") -> None:
        self.errors = stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        env = bench_env(BENCH_BOT=bot, DATABASE_URL=database_url, BENCH_REDIS_URL=redis_url)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            cwd=REPO,
            env=env,
        )
        stack.callback(self.close)

    def __call__(self, command: str, **arguments: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"command": command, **arguments}) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(ANSWER):
                return json.loads(line.removeprefix(ANSWER))
        self.errors.seek(0)
        raise RuntimeError(f"bench.worker failed on {command}:\n{self.errors.read()[-5000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(60)


class Bench:
    def __init__(self, options: argparse.Namespace, stack: ExitStack) -> None:
        self.o = options
        self.stack = stack
        self.targets: list[list[str]] = []
        self.databases: dict[str, str] = {}
        self.pg_version = "not used"
        self._next_id = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="botsessions-bench-"))
        stack.callback(shutil.rmtree, self.tmp, True)

    def ids(self) -> int:
        """The first of a range of update ids that no other run uses."""
        self._next_id += 100_000_000
        return self._next_id

    def worker(self, bot: str, database: str) -> Worker:
        return Worker(self.stack, bot, self.databases[database], self.o.redis_url)

    @cached_property
    def redis(self) -> bool:
        """Whether the Redis rows run: Redis reachable and not turned off; its bench
        keys are deleted now and at the end."""
        if self.o.no_redis:
            return False
        import redis

        client = redis.Redis.from_url(self.o.redis_url, socket_connect_timeout=2)
        try:
            client.ping()
        except redis.RedisError as exc:
            out(f"   (Redis rows skipped: {self.o.redis_url} unreachable: {exc})")
            return False

        def forget() -> None:
            names = list(client.scan_iter(match="botsessions-bench:*", count=1000))
            for start in range(0, len(names), 1000):
                client.delete(*names[start : start + 1000])

        forget()
        self.stack.callback(forget)
        return True

    def target(self, measure: str, goal: str, measured: str, met: bool | None) -> None:
        verdict = "printed" if met is None else "met" if met else "NOT MET"
        self.targets.append([measure, goal, measured, verdict])

    def interleave(
        self, variants: dict[str, Any], run: Callable[[Any, int], Any]
    ) -> dict[str, Runs]:
        """``run(variant, repetition)`` for every variant, repetition after repetition, each
        repetition starting with the next variant."""
        names = list(variants)
        runs: dict[str, Runs] = {name: [] for name in names}
        for rep in range(self.o.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(run(variants[name], rep))
        return runs

    def run_updates(self, chats: int, count: int) -> Callable[[Worker, int], Any]:
        def run(worker: Worker, rep: int) -> Any:
            result = worker("run", count=count, chats=chats, seed=rep, first_update_id=self.ids())
            return {**result, "per_second": 1e6 / result["per_update_us"]}

        return run

    # -- databases ---------------------------------------------------------------------

    def prepare_databases(self) -> None:
        """SQLite files and PostgreSQL databases, migrated, with two copies for growth."""
        sqlite = self.tmp / "bench.sqlite3"
        with ExitStack() as stack:  # closed before copying: the WAL is checkpointed
            Worker(stack, "sessions", f"sqlite:///{sqlite}")("migrate")
        self.databases["sqlite"] = f"sqlite:///{sqlite}"
        for name in ("_small", "_large"):
            shutil.copyfile(sqlite, self.tmp / f"bench{name}.sqlite3")
            self.databases[f"sqlite{name}"] = f"sqlite:///{self.tmp / f'bench{name}.sqlite3'}"
        if self.o.no_pg:
            return
        try:
            self.pg_version = self.pg(self.o.pg_url, "SHOW server_version")
        except Exception as exc:
            out(f"PostgreSQL not reachable at {self.o.pg_url} ({exc}): its parts are skipped.")
            return
        for name in ("", "_small", "_large"):
            self.databases[f"pg{name}"] = self.create_pg(name, template=bool(name))
            if not name:
                with ExitStack() as stack:
                    Worker(stack, "sessions", self.databases["pg"])("migrate")

    def pg(self, url: str, statement: str) -> Any:
        import psycopg

        admin = urlunsplit(urlsplit(url)._replace(scheme="postgresql", path="/postgres"))
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            return cursor.fetchone()[0] if cursor.description else None  # type: ignore[index]

    def create_pg(self, suffix: str, template: bool) -> str:
        parts = urlsplit(self.o.pg_url)
        source = parts.path.lstrip("/")
        drop = f'DROP DATABASE IF EXISTS "{source}{suffix}" WITH (FORCE)'
        self.pg(self.o.pg_url, drop)
        self.pg(
            self.o.pg_url,
            f'CREATE DATABASE "{source}{suffix}"' + f' TEMPLATE "{source}"' * template,
        )
        if not self.o.keep:
            self.stack.callback(self.pg, self.o.pg_url, drop)
        return urlunsplit(parts._replace(path=f"/{source}{suffix}"))

    # -- sections ----------------------------------------------------------------------

    def header(self) -> None:
        import django
        import telegram

        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":")[1].strip() for line in info if "model name" in line), "?")
        out(
            "botsessions benchmark" + "  (--quick: a smoke run, figures indicative)" * self.o.quick
        )
        out(
            f"   {os.cpu_count()} cores ({cpu}); Python {platform.python_version()}, Django "
            f"{django.__version__}, PTB {telegram.__version__}, SQLite {sqlite3.sqlite_version}, "
            f"PostgreSQL {self.pg_version}; load average {os.getloadavg()[0]:.2f}"
        )
        out(f"   updates: {updates.MIX_TEXT}; {self.o.reps} interleaved repetitions, medians")

    def inprocess(self) -> None:
        o = self.o
        out(f"""
1. In-process on SQLite (and beside it Redis and PostgreSQL): {o.updates:,} updates per run
   over {o.chats:,} chats, each decoded and processed while the caller's thread waits for the
   bot's loop thread""")
        workers = {
            "baseline: plain Application, handed over": self.worker(PLAIN, "sqlite"),
            "sessions: the demo, BotRunner.process": self.worker("sessions", "sqlite"),
        }
        workers["chat_data/user_data: DjangoPersistence"] = self.worker(PTB, "sqlite")
        if self.redis:
            workers["sessions in Redis: the same"] = self.worker(REDIS, "sqlite")
            if "pg" in self.databases:  # Redis's target is PostgreSQL's ratio
                workers["sessions on PostgreSQL: the same"] = self.worker("sessions", "pg")
        for worker in workers.values():
            worker("warmup", chats=o.chats, first_update_id=self.ids())
        runs = self.interleave(workers, self.run_updates(o.chats, o.updates))
        self.table(runs, {"µs/update": "per_update_us", "p50 µs": "p50_us", "p99 µs": "p99_us"})
        base, sessions, in_ptb_state, *in_redis = runs.values()
        on = ratio(sessions, base)
        self.target("in-process, SQLite: sessions vs plain", "≥ 0.60×", f"{on:.2f}×", on >= 0.6)
        measured = ratio(in_ptb_state, base)
        self.target(
            "in-process, SQLite: chat_data/user_data vs plain", f"sessions' {on:.2f}×",
            f"{measured:.2f}×", None,
        )  # fmt: skip
        if len(in_redis) == 2:
            measured, pg = ratio(in_redis[0], base), ratio(in_redis[1], base)
            self.target(
                "in-process, Redis: sessions vs plain", f"≥ PostgreSQL's {pg:.2f}×",
                f"{measured:.2f}× (SQLite's {on:.2f}×)", measured >= pg,
            )  # fmt: skip

    def table(self, runs: dict[str, Runs], columns: dict[str, str], digits: int = 0) -> None:
        """Medians of ``columns`` (heading: key) after updates/s, then each run's updates/s."""
        rows = [["", "updates/s", *columns, "runs (updates/s)"]]
        for name, results in runs.items():
            values = [median(r[key] for r in results) for key in ["per_second", *columns.values()]]
            cells = [f"{value:,.{digits}f}" for value in values[1:]]
            runs_text = " ".join(f"{r['per_second']:,.0f}" for r in results)
            rows.append([name, f"{values[0]:,.0f}", *cells, runs_text])
        table(rows)

    def statements(self) -> None:
        out("""
2. Statements per update as Django's cursor ran them, on BotRunner.process's path, with the
   COMMIT (and psycopg's BEGIN); lock: the keys' locks; read: the sessions and the
   exactly-once record in one SELECT; record: the exactly-once record""")
        found = {}
        for database, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
            if database in self.databases:
                with ExitStack() as stack:
                    worker = Worker(stack, "sessions", self.databases[database])
                    found[label] = worker(
                        "statements", chats=self.o.chats, first_update_id=self.ids()
                    )
        cases = list(next(iter(found.values())))
        rows = [["update", *found]]
        for case in cases:
            rows.append([case, *[" ".join(c[case]["log"]) or "none" for c in found.values()]])
        table(rows)
        changed = ", ".join(f"{label} {len(c[cases[2]]['log'])}" for label, c in found.items())
        self.target("statements, one fragment changed", "printed", changed, None)

    def http(self, deployments: list[tuple[Deployment, str]]) -> list[Runs]:
        """Serve each (deployment, bot) on PostgreSQL and load them all, interleaved."""
        from tests.fakebotapi import FakeBotAPI
        from tests.servers import start_server

        from .load import post_all

        o = self.o
        api = self.stack.enter_context(FakeBotAPI())
        servers = {}
        for deployment, bot in deployments:
            env = bench_env(
                DATABASE_URL=self.databases["pg"],
                TELEGRAM_API_BASE_URL=api.base_url,
                BENCH_BOT=bot,
                BENCH_REDIS_URL=o.redis_url,
            )
            server = start_server(
                deployment.server, env, workers=deployment.workers, quiet=True, timeout=60,
                worker_class=deployment.worker_class or "sync", threads=deployment.threads,
            )  # fmt: skip
            self.stack.callback(server.stop)
            label = {"sessions": "on", REDIS: "in Redis"}.get(bot, "off")
            servers[f"{deployment.name}, sessions {label}"] = server
            post_all(server.port, updates.warmup(o.chats, self.ids()), o.clients)

        name = urlsplit(self.databases["pg"]).path.lstrip("/")
        backends = f"SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = '{name}'"

        def load(server: Any, rep: int) -> dict[str, Any]:
            work = updates.workload(o.http_updates, o.chats, rep, self.ids())
            pids = (self.pg(self.o.pg_url, backends) or [], group(server.pid))
            before = [cpu_seconds(some) for some in pids]
            result = post_all(server.port, work, o.clients)
            if result["statuses"] != {200: len(work)}:
                out(f"   !! answers {result['statuses']}")
            for key, some, started in zip(("pg_cpu", "server_cpu"), pids, before, strict=True):
                result[key] = (cpu_seconds(some) - started) / len(work) * 1e3
            return result

        runs = self.interleave(servers, load)
        columns = {"p50 ms": "p50_ms", "p99 ms": "p99_ms"}
        self.table(runs, {**columns, "CPU ms: server": "server_cpu", "PostgreSQL": "pg_cpu"}, 2)
        for server in servers.values():
            server.stop()
        return list(runs.values())

    def http_intro(self) -> bool:
        o = self.o
        if "pg" not in self.databases:
            out("\n3. HTTP: skipped (needs PostgreSQL)")
            return False
        out(f"""
3. The webhook over HTTP on PostgreSQL: {o.clients} clients at once (Telegram's max_connections),
   {o.http_updates:,} updates per run over {o.chats:,} chats; a chat's next update waits for the
   answer to its previous one; keep-alive where the server allows it. 'off': the same
   handlers without sessions behind the same view and runner; Django's pool everywhere.
   CPU: what an update cost the server's processes and PostgreSQL's backends""")
        return True

    def http_targets(self) -> None:
        if not self.http_intro():
            return
        deployments = [(WSGI, "off"), (WSGI, "sessions"), (PLAIN_SYNC, "off"), (ASGI, "sessions")]
        off, on, plain, asgi, *in_redis = self.http(deployments + [(WSGI, REDIS)] * self.redis)
        measured, spread = ratio(on, off), median(r["p99_ms"] / r["p50_ms"] for r in on)
        met = measured >= 0.7 and spread < 3
        text = f"{measured:.2f}×, p99 {spread:.1f}× p50"
        self.target("HTTP, WSGI: sessions on vs off", "≥ 0.70×, p99 < 3× p50", text, met)
        measured = ratio(off, plain)
        self.target(
            "HTTP, off: WSGI vs 2 sync workers", "≥ 1.00×", f"{measured:.2f}×", measured >= 1
        )
        measured = ratio(asgi, on)
        self.target("HTTP, on: ASGI vs WSGI", "≥ 0.70×", f"{measured:.2f}×", measured >= 0.7)
        if in_redis:
            pg, measured = ratio(on, off), ratio(in_redis[0], off)
            self.target(
                "HTTP, WSGI: sessions in Redis vs off", f"≥ PostgreSQL's {pg:.2f}×",
                f"{measured:.2f}×", measured >= pg,
            )  # fmt: skip

    def explore(self) -> None:
        """Each candidate with and without sessions, interleaved; one candidate at a time."""
        if self.http_intro():
            for deployment in CANDIDATES:
                self.http([(deployment, "off"), (deployment, "sessions")])

    def growth(self) -> None:
        o = self.o
        out(f"""
4. Growth: in-process, sessions on, {o.growth_updates:,} updates a run over {o.growth_chats} chats,
   {2 * o.growth_chats:,} sessions stored ("small") against {o.growth_rows:,} ("large")""")
        for database, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
            if database not in self.databases:
                continue
            with ExitStack() as stack:
                small = Worker(stack, "sessions", self.databases[f"{database}_small"])
                large = Worker(stack, "sessions", self.databases[f"{database}_large"])
                filled = large("fill", rows=o.growth_rows - 2 * o.growth_chats)
                out(f"   {label}: {filled['rows']:,} filler sessions in {filled['seconds']:.0f} s")
                for worker in (small, large):
                    worker("warmup", chats=o.growth_chats, first_update_id=self.ids())
                    worker("fill", rows=0)  # nothing to add: ANALYZE, so both have statistics
                variants = {f"{label}, small": small, f"{label}, large": large}
                runs = self.interleave(
                    variants, self.run_updates(o.growth_chats, o.growth_updates)
                )
            self.table(runs, {"µs/update": "per_update_us"})
            small_runs, large_runs = runs.values()
            slower = ratio(large_runs, small_runs, "per_update_us")
            measure = f"growth, {label}: {o.growth_rows:,} vs {2 * o.growth_chats:,} sessions"
            self.target(measure, "≤ 1.20×", f"{slower:.2f}×", slower <= 1.2)

    def profile(self) -> None:
        o = self.o
        out(f"""
5. Where the time of an update goes, µs per update: the bots side by side in one process,
   medians of {o.profile_rounds} rounds of {o.profile_updates:,} updates (bench/profile.py)""")
        found = {}
        for database, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
            if database in self.databases:
                with ExitStack() as stack:
                    found[label] = Worker(stack, "sessions", self.databases[database])(
                        "profile", chats=o.chats, count=o.profile_updates,
                        rounds=o.profile_rounds, first_update_id=self.ids(),
                    )  # fmt: skip
        steps = next(iter(found.values()))["steps"]
        table(
            [
                ["step", *found],
                *[[s, *[f"{r['steps'][s]:,.0f}" for r in found.values()]] for s in steps],
            ]
        )
        counts = ", ".join(f"{label} {r['statements']:.1f}" for label, r in found.items())
        out(f"   statements per update, besides the COMMIT: {counts}")
        for label, result in found.items():
            top = result["top"]
            out(f"   cProfile on {label}: {top['total_us']:,.0f} µs of own time per update while")
            out(f"   profiled (besides {top['waiting_us']:,.0f} waiting), most of it in:")
            table([["function", "own µs", "cumulative", "calls"], *top["rows"]], indent="     ")

    def summary(self, started: float) -> None:
        out("\nTargets")
        table([["measure", "target", "measured", ""], *self.targets])
        load = os.getloadavg()[0]
        out(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end {load:.2f}")


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "inprocess": Bench.inprocess,
    "statements": Bench.statements,
    "http": Bench.http_targets,
    "growth": Bench.growth,
    "profile": Bench.profile,
    "explore": Bench.explore,
}


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop servers and workers too
    if set(options.sections) - set(SECTIONS):
        sys.exit(f"unknown sections in {options.sections}; known: {', '.join(SECTIONS)}")
    started = time.perf_counter()
    with ExitStack() as stack:
        bench = Bench(options, stack)
        bench.prepare_databases()
        bench.header()
        for name in options.sections:
            section_started = time.perf_counter()
            SECTIONS[name](bench)
            out(f"   ({time.perf_counter() - section_started:.0f} s)")
        if bench.targets:
            bench.summary(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
