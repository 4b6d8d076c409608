"""Real server processes serving the demo project, for end-to-end tests.

The webhook has to work the way it is deployed: behind uvicorn (ASGI), gunicorn's sync
workers (WSGI) and ``manage.py runserver``, several requests in a row, with the
database of the test run. In short::

    env = server_env(api_base_url=api.base_url)        # test database, fake Bot API
    with start_server("gunicorn", env, workers=2) as server:
        response = server.post_update(message("/hunger"))   # secret header included
        os.kill(server.worker_pids()[0], signal.SIGKILL)    # crash one worker
    # leaving the block stops the server (SIGTERM, then SIGKILL after a grace period)

- ``start_server(kind, env, workers=1)`` → :class:`Server`, ready to answer: ``.url``,
  ``.port``, ``.post_update(update, secret=...)``, ``.request(method, path)``,
  ``.exchange(raw_bytes)`` (what no HTTP client sends), ``.worker_pids()``,
  ``.stop(signum)`` (the exit code), ``.kill()`` (SIGKILL to the whole process group),
  ``.log()``, ``.wait_for_log(regex)``;
- ``start_process(name, argv, env, ready=regex)`` → :class:`Process`, the same for any
  command, e.g. ``manage("runbot")``; ``start_runbot(env)`` for that one, once polling;
- ``server_env(api_base_url=...)`` points a process at the test database
  (``test_database_url()``), the fake Bot API and the test token and secret.

Every process runs in its own process group with its output in a log file; stopping
it prints the log, which pytest shows only when the test failed. Use these from a
``django_db(transaction=True)`` test, so the server sees the rows the test sees and the
rows it commits are cleaned up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
WEBHOOK_PATH = "/telegram/webhook/"
TOKEN = "123456:TEST-token"
SECRET = "test-secret"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

Kind = Literal["uvicorn", "gunicorn", "runserver"]
_NO_SECRET: Any = object()

# What each server prints once per worker process it started.
WORKER_LINES: dict[str, re.Pattern[str]] = {
    "uvicorn": re.compile(r"Started server process \[(\d+)\]"),
    "gunicorn": re.compile(r"Booting worker with pid: (\d+)"),
    "runserver": re.compile(r"Starting development server at"),
}


def free_port() -> int:
    """A TCP port nobody listens on right now (start_server retries if it gets taken)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """The DATABASE_URL naming the database of a Django ``settings_dict``."""
    engine = str(settings_dict["ENGINE"])
    name = str(settings_dict["NAME"])
    if engine.endswith("sqlite3"):
        return f"sqlite:///{Path(name).resolve()}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[engine.rsplit(".", 1)[-1]]
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else f"{user}@" if user else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"{scheme}://{credentials}{host}{port}/{quote(name, safe='')}"


def test_database_url() -> str:
    """The DATABASE_URL of the database the running test uses (after pytest-django set it up)."""
    from django.db import connection

    return database_url(connection.settings_dict)


test_database_url.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def server_env(
    *,
    api_base_url: str,
    token: str = TOKEN,
    secret: str = SECRET,
    database: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """Environment for a demo process: the test database, the fake Bot API, DEBUG off."""
    env = {
        key: value
        for key, value in os.environ.items()
        # REDIS_URL would put the demo's sessions in Redis: only when a test asks.
        if not key.startswith(("DJANGO_", "TELEGRAM_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="botproject.settings",
        DJANGO_SECRET_KEY="end-to-end-tests-secret-key",
        DJANGO_DEBUG="0",
        DATABASE_URL=database or test_database_url(),
        TELEGRAM_BOT_TOKEN=token,
        TELEGRAM_WEBHOOK_SECRET=secret,
        TELEGRAM_API_BASE_URL=api_base_url,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def _default_sigint() -> None:
    """Give the child Ctrl-C's default meaning, as in a terminal.

    A background job of a non-interactive shell (a CI script, say) ignores SIGINT, and
    its children inherit that: a server would then ignore the SIGINT a test sends it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Process:
    """A child process in its own process group, its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, show_log: bool = True
    ) -> None:
        self.name = name
        self.argv = list(argv)
        handle, path = tempfile.mkstemp(prefix=f"botsessions-{name}-", suffix=".log")
        self.log_path = Path(path)
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_sigint,
            )
        # show_log=False: never print the log (a benchmark's servers, whose output is read).
        self._log_shown = not show_log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the log."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            if self.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: expected {count}× {pattern!r} in the log, found "
                    f"{len(found)} (exit code {self.returncode}).\n{self.log()}"
                )
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        """Send a signal to the main process only (not its workers)."""
        if self.returncode is None:
            os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Send a signal to the process and all it started, as Ctrl-C in a terminal does."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the exit code; raises ``subprocess.TimeoutExpired``."""
        return self.process.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Ask the process to exit (``signum``), SIGKILL it after ``timeout``; the exit code."""
        try:
            self.send_signal(signum)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                code = self.process.wait(5)
            return code
        finally:
            self._kill_group()  # workers orphaned by a dead master must not live on
            self.show_log()

    def kill(self) -> None:
        """SIGKILL the process and everything it started, like a crash or the OOM killer."""
        self._kill_group()
        self.process.wait(5)

    def show_log(self) -> None:
        """Print the log once; pytest shows it with a failing test's captured output."""
        if not self._log_shown:
            self._log_shown = True
            print(f"----- {self.name} log ({self.log_path}) -----\n{self.log()}")

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Server(Process):
    """A server process serving the demo project on ``url``."""

    def __init__(
        self,
        kind: Kind,
        argv: Sequence[str],
        env: Mapping[str, str],
        port: int,
        workers: int,
        *,
        show_log: bool = True,
    ) -> None:
        super().__init__(kind, argv, env, show_log=show_log)
        self.kind = kind
        self.port = port
        self.workers = workers
        self.url = f"http://127.0.0.1:{port}"
        self.secret = env.get("TELEGRAM_WEBHOOK_SECRET", "")
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def request(self, method: str, path: str = WEBHOOK_PATH, **kwargs: Any) -> httpx.Response:
        """Any HTTP request to the server."""
        return self.client.request(method, path, **kwargs)

    def post_update(
        self,
        update: Mapping[str, Any] | bytes | str,
        *,
        secret: str | None = _NO_SECRET,
        path: str = WEBHOOK_PATH,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST an update as Telegram does: JSON, with the server's secret unless told.

        ``secret=None`` sends no secret header; a dict is encoded as JSON, bytes and
        strings are sent as they are (for malformed bodies).
        """
        if secret is _NO_SECRET:
            secret = self.secret
        sent = dict(headers or {})
        sent.setdefault("Content-Type", "application/json")
        if secret is not None:
            sent[SECRET_HEADER] = secret
        body = update if isinstance(update, bytes | str) else json.dumps(update)
        return self.client.post(path, content=body, headers=sent)

    def exchange(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send raw bytes on a new connection; everything the server sent until it closed.

        For requests no HTTP client sends, such as a chunked body with another request
        behind or inside it. ``timeout`` bounds the wait for each read: a server that keeps
        the connection open is then taken to have said all it will.
        """
        received = bytearray()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := sock.recv(65536):
                    received += chunk
        return bytes(received)

    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (uvicorn, gunicorn) or of runserver itself."""
        if self.kind == "runserver":
            return [self.pid]
        return [int(pid) for pid in WORKER_LINES[self.kind].findall(self.log())]

    def wait_until_ready(self, timeout: float) -> None:
        """Wait until every worker started and the webhook URL answers HTTP."""
        self.wait_for_log(WORKER_LINES[self.kind].pattern, self.workers, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(self.url + WEBHOOK_PATH, timeout=1.0)
                return
            except httpx.TransportError:
                pass
            if self.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.kind} on {self.url} not ready (exit code {self.returncode}).\n"
                    f"{self.log()}"
                )
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.client.close()
        return super().stop(signum, timeout)

    def kill(self) -> None:
        self.client.close()
        super().kill()

    def __enter__(self) -> Server:
        return self


def server_argv(
    kind: Kind,
    port: int,
    workers: int,
    *,
    worker_class: str = "sync",
    threads: int = 1,
    quiet: bool = False,
) -> list[str]:
    """The command line starting ``kind`` on ``port``.

    For gunicorn, ``worker_class`` and ``threads`` choose the worker (``sync``,
    ``gthread`` with ``threads``, or an ASGI worker such as
    ``uvicorn.workers.UvicornWorker``, which serves ``botproject.asgi``). ``quiet`` leaves
    the access log out, for a benchmark: writing a line per request would be measured too.
    """
    python = sys.executable
    address = f"127.0.0.1:{port}"
    if kind == "uvicorn":
        argv = [python, "-m", "uvicorn", "botproject.asgi:application"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
        argv += ["--no-access-log"] if quiet else []
        return argv + (["--workers", str(workers)] if workers > 1 else [])
    if kind == "gunicorn":
        asgi = "uvicorn" in worker_class.lower()
        argv = [
            python, "-m", "gunicorn", f"botproject.{'asgi' if asgi else 'wsgi'}:application",
            "--bind", address, "--workers", str(workers), "--worker-class", worker_class,
            "--timeout", "60", "--graceful-timeout", "5",
            "--error-logfile", "-", "--log-level", "info",
        ]  # fmt: skip
        argv += ["--threads", str(threads)] if threads > 1 else []
        return argv + ([] if quiet else ["--access-logfile", "-"])
    if kind == "runserver":
        return [python, "manage.py", "runserver", "--noreload", address]
    raise ValueError(f"unknown server kind {kind!r}")


def start_server(
    kind: Kind,
    env: Mapping[str, str],
    *,
    workers: int = 1,
    timeout: float = 30.0,
    worker_class: str = "sync",
    threads: int = 1,
    quiet: bool = False,
) -> Server:
    """Start the demo project under ``kind`` on a free port and wait until it answers.

    ``workers`` is the number of worker processes (ignored by runserver, which uses
    threads); ``worker_class``, ``threads`` and ``quiet`` are :func:`server_argv`'s (a
    quiet server never prints its log either). A port taken between choosing and
    binding it is retried with another.
    """
    for _ in range(3):
        port = free_port()
        argv = server_argv(
            kind, port, workers, worker_class=worker_class, threads=threads, quiet=quiet
        )
        server = Server(kind, argv, env, port, workers, show_log=not quiet)
        try:
            server.wait_until_ready(timeout)
            return server
        except AssertionError:
            log = server.log()
            server.stop(timeout=2)
            if "in use" not in log.lower():  # each server words "address in use" its own way
                raise
    raise AssertionError(f"could not find a free port for {kind}")


def start_process(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    ready: str | None = None,
    timeout: float = 30.0,
) -> Process:
    """Start any command (e.g. ``manage.py runbot``); wait for ``ready`` in its log."""
    process = Process(name, argv, env)
    if ready is not None:
        try:
            process.wait_for_log(ready, timeout=timeout)
        except AssertionError:
            process.stop(timeout=2)
            raise
    return process


def start_runbot(env: Mapping[str, str]) -> Process:
    """``manage.py runbot``, once it is polling."""
    return start_process("runbot", manage("runbot"), env, ready="Polling for updates")


def manage(*args: str) -> list[str]:
    """The command line of ``manage.py`` with ``args``, using this interpreter."""
    return [sys.executable, "manage.py", *args]


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, message: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)
