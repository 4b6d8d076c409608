"""Redis for the tests: the server at ``REDIS_URL`` (default: the local one), or a skip.

Every storage a test makes has a prefix of its own, and its keys are deleted afterwards,
so tests never see each other's sessions and a shared Redis keeps nothing of them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import threading
from urllib.parse import urlsplit

import pytest

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


@functools.cache
def unreachable() -> str | None:
    """Why Redis cannot be used, or ``None`` when it can."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install botsessions[redis])"
    try:
        redis.Redis.from_url(URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at {URL} is unreachable ({exc}); .ci/run starts one"
    return None


def require_redis() -> None:
    reason = unreachable()
    if reason is not None:
        pytest.skip(reason)


def new_prefix() -> str:
    return f"bstest:{secrets.token_hex(4)}:"


def forget(prefix: str) -> None:
    """Delete every key under ``prefix``."""
    import redis

    client = redis.Redis.from_url(URL)
    names = list(client.scan_iter(match=prefix.replace("*", "\\*") + "*", count=1000))
    if names:
        client.delete(*names)
    client.close()


class RedisProxy:
    """A TCP proxy to the tests' Redis that a test can cut and restore: Redis going away.

    ``url`` is the proxy's (same database number as :data:`URL`). While cut, every open
    connection is closed and new ones are closed as soon as they are accepted.
    """

    def __init__(self) -> None:
        target = urlsplit(URL)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 6379)
        self._server = socket.create_server(("127.0.0.1", 0))
        port = self._server.getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{target.path}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, []
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
