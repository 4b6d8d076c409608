"""A TCP proxy to the tests' Redis that holds back what passes through it, on cue.

A Redis that freezes past the client's socket timeout runs a command whose client has
given up waiting for the reply. Freezing the shared Redis would stall every other test,
so the proxy does it to its own connections only: it holds back the replies (the
command runs, its client hears nothing) or the requests (the command reaches Redis only
when :meth:`HoldingProxy.release` says so). Connections opened later pass as usual,
like the fresh connection a client opens after a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

from .redis_support import URL


class HoldingProxy:
    """Forwards to the Redis at :data:`URL`; ``url`` is the proxy's (same database)."""

    def __init__(self) -> None:
        target = urlsplit(URL)
        self._upstream = (target.hostname or "127.0.0.1", target.port or 6379)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}{target.path}"
        self._links: list[_Link] = []
        self._parked: list[socket.socket] = []
        self._silent = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_replies(self) -> None:
        """The connections open now run what they send, and hear nothing back."""
        for link in self._links:
            link.replies_held = True

    def hold_requests(self) -> None:
        """What the connections open now send is kept back, until :meth:`release`."""
        for link in self._links:
            link.requests_held = True

    def release(self) -> None:
        """Send the kept-back requests on to Redis, and wait until it has answered them."""
        for link in self._links:
            link.release()

    def go_silent(self) -> None:
        """Nothing passes any more, on the connections open now or on new ones."""
        self._silent = True
        self.hold_requests()
        self.hold_replies()

    def close(self) -> None:
        for link in self._links:
            link.close()
        for sock in [*self._parked, self._server]:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if self._silent:
                self._parked.append(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                _close(client)
                continue
            self._links.append(_Link(client, upstream))


class _Link:
    """One client's connection and the proxy's own connection to Redis for it."""

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
