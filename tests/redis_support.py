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
    """A TCP proxy to the tests' Redis that a test can cut off or freeze; ``url`` is the
    proxy's (same database number as :data:`URL`).

    Doing either to the shared Redis would disturb every other test, so the proxy does it
    to its own connections only. Cut, it closes them: Redis going away. Frozen, it holds
    back their replies (the command runs, its client hears nothing) or their requests
    (the command reaches Redis only on :meth:`release`): a Redis that hangs past the
    client's socket timeout. Holding applies to the connections open at the time;
    those opened later pass as usual, like the fresh one a client opens after a timeout.
    """

    def __init__(self) -> None:
        target = urlsplit(URL)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 6379)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}{target.path}"
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._parked: list[socket.socket] = []
        self._cut = False
        self._silent = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Close every open connection, and new ones as soon as they are accepted."""
        with self._lock:
            self._cut = True
            links, self._links = self._links, []
        for link in links:
            link.close()

    def restore(self) -> None:
        """Let new connections through again."""
        with self._lock:
            self._cut = False

    def hold_replies(self) -> None:
        """The connections open now run what they send, and hear nothing back."""
        for link in self._open():
            link.replies_held = True

    def hold_requests(self) -> None:
        """What the connections open now send is kept back, until :meth:`release`."""
        for link in self._open():
            link.requests_held = True

    def release(self) -> None:
        """Send the kept-back requests on to Redis, and wait until it has answered them."""
        for link in self._open():
            link.release()

    def go_silent(self) -> None:
        """Nothing passes any more, on the connections open now or on new ones."""
        with self._lock:
            self._silent = True
        self.hold_requests()
        self.hold_replies()

    def close(self) -> None:
        self.cut()
        for sock in [*self._parked, self._server]:
            _close(sock)

    def _open(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:  # so that a cut cannot miss a connection being linked
                if self._silent:
                    self._parked.append(client)  # accepted, never answered
                elif self._cut or not self._link(client):
                    _close(client)

    def _link(self, client: socket.socket) -> bool:
        """Connect ``client`` through to Redis; ``False`` if Redis cannot be reached."""
        try:
            upstream = socket.create_connection(self._upstream)
        except OSError:
            return False
        self._links.append(_Link(client, upstream))
        return True


class _Link:
    """One client's connection and the proxy's own connection to Redis for it, pumped
    both ways by a thread each unless held."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.replies_held = False
        self.requests_held = False
        self._kept = bytearray()
        self._lock = threading.Lock()
        self._answered = threading.Event()
        threading.Thread(target=self._requests, daemon=True).start()
        threading.Thread(target=self._replies, daemon=True).start()

    def release(self) -> None:
        with self._lock:
            self.requests_held = False
            kept, self._kept = bytes(self._kept), bytearray()
            if kept:
                self._answered.clear()
                self.upstream.sendall(kept)
        if kept and not self._answered.wait(5):
            raise AssertionError("Redis did not answer the released requests")

    def close(self) -> None:
        _close(self.client)
        _close(self.upstream)

    def _requests(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.client.recv(65536):
                with self._lock:
                    if self.requests_held:
                        self._kept += data
                    else:
                        self.upstream.sendall(data)
        _close(self.client)
        with self._lock:
            if not self._kept:
                # Requests kept back keep the connection to Redis open until released.
                _close(self.upstream)

    def _replies(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.upstream.recv(65536):
                self._answered.set()
                if not self.replies_held:
                    self.client.sendall(data)
        self.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
