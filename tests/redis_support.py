"""Redis for the tests: the server at ``REDIS_URL`` (default: the local one), or a skip.

Every storage a test makes has a prefix of its own, and its keys are deleted afterwards,
so tests never see each other's sessions and a shared Redis keeps nothing of them.
"""

from __future__ import annotations

import functools
import os
import secrets

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
