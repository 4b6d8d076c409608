"""Session keys compare byte for byte on every database (migration 0002).

A resolver of your own may rely on case or spaces (a key from a username, a code):
``Pizza`` and ``pizza`` must never be one session, on MariaDB either, whose default
collations ignore case and trailing spaces.
"""

from __future__ import annotations

import importlib
import unicodedata
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from telegram import Update
from telegram.ext import TypeHandler

from botsessions import Sessions
from botsessions.models import Session

from .updates import message

BOT = 123456
NO_PAD_BINARY = importlib.import_module("botsessions.migrations.0002_exact_keys").NO_PAD_BINARY

# Texts that case-, space-, accent- or width-insensitive comparisons would merge.
NEAR_TWINS = [
    "pizza",
    "Pizza",
    "PIZZA",
    "pizza ",
    "pizza  ",
    " pizza",
    "pizzа",  # a Cyrillic a
    "ｐizza",  # a full-width p
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "straße",
    "strasse",
]


@pytest.mark.django_db
def test_keys_that_differ_in_any_byte_are_different_sessions(make_bot: Any) -> None:
    async def count(update: Any, context: Any) -> None:
        context.session["n"] += 1

    sessions = Sessions(
        initial=lambda: {"n": 0}, key=lambda update: f"order:{update.message.text}"
    )
    bot = make_bot(sessions, [TypeHandler(Update, count)])
    for times, text in enumerate(NEAR_TWINS, start=1):
        for _ in range(times):
            assert bot.process(message(text)) == "committed"
    rows = dict(Session.objects.values_list("key", "data"))
    assert rows == {f"order:{text}": {"n": n} for n, text in enumerate(NEAR_TWINS, start=1)}


def key_collations() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'botsessions_session' "
            "AND column_name IN ('key', 'fragment')"
        )
        return {name.lower(): collation for name, collation in cursor.fetchall()}


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "mysql", reason="collations are MySQL/MariaDB's")
def test_mysql_key_columns_are_binary_without_padding() -> None:
    expected = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
    assert key_collations() == {"key": expected, "fragment": expected}


@pytest.mark.django_db(transaction=True)
def test_the_migration_goes_back_and_forth_on_every_database() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("botsessions", "0001_initial")])
    if connection.vendor == "mysql":
        assert key_collations()["key"] not in NO_PAD_BINARY  # the table's default again
    executor.loader.build_graph()
    executor.migrate([("botsessions", "0002_exact_keys")])
    if connection.vendor == "mysql":
        assert key_collations()["key"] in NO_PAD_BINARY
    Session.objects.create(bot_id=BOT, key="a", data={})
    Session.objects.create(bot_id=BOT, key="a ", data={})
    Session.objects.create(bot_id=BOT, key="A", data={})
    assert Session.objects.filter(key="a").count() == 1
