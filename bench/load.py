"""A small HTTP load generator: concurrent clients posting updates to the webhook.

Written on raw asyncio streams rather than httpx, because the clients share two cores
with the server under test: a request costs the generator a few tens of µs instead of a
few hundred. The clients take updates from one list in order, and an update waits
while the previous update of its chat is in flight. The server would make it wait as
well (a chat's session keys are locked in the database, across worker processes), but
it would hold a worker and a connection meanwhile, and that wait is not what is
measured here. Clients reuse their connection while the server keeps it open (uvicorn
does; gunicorn's sync workers close it after every response).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    """What one load run saw: throughput, latencies and answers."""

    requests: int
    seconds: float
    latencies_us: list[float] = field(repr=False)
    statuses: Counter[int]
    outcomes: Counter[str]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "per_second": self.per_second,
            "p50_us": self.percentile(0.50),
            "p99_us": self.percentile(0.99),
            "statuses": dict(self.statuses),
            "outcomes": dict(self.outcomes),
        }


def request_bytes(port: int, path: str, secret: str, update: dict[str, Any]) -> bytes:
    body = json.dumps(update).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Telegram-Bot-Api-Secret-Token: {secret}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Client:
    """One keep-alive connection, reopened whenever the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _load(
    port: int, path: str, secret: str, updates: list[dict[str, Any]], clients: int
) -> LoadResult:
    work: list[tuple[int, bytes]] = []
    for update in updates:
        body = update.get("message") or update.get("edited_message")
        work.append((body["chat"]["id"], request_bytes(port, path, secret, update)))
    pending = iter(work)
    chat_locks: dict[int, asyncio.Lock] = {}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()

    async def run() -> None:
        client = Client(port)
        clock = time.perf_counter_ns
        try:
            for chat, request in pending:
                # A chat's next update waits for its previous one, in order (FIFO lock).
                lock = chat_locks.setdefault(chat, asyncio.Lock())
                async with lock:
                    started = clock()
                    status, body = await client.post(request)
                    latencies.append((clock() - started) / 1e3)
                statuses[status] += 1
                if status == 200:
                    outcomes[json.loads(body).get("outcome", "?")] += 1
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(clients)))
    seconds = time.perf_counter() - started
    return LoadResult(len(updates), seconds, latencies, statuses, outcomes)


def post_all(
    port: int, path: str, secret: str, updates: list[dict[str, Any]], clients: int
) -> LoadResult:
    """Post every update, ``clients`` at a time; returns when all were answered."""
    return asyncio.run(_load(port, path, secret, updates, clients))
