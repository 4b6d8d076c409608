"""The storage contract, on the memory storage and on the database storage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError

from botsessions import MemoryStorage, SessionConflict, StorageError, StorageKey, StoredSession
from botsessions.storage.base import Delete, UpdateMark, Write
from botsessions.storage.db import DatabaseStorage

pytestmark = pytest.mark.django_db

KEY = StorageKey(123456, "", "chat:-1001987654321")


@pytest.fixture(
    params=[
        "memory",
        "db",
        pytest.param("db-commits", marks=pytest.mark.django_db(transaction=True)),
        "redis",
    ]
)
def storage(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Each storage; the database one inside the test's transaction and with real commits."""
    if request.param == "memory":
        yield MemoryStorage()
    elif request.param == "redis":
        from botsessions.storage.redis import RedisStorage

        from .redis_support import URL, forget, new_prefix, require_redis

        require_redis()
        prefix = new_prefix()
        yield RedisStorage(url=URL, prefix=prefix)
        forget(prefix)
    else:
        yield DatabaseStorage()


def data(record: StoredSession | None) -> Any:
    """Stored text decoded: PostgreSQL's jsonb reformats the text it is given."""
    return None if record is None else json.loads(record.data)


def run(coroutine: Any) -> Any:
    """Run storage calls from the test's thread; their queries run on it too."""

    async def call() -> Any:
        return await coroutine

    return async_to_sync(call)()


def test_read_write_delete(storage):
    assert run(storage.read(KEY)) is None
    run(storage.write(KEY, StoredSession('{"a":1}')))
    assert data(run(storage.read(KEY))) == {"a": 1}
    run(storage.write(KEY, StoredSession('{"a":2}')))
    assert data(run(storage.read(KEY))) == {"a": 2}
    run(storage.delete(KEY))
    assert run(storage.read(KEY)) is None
    run(storage.delete(KEY))  # deleting what is not there is fine


def test_enumerating_keys(storage):
    keys = [StorageKey(1, "", f"chat:{n}") for n in range(3)] + [StorageKey(2, "x", "user:1")]
    for key in keys:
        run(storage.write(key, StoredSession("0")))

    async def collect(bot_id: int | None) -> list[StorageKey]:
        return [key async for key in storage.keys(bot_id)]

    assert sorted(run(collect(None))) == sorted(keys)
    assert sorted(run(collect(1))) == sorted(keys[:3])


def test_revisions_detect_a_concurrent_writer(storage):
    run(storage.commit([Write(KEY, StoredSession("1", revision=1), 0)]))
    record = run(storage.read(KEY))
    assert record.revision == 1
    run(storage.commit([Write(KEY, StoredSession("2", revision=2), 1)]))
    with pytest.raises(SessionConflict):  # a writer that read revision 1 is too late
        run(storage.commit([Write(KEY, StoredSession('"stale"', revision=2), 1)]))
    with pytest.raises(SessionConflict):  # and so is one that thought it was new
        run(storage.commit([Write(KEY, StoredSession('"stale"', revision=1), 0)]))
    with pytest.raises(SessionConflict):
        run(storage.commit([Delete(KEY, 1)]))
    assert data(run(storage.read(KEY))) == 2


def test_commit_is_all_or_nothing(storage):
    other = StorageKey(123456, "", "user:1")
    run(storage.commit([Write(other, StoredSession("1", revision=1), 0)]))
    with pytest.raises(SessionConflict):
        run(
            storage.commit(
                [
                    Write(KEY, StoredSession('"new"', revision=1), 0),
                    Write(other, StoredSession('"x"', revision=2), 5),  # wrong revision
                ],
                UpdateMark(123456, 7),
            )
        )
    assert run(storage.read(KEY)) is None
    assert run(storage.load([], UpdateMark(123456, 7)))[1] is False  # nor the record
    with pytest.raises(SessionConflict):  # a delete that lost its row undoes the rest too
        run(storage.commit([Write(KEY, StoredSession('"new"', revision=1), 0), Delete(KEY, 9)]))
    assert run(storage.read(KEY)) is None
    # The retry, with the right revisions, commits once.
    retry = [Write(KEY, StoredSession('"new"', revision=1), 0), Delete(other, 1)]
    assert run(storage.commit(retry, UpdateMark(123456, 7))) is True
    assert run(storage.commit(retry, UpdateMark(123456, 7))) is False
    assert data(run(storage.read(KEY))) == "new"
    assert run(storage.read(other)) is None


def test_marks_make_a_commit_happen_once(storage):
    mark = UpdateMark(123456, 42)
    first = [Write(KEY, StoredSession("1", revision=1), 0)]
    assert run(storage.commit(first, mark)) is True
    again = [Write(KEY, StoredSession("2", revision=2), 1)]
    assert run(storage.commit(again, mark)) is False
    assert data(run(storage.read(KEY))) == 1
    assert run(storage.load([KEY], mark))[1] is True
    assert run(storage.load([KEY], UpdateMark(123456, 43)))[1] is False


def test_memory_storage_keeps_copies_not_references():
    """grammY's memory storage kept the caller's object (its issue #758)."""
    from botsessions.serializers import default_serializer

    storage = MemoryStorage()
    data = {"items": [1]}
    asyncio.run(storage.write(KEY, StoredSession(default_serializer.dumps(data))))
    data["items"].append(2)
    stored = asyncio.run(storage.read(KEY))
    assert default_serializer.loads(stored.data) == {"items": [1]}


def test_database_read_errors_are_raised_not_reported_as_absent(monkeypatch):
    """A storage that says "no session" on error lets initial data overwrite real data."""
    storage = DatabaseStorage()
    run(storage.write(KEY, StoredSession('{"real":"data"}')))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection")

    monkeypatch.setattr("botsessions.storage.db.DatabaseStorage._statement", broken)
    with pytest.raises(StorageError, match="server closed"):
        run(storage.read(KEY))


def test_database_errors_become_storage_errors(monkeypatch):
    storage = DatabaseStorage()

    class FailingCursor:
        def __enter__(self) -> Any:
            raise OperationalError("database is down")

        def __exit__(self, *exc: Any) -> None:
            return None

    from django.db import connection

    monkeypatch.setattr(connection, "cursor", lambda: FailingCursor())
    with pytest.raises(StorageError, match="reading sessions failed"):
        run(storage.read(KEY))


def test_rename_never_overwrites(storage):
    old, new = StorageKey(1, "", "chat:-1"), StorageKey(1, "", "chat:-100")
    taken_old, taken_new = StorageKey(1, "", "chat:-2"), StorageKey(1, "", "chat:-200")
    run(storage.write(old, StoredSession('"moved"')))
    run(storage.write(taken_old, StoredSession('"old"')))
    run(storage.write(taken_new, StoredSession('"already here"')))
    moved = run(storage.rename([(old, new), (taken_old, taken_new)]))
    assert moved == [new]
    assert data(run(storage.read(new))) == "moved" and run(storage.read(old)) is None
    assert data(run(storage.read(taken_new))) == "already here"
    assert data(run(storage.read(taken_old))) == "old"


def test_a_custom_storage_needs_only_four_methods():
    from collections.abc import AsyncIterator

    from botsessions import SessionStorage

    class DictStorage(SessionStorage):
        def __init__(self) -> None:
            self.rows: dict[StorageKey, StoredSession] = {}

        async def read(self, key: StorageKey) -> StoredSession | None:
            return self.rows.get(key)

        async def write(self, key, record, *, expected_revision=None) -> None:
            self.rows[key] = record

        async def delete(self, key, *, expected_revision=None) -> None:
            self.rows.pop(key, None)

        async def keys(self, bot_id: int | None = None) -> AsyncIterator[StorageKey]:
            for key in list(self.rows):
                yield key

    storage = DictStorage()
    assert asyncio.run(storage.commit([Write(KEY, StoredSession("1"), 0)])) is True
    assert asyncio.run(storage.load([KEY], None))[0][KEY].data == "1"
    assert asyncio.run(storage.rename_chat(123456, [""], -1001987654321, -1002)) == [
        StorageKey(123456, "", "chat:-1002")
    ]


def test_keys_under_a_head_are_found_exactly(storage: Any, monkeypatch: pytest.MonkeyPatch):
    """What a chat migration of prefixed fragments looks for: the head itself, or the head
    and a colon; never a longer id, and case counts. The database asks its index once
    instead of walking every key."""
    names = ["pizza:chat:-1", "pizza:chat:-1:user:5", "pizza:chat:-10", "Pizza:chat:-1"]
    for name in names:
        run(storage.write(StorageKey(123456, "chat", name), StoredSession("1")))
    run(storage.write(StorageKey(123456, "user", "pizza:chat:-1"), StoredSession("1")))
    if isinstance(storage, DatabaseStorage):

        def no_walking(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("walked every key")

        monkeypatch.setattr(DatabaseStorage, "keys", no_walking)
    found = run(storage.keys_under(123456, {"chat": "pizza:chat:-1"}))
    assert sorted(key.key for key in found) == ["pizza:chat:-1", "pizza:chat:-1:user:5"]
    assert {key.fragment for key in found} == {"chat"}
