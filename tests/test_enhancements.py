"""Timeouts and versioned migrations of stored session data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import ConfigurationError, DataMigrations, MigrationError, Sessions, StorageKey
from botsessions.models import Session

from .probes import Probe, RecordingStorage, start_probe, stop_probe
from .updates import ALICE, message

BOT = 123456
KEY = f"chat:{ALICE}"

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("botsessions.session.utcnow", clock)
    return clock


@pytest.fixture(params=["memory", "db"])
def timed(request: pytest.FixtureRequest, clock: Clock) -> Any:
    """A probe whose memory storage shares the test's clock."""
    probe = start_probe(request.param)
    if request.param == "memory":
        probe = Probe("memory", RecordingStorage(clock=clock))
    yield probe
    stop_probe(probe)


def every_update(callback: Any) -> TypeHandler[Any, Any]:
    return TypeHandler(Update, callback)


def stored_row(probe: Probe) -> tuple[Decimal | None, datetime | None] | None:
    """The (version, expiry) stored for the test key."""
    key = StorageKey(BOT, "", KEY)
    if isinstance(probe.storage, RecordingStorage):
        record = probe.storage.stored(key)
        return None if record is None else (record.version, record.expires_at)
    row = Session.objects.filter(bot_id=BOT, fragment="", key=KEY).first()
    return None if row is None else (row.version, row.expires_at)


def counter() -> Any:
    async def handler(update, context):
        if update.message.text == "look":
            return
        context.session["n"] += 1

    return every_update(handler)


# -- timeouts --------------------------------------------------------------------


def test_writes_store_version_and_expiry(make_bot, timed, clock):
    sessions = Sessions(
        storage=timed.storage,
        initial=lambda: {"n": 0},
        ttl=timedelta(minutes=30),
        migrations={1: lambda d: d, 2: lambda d: d},
    )
    bot = make_bot(sessions, [counter()])
    bot.process(message("x"))
    assert stored_row(timed) == (Decimal(2), clock.now + timedelta(minutes=30))


def test_expired_data_reads_as_absent_and_is_deleted(make_bot, timed, clock):
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(dict(context.session))
        if update.message.text == "inc":
            context.session["n"] += 1

    sessions = Sessions(storage=timed.storage, initial=lambda: {"n": 0}, ttl=timedelta(seconds=10))
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("inc"))
    bot.process(message("inc"))
    clock.advance(timedelta(seconds=20))
    bot.process(message("look"))
    assert seen[-1] == {"n": 0}
    assert stored_row(timed) is None
    bot.process(message("inc"))  # and it can be written again
    assert timed.stored_text(BOT, "", KEY) == '{"n":1}'


def test_every_write_slides_the_expiry(make_bot, timed, clock):
    sessions = Sessions(storage=timed.storage, initial=lambda: {"n": 0}, ttl=timedelta(seconds=10))
    bot = make_bot(sessions, [counter()])
    for _ in range(3):
        bot.process(message("inc"))
        clock.advance(timedelta(seconds=8))
    assert timed.stored_text(BOT, "", KEY) == '{"n":3}'


@pytest.fixture
def database_in_new_york() -> Any:
    """The database's own TIME_ZONE (Django writes its datetimes in that zone's time)."""
    from django.db import connection

    if connection.vendor != "sqlite":
        # PostgreSQL keeps time zones itself (Django refuses a TIME_ZONE there); on
        # MariaDB the update's thread has a connection of its own, set up already.
        pytest.skip("the update shares the test's connection on SQLite only")
    cached = ("timezone", "timezone_name")
    connection.settings_dict["TIME_ZONE"] = "America/New_York"
    for name in cached:
        connection.__dict__.pop(name, None)
    yield
    connection.settings_dict["TIME_ZONE"] = None
    for name in cached:
        connection.__dict__.pop(name, None)


def test_a_database_time_zone_neither_expires_nor_keeps_sessions_wrongly(
    make_bot, database_in_new_york
):
    seen: list[int] = []

    async def handler(update, context):
        seen.append(context.session["n"])
        context.session["n"] += 1

    sessions = Sessions(initial=lambda: {"n": 0}, ttl=timedelta(hours=2))
    bot = make_bot(sessions, [every_update(handler)])
    for _ in range(3):
        bot.process(message("x"))
    assert seen == [0, 1, 2]  # read as UTC, every row looked five hours expired


def test_an_unreadable_expiry_is_bad_stored_data_left_alone(make_bot):
    """A hand edit SQLite let through (its column is text): not taken for "no expiry"
    and overwritten, but logged and left alone."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the other databases' datetime columns refuse such text")
    bot = make_bot(Sessions(initial=lambda: {"n": 0}, ttl=timedelta(hours=1)), [counter()])
    bot.process(message("x"))
    with connection.cursor() as cursor:
        cursor.execute("UPDATE botsessions_session SET expires_at = 'tomorrow'")
    assert bot.process(message("x")) == "bad_stored_data"
    with connection.cursor() as cursor:
        cursor.execute("SELECT CAST(expires_at AS TEXT), data FROM botsessions_session")
        assert cursor.fetchall() == [("tomorrow", '{"n":1}')]


def test_memory_storage_has_its_own_ttl():
    import asyncio

    from botsessions import MemoryStorage, StoredSession

    clock = Clock()
    storage = MemoryStorage(ttl=timedelta(seconds=5), clock=clock)
    key = StorageKey(1, "", "k")

    async def scenario() -> list[Any]:
        await storage.write(key, StoredSession("1"))
        first = await storage.read(key)
        clock.advance(timedelta(seconds=6))
        return [first, await storage.read(key), [k async for k in storage.keys()]]  # noqa: SIM118

    first, later, keys = asyncio.run(scenario())
    assert first is not None and first.data == "1"
    assert later is None and keys == []


def test_a_memory_storage_clock_times_its_own_ttl_only(make_bot):
    """Its clock (a test's, say) is not the engine's: the storage's expiry must not be
    judged by the engine's time, which saw every session as long expired."""
    from botsessions import MemoryStorage

    seen: list[int] = []

    async def handler(update, context):
        seen.append(context.session["n"])
        context.session["n"] += 1

    storage = MemoryStorage(ttl=timedelta(hours=1), clock=lambda: datetime(2020, 1, 1, tzinfo=UTC))
    bot = make_bot(Sessions(storage=storage, initial=lambda: {"n": 0}), [every_update(handler)])
    for _ in range(3):
        bot.process(message("x"))
    assert seen == [0, 1, 2]


# -- migrations ------------------------------------------------------------------


def test_empty_migrations_are_refused():
    with pytest.raises(ConfigurationError, match="at least one"):
        Sessions(migrations={})


def test_duplicate_versions_are_refused():
    with pytest.raises(ConfigurationError, match="twice"):
        DataMigrations({1: lambda d: d, "1.0": lambda d: d})


@pytest.mark.parametrize(
    "version",
    [1.0000001, "0.0000005", 10**14, "1e15", "99999999999.999999", "20240115123.000001"],
)
def test_versions_the_database_cannot_keep_are_refused(version):
    """Stored rounded, a step would run again on every update; too large, no write fits."""
    with pytest.raises(ConfigurationError, match="does not fit"):
        DataMigrations({1: lambda d: d, version: lambda d: d})


def test_minus_zero_is_version_zero():
    """Written as "-0" it would not be read back (Redis takes digits only)."""
    assert str(DataMigrations({"-0": lambda d: d}).latest) == "0"


def test_the_finest_and_largest_versions_stored_are_accepted():
    DataMigrations({"0.000001": lambda d: d, 10**14 - 1: lambda d: d, "99.5": lambda d: d})


@pytest.mark.parametrize("version", ["999999999.999999", "99999999999999", "0.000001"])
def test_the_longest_versions_accepted_come_back_exactly(make_bot, version):
    """Fifteen digits: what SQLite, which keeps them in a float, gives back unchanged."""
    steps: list[Any] = []
    sessions = Sessions(initial=lambda: {"n": 0}, migrations={version: steps.append})
    bot = make_bot(sessions, [counter()])
    assert [bot.process(message("x")) for _ in "abc"] == ["committed"] * 3
    assert steps == []  # never at an older version: never migrated


def test_absent_data_is_not_migrated(make_bot, timed):
    calls: list[int] = []

    def step(data: Any) -> Any:
        calls.append(1)
        return data

    sessions = Sessions(storage=timed.storage, initial=lambda: {"n": 0}, migrations={1: step})
    bot = make_bot(sessions, [counter()])
    bot.process(message("inc"))
    assert calls == []
    assert stored_row(timed)[0] == Decimal(1)


def test_delete_is_unaffected_by_migrations(make_bot, timed):
    async def handler(update, context):
        if update.message.text == "drop":
            context.session = None
        else:
            context.session["n"] += 1

    sessions = Sessions(storage=timed.storage, initial=lambda: {"n": 0}, migrations={1: dict})
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("inc"))
    bot.process(message("drop"))
    assert stored_row(timed) is None


def seed(probe: Probe, data: str, version: Decimal | None) -> None:
    """Store data as an older release of the bot would have."""
    import asyncio

    from botsessions import StoredSession
    from botsessions.storage.base import Write

    record = StoredSession(data, version=version)
    if isinstance(probe.storage, RecordingStorage):
        asyncio.run(probe.storage.commit([Write(StorageKey(BOT, "", KEY), record, 0)]))
    else:
        Session.objects.create(
            bot_id=BOT, fragment="", key=KEY, data=json.loads(data), version=version
        )


STEPS = {1: lambda n: n + 10, 3: lambda n: n * 2, 12: lambda n: n**2}


@pytest.mark.parametrize(
    ("stored_version", "expected"),
    [(None, 400), (Decimal(3), 25), (Decimal(12), 5), (Decimal(8), 25)],
    ids=["unversioned-runs-all", "at-3-runs-later", "at-latest-untouched", "between-runs-later"],
)
def test_migrations_run_from_the_stored_version(make_bot, timed, stored_version, expected):
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(context.session)

    start = 0 if stored_version is None else 5
    seed(timed, str(start), stored_version)
    bot = make_bot(Sessions(storage=timed.storage, migrations=STEPS), [every_update(handler)])
    bot.process(message("look"))
    assert seen == [expected]
    # Upgraded data is stored at the newest version, even by a read-only update.
    assert stored_row(timed)[0] == Decimal(12)
    assert timed.stored_text(BOT, "", KEY) == str(expected)


def test_versions_are_ordered_numerically_and_run_once():
    """grammY parses versions as integers: 10 ran twice and 10.1 never. Not here."""
    ran: list[str] = []

    def step(name: str) -> Any:
        def run(data: Any) -> Any:
            ran.append(name)
            return data

        return run

    versions = ["11", "10.1", "1", "3", "10", "2"]
    migrations = DataMigrations({float(v) if "." in v else int(v): step(v) for v in versions})
    migrations.upgrade({}, None)
    assert ran == ["1", "2", "3", "10", "10.1", "11"]
    ran.clear()
    migrations.upgrade({}, Decimal("10"))
    assert ran == ["10.1", "11"]


def test_data_newer_than_the_newest_migration_is_refused_and_untouched(make_bot, timed, caplog):
    seed(timed, "7", Decimal(20))
    ran: list[Any] = []

    async def handler(update, context):
        ran.append(context.session)

    bot = make_bot(Sessions(storage=timed.storage, migrations=STEPS), [every_update(handler)])
    assert bot.process(message("look")) == "bad_stored_data"
    assert ran == []
    assert stored_row(timed)[0] == Decimal(20)
    assert timed.stored_text(BOT, "", KEY) == "7"
    assert "newer than the newest known migration" in caplog.text
    with pytest.raises(MigrationError):
        DataMigrations(STEPS).upgrade(1, Decimal(13))


def test_a_migration_returning_none_is_bad_stored_data_and_deletes_nothing(
    make_bot, timed, caplog
):
    seed(timed, '{"count": 5}', Decimal(1))
    ran: list[Any] = []

    def add_field(data: Any) -> None:  # changes the data in place and forgets to return it
        data["extra"] = 0

    async def handler(update, context):
        ran.append(context.session)

    sessions = Sessions(storage=timed.storage, migrations={1: lambda d: d, 2: add_field})
    bot = make_bot(sessions, [every_update(handler)])
    assert bot.process(message("look")) == "bad_stored_data"
    assert ran == []
    assert stored_row(timed)[0] == Decimal(1)
    assert json.loads(timed.stored_text(BOT, "", KEY)) == {"count": 5}
    assert "migration to version 2 returned None" in caplog.text


def test_a_release_without_migrations_keeps_the_version_so_no_step_runs_twice(make_bot, timed):
    """A rollback to a release from before the migrations, then forward again: the older
    release writes the data back with its version, and the newer one's step does not run
    again over what it already upgraded."""
    seed(timed, '{"visits": 1}', Decimal(1))
    ran: list[str] = []

    def rename(data: Any) -> Any:  # version 1: "count" became "visits"
        ran.append("rename")
        return {"visits": data.pop("count", 0), **data}

    async def older(update, context):
        context.session["count"] = context.session.get("count", 0) + 1

    async def newer(update, context):
        context.session["visits"] += 1

    make_bot(Sessions(storage=timed.storage), [every_update(older)]).process(message("old"))
    assert stored_row(timed)[0] == Decimal(1)
    bot = make_bot(Sessions(storage=timed.storage, migrations={1: rename}), [every_update(newer)])
    assert bot.process(message("new")) == "committed"
    assert ran == []
    assert json.loads(timed.stored_text(BOT, "", KEY)) == {"visits": 2, "count": 1}


def test_timeouts_and_migrations_together(make_bot, timed, clock):
    seed(timed, "1", Decimal(1))
    sessions = Sessions(
        storage=timed.storage,
        initial=lambda: 0,
        ttl=timedelta(seconds=10),
        migrations={1: lambda n: n, 2: lambda n: n * 100},
    )
    seen: list[Any] = []

    async def handler(update, context):
        seen.append(context.session)

    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("look"))
    assert seen == [100]
    assert stored_row(timed) == (Decimal(2), clock.now + timedelta(seconds=10))
    clock.advance(timedelta(seconds=11))
    bot.process(message("look"))
    assert seen == [100, 0]
    assert stored_row(timed) is None
