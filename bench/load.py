"""Concurrent clients posting updates to the webhook, as Telegram does.

Written on raw asyncio streams rather than httpx, because the clients share the cores
with the server under test: a request costs the generator tens of µs, not hundreds.
Clients take the updates in order; an update waits while the previous update of its
chat is in flight (the server would make it wait too, holding a worker meanwhile). A
client keeps its connection open while the server does (gunicorn's sync workers close
it after each response).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

SECRET = "bench-secret"  # bench.settings' webhook secret


def request(port: int, update: dict[str, Any]) -> bytes:
    body = json.dumps(update).encode()
    head = (
        f"POST /telegram/webhook/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nX-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(port: int, updates: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    pending = iter(
        ((update.get("message") or update["edited_message"])["chat"]["id"], request(port, update))
        for update in updates
    )
    chat_locks: dict[int, asyncio.Lock] = {}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def client() -> None:
        reader = writer = None
        try:
            for chat, data in pending:
                async with chat_locks.setdefault(chat, asyncio.Lock()):  # FIFO per chat
                    started = time.perf_counter()
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    assert reader is not None
                    writer.write(data)
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                    length = int(head.split("content-length:")[1].split("\r\n")[0])
                    await reader.readexactly(length)
                    latencies.append(time.perf_counter() - started)
                statuses[int(head.split()[1])] += 1
                if "connection: close" in head:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "per_second": len(updates) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[len(latencies) * 99 // 100] * 1e3,
        "statuses": dict(statuses),
    }


def post_all(port: int, updates: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Post every update, ``clients`` at a time; throughput, p50, p99 and statuses."""
    return asyncio.run(_load(port, updates, clients))
