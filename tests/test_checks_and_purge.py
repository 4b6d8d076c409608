"""System checks, and purging expired sessions and old exactly-once records."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from botsessions.checks import check_settings
from botsessions.models import ProcessedUpdate, Session
from botsessions.purge import prune_processed_updates, purge_expired_sessions

APP = "botproject.bot.build_application"


def ids(**settings: object) -> list[str]:
    with override_settings(**settings):
        return [message.id for message in check_settings()]


def test_project_settings_pass():
    assert ids() == []


def test_sessions_and_their_records_routed_apart_are_an_error(monkeypatch):
    from django.db import router

    routed = router.db_for_write

    def records_elsewhere(model, **hints):
        return "elsewhere" if model is ProcessedUpdate else routed(model, **hints)

    monkeypatch.setattr(router, "db_for_write", records_elsewhere)
    assert ids() == ["botsessions.E014"]


def test_missing_secret_warns_in_debug_and_fails_otherwise():
    bots = {"default": {"APPLICATION": APP}}
    assert ids(BOTSESSIONS_BOTS=bots, DEBUG=True) == ["botsessions.W001"]
    assert ids(BOTSESSIONS_BOTS=bots, DEBUG=False) == ["botsessions.E008"]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"USE_TZ": False}, "botsessions.E001"),
        ({"BOTSESSIONS_BOTS": ["default"]}, "botsessions.E002"),
        ({"BOTSESSIONS_BOTS": {"a": "x"}}, "botsessions.E003"),
        (
            {"BOTSESSIONS_BOTS": {"a": {"APPLICATION": 3, "WEBHOOK_SECRET": "s"}}},
            "botsessions.E004",
        ),
        ({"BOTSESSIONS_MAX_BODY_SIZE": 0}, "botsessions.E005"),
        ({"BOTSESSIONS_PURGE_BATCH_SIZE": "many"}, "botsessions.E005"),
        ({"BOTSESSIONS_PURGE_BATCH_SIZE": 10_001}, "botsessions.E005"),
        ({"BOTSESSIONS_ADMIN_BATCH_SIZE": -1}, "botsessions.E005"),
        ({"BOTSESSIONS_PROCESSED_UPDATES_RETENTION": timedelta(hours=1)}, "botsessions.E006"),
        # Past what a date minus it (purgesessions) or a Redis expiry can hold.
        ({"BOTSESSIONS_PROCESSED_UPDATES_RETENTION": float("inf")}, "botsessions.E006"),
        ({"BOTSESSIONS_PROCESSED_UPDATES_RETENTION": 10**20}, "botsessions.E006"),
        ({"BOTSESSIONS_PROCESSED_UPDATES_RETENTION": timedelta.max}, "botsessions.E006"),
        ({"BOTSESSIONS_PROCESSED_UPDATES_RETENTION": True}, "botsessions.E006"),
        (
            {"BOTSESSIONS_BOTS": {"a": {"APPLICATION": APP, "WEBHOOK_SECRET": 5}}},
            "botsessions.E007",
        ),
        (
            {"BOTSESSIONS_BOTS": {"a": {"APPLICATION": APP, "WEBHOOK_SECRET": "bad secret!"}}},
            "botsessions.E009",
        ),
        (
            {
                "BOTSESSIONS_BOTS": {
                    "a": {"APPLICATION": APP, "WEBHOOK_SECRET": "s", "ALLOWED_UPDATES": "message"}
                }
            },
            "botsessions.E010",
        ),
        ({"BOTSESSIONS_LOCK_TIMEOUT": 0}, "botsessions.E011"),
        ({"BOTSESSIONS_LOCK_TIMEOUT": 45}, "botsessions.E011"),
        ({"BOTSESSIONS_LOCK_TIMEOUT": "10"}, "botsessions.E011"),
    ],
)
def test_each_misconfiguration_has_its_id(settings, expected):
    assert expected in ids(**settings)


def test_checks_run_through_manage_py_check():
    from django.core.management.base import SystemCheckError

    with override_settings(USE_TZ=False), pytest.raises(SystemCheckError, match="E001"):
        call_command("check")


def make_rows(count: int, expires_at: object, start: int = 0) -> None:
    Session.objects.bulk_create(
        Session(bot_id=1, key=f"chat:{n}", data={}, expires_at=expires_at)
        for n in range(start, start + count)
    )


@pytest.mark.django_db
def test_purge_deletes_only_expired_sessions_in_batches():
    now = timezone.now()
    make_rows(25, now - timedelta(seconds=1))
    make_rows(5, now + timedelta(hours=1), start=100)
    make_rows(3, None, start=200)
    progress: list[int] = []
    assert purge_expired_sessions(batch_size=10, progress=progress.append) == 25
    assert progress == [10, 20, 25]
    assert Session.objects.count() == 8


@pytest.mark.django_db
def test_records_are_kept_for_the_redelivery_window():
    now = timezone.now()
    ProcessedUpdate.objects.create(bot_id=1, update_id=1, processed_at=now - timedelta(hours=26))
    ProcessedUpdate.objects.create(bot_id=1, update_id=2, processed_at=now - timedelta(hours=23))
    assert prune_processed_updates() == 1
    assert list(ProcessedUpdate.objects.values_list("update_id", flat=True)) == [2]


@pytest.mark.django_db
def test_purge_command_reports_what_it_did():
    make_rows(3, timezone.now() - timedelta(minutes=1))
    out = StringIO()
    call_command("purgesessions", "--batch-size", "2", stdout=out)
    text = out.getvalue()
    assert "sessions: 2 deleted so far" in text
    assert "Deleted 3 expired session(s) and 0 processed-update record(s)." in text
    assert Session.objects.count() == 0


@pytest.mark.django_db
def test_purge_command_speaks_of_redis_only_when_a_bot_uses_it(settings):
    def purge() -> str:
        out = StringIO()
        call_command("purgesessions", stdout=out)
        return out.getvalue()

    assert "Redis" not in purge()  # the tests' demo bot keeps its sessions in the database

    pytest.importorskip("redis")
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "cache": {"APPLICATION": "tests.test_admin_storages.build_cache_application"},
    }
    assert "in Redis expire by themselves: they need no purging." in purge()


@pytest.mark.parametrize("size", ["0", "-1", "abc", "1.5", "10001", "99999999999999999999"])
def test_purge_command_refuses_a_bad_batch_size(size):
    with pytest.raises(CommandError, match="must be a whole number from 1 to 10,000"):
        call_command("purgesessions", "--batch-size", size)


def test_purge_command_refuses_a_batch_size_setting_beyond_the_limit(settings):
    settings.BOTSESSIONS_PURGE_BATCH_SIZE = 99999999999999999999
    with pytest.raises(CommandError, match="BOTSESSIONS_PURGE_BATCH_SIZE must be a whole"):
        call_command("purgesessions")


@pytest.mark.django_db
def test_purge_takes_batches_up_to_the_limit():
    make_rows(3, timezone.now() - timedelta(minutes=1))
    call_command("purgesessions", "--batch-size", "10000", stdout=StringIO())
    assert Session.objects.count() == 0


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_a_sqlite_timeout_longer_than_the_lock_timeout_warns(settings):
    other = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    databases = {"default": settings.DATABASES["default"], "other": other}
    assert "botsessions.W002" not in ids(DATABASES=databases)  # sqlite3's default: 5 s
    other["OPTIONS"] = {"timeout": 30}
    assert "botsessions.W002" in ids(DATABASES=databases)
    assert "botsessions.W002" not in ids(DATABASES=databases, BOTSESSIONS_LOCK_TIMEOUT=30)


@pytest.mark.django_db
def test_purge_runs_where_a_bot_cannot_be_built(settings, caplog):
    """A cron job without the bot's token: the bot is left out with a warning, as the
    admin leaves it out, and the purge is done."""
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "elsewhere": {"APPLICATION": "tests.failing_bot_module.build"},
    }
    out = StringIO()
    call_command("purgesessions", stdout=out)
    assert "Deleted 0 expired session(s)" in out.getvalue()
    assert "bot 'elsewhere' is not available here" in caplog.text


def build_elsewhere_application() -> Any:
    """A bot whose sessions a DatabaseStorage keeps in the "elsewhere" database."""
    from telegram.ext import ApplicationBuilder

    from botsessions import Sessions, use_sessions
    from botsessions.storage.db import DatabaseStorage

    sessions = Sessions(initial=dict, storage=DatabaseStorage(using="elsewhere"))
    return use_sessions(ApplicationBuilder().token("333333:other-token"), sessions).build()


@pytest.mark.django_db(databases=["default", "elsewhere"])
def test_purge_reaches_the_databases_the_bots_storages_write_to(settings):
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "other": {"APPLICATION": "tests.test_checks_and_purge.build_elsewhere_application"},
    }
    past = timezone.now() - timedelta(minutes=1)
    Session.objects.using("elsewhere").create(
        bot_id=333333, key="chat:1", data={}, expires_at=past
    )
    ProcessedUpdate.objects.using("elsewhere").create(
        bot_id=333333, update_id=1, processed_at=timezone.now() - timedelta(hours=26)
    )
    out = StringIO()
    call_command("purgesessions", stdout=out)
    assert "Deleted 1 expired session(s) and 1 processed-update record(s)" in out.getvalue()
    assert not Session.objects.using("elsewhere").exists()
