"""Starting and stopping the demo's HTTP servers for the benchmark.

Like tests/servers.py, but tuned to be measured: no access log (writing one line per
request would be measured too), nothing printed unless a server fails to start, and
the settings are bench.settings with the bot chosen by ``BENCH_BOT``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.servers import WORKER_LINES, free_port

REPO = Path(__file__).resolve().parents[1]
WEBHOOK_PATH = "/telegram/webhook/"


def server_argv(kind: str, port: int, workers: int) -> list[str]:
    """uvicorn (ASGI, the demo's asgi.py) or gunicorn sync workers (WSGI), no access log."""
    if kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "botproject.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--lifespan", "off", "--log-level", "info",
        ]  # fmt: skip
    if kind == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "botproject.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", "sync", "--timeout", "120", "--log-level", "info",
        ]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}")


class Server:
    """One server process group serving the demo on a free port."""

    def __init__(self, kind: str, env: Mapping[str, str], workers: int) -> None:
        self.kind = kind
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        handle, path = tempfile.mkstemp(prefix=f"botsessions-bench-{kind}-", suffix=".log")
        self.log_path = Path(path)
        with os.fdopen(handle, "wb") as log:
            self.process = subprocess.Popen(
                server_argv(kind, self.port, workers),
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Every worker booted and the webhook URL answers."""
        deadline = time.monotonic() + timeout
        while len(WORKER_LINES[self.kind].findall(self.log())) < self.workers:
            self._check(deadline)
            time.sleep(0.05)
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(self.url + WEBHOOK_PATH, timeout=2.0)
                return
            self._check(deadline)
            time.sleep(0.05)

    def _check(self, deadline: float) -> None:
        if self.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"{self.kind} on {self.url} did not start (exit code "
                f"{self.process.poll()}); its log:\n{self.log()}"
            )

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL what is left after a grace period; drop the log."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Server:
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
