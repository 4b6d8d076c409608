"""Per-chat sessions follow a group when Telegram turns it into a supergroup."""

from __future__ import annotations

from typing import Any

import pytest
from telegram.ext import MessageHandler, filters

from botsessions import Fragment, Sessions, per_chat, per_user, per_user_in_chat

from .probes import RecordingStorage
from .updates import BOB, GROUP, SUPERGROUP, message, service_message

BOT = 123456

pytestmark = pytest.mark.django_db


def sessions(storage: Any, migrate: bool = True) -> Sessions:
    return Sessions.multi(
        chat=Fragment(initial=lambda: {"pizza": 0}, key=per_chat, storage=storage),
        member=Fragment(initial=lambda: {"n": 0}, key=per_user_in_chat, storage=storage),
        user=Fragment(initial=lambda: {"n": 0}, key=per_user, storage=storage),
        migrate_chats=migrate,
    )


async def count(update, context):
    context.session.chat["pizza"] += 1
    context.session.member["n"] += 1
    context.session.user["n"] += 1


def handlers() -> list[Any]:
    return [MessageHandler(filters.TEXT, count)]


@pytest.mark.parametrize("announcement", ["migrate_to", "migrate_from"])
def test_sessions_move_to_the_supergroup(make_bot, probe, announcement):
    bot = make_bot(sessions(probe.storage), handlers())
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    if announcement == "migrate_to":
        notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    else:
        notice = service_message(SUPERGROUP, migrate_from_chat_id=GROUP)
    assert bot.process(notice) == "skipped"  # no handler wants it; the rows moved anyway
    assert probe.stored_text(BOT, "chat", f"chat:{GROUP}") is None
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":2}'
    assert probe.stored_text(BOT, "member", f"chat:{SUPERGROUP}:user:{BOB}") == '{"n":2}'
    assert probe.stored_text(BOT, "user", f"user:{BOB}") == '{"n":2}'  # not per chat
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":3}'


def test_the_second_announcement_finds_nothing_to_move(make_bot, probe):
    bot = make_bot(sessions(probe.storage), handlers())
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    bot.process(service_message(SUPERGROUP, migrate_from_chat_id=GROUP))
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":1}'


def test_data_the_supergroup_already_has_is_never_overwritten(make_bot, probe):
    bot = make_bot(sessions(probe.storage), handlers())
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    # The supergroup spoke before the announcement arrived (Telegram does not promise order).
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    bot.process(service_message(SUPERGROUP, migrate_from_chat_id=GROUP))
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":2}'
    assert probe.stored_text(BOT, "chat", f"chat:{GROUP}") == '{"pizza":1}'


def test_without_the_option_nothing_moves(make_bot, probe):
    bot = make_bot(sessions(probe.storage, migrate=False), handlers())
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    assert probe.stored_text(BOT, "chat", f"chat:{GROUP}") == '{"pizza":1}'
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") is None


def test_other_bots_rows_stay_put(make_bot):
    storage = RecordingStorage()
    first = make_bot(sessions(storage), handlers(), token="111:a")
    second = make_bot(sessions(storage), handlers(), token="222:b")
    first.process(message("🍕", chat_id=GROUP, user_id=BOB))
    second.process(message("🍕", chat_id=GROUP, user_id=BOB))
    first.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    from botsessions import StorageKey

    assert storage.stored(StorageKey(222, "chat", f"chat:{GROUP}")) is not None
    assert storage.stored(StorageKey(111, "chat", f"chat:{SUPERGROUP}")) is not None


def test_the_move_is_part_of_the_update_under_the_locks_of_both_chats(make_bot, monkeypatch):
    """The rows move inside the update's transaction, after the keys of both chats (and
    the update's own) were locked in one go; a failing handler takes the move back."""
    from botsessions.models import Session
    from botsessions.unit import UnitOfWork

    locked: list[list[str]] = []
    real_lock = UnitOfWork.lock

    def lock(unit: UnitOfWork, keys: Any) -> None:
        locked.append(sorted(f"{key.fragment}/{key.key}" for key in keys))
        real_lock(unit, keys)

    async def fail(update, context):
        raise RuntimeError("handler bug")

    bot = make_bot(
        sessions(None),
        [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, fail)],
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    monkeypatch.setattr(UnitOfWork, "lock", lock)
    notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    assert bot.process(notice) == "handler_failed"
    moved = {
        f"chat/chat:{GROUP}",
        f"chat/chat:{SUPERGROUP}",
        f"member/chat:{GROUP}:user:{BOB}",
        f"member/chat:{SUPERGROUP}:user:{BOB}",
    }
    assert len(locked) == 1  # one acquisition: the moved keys with the update's own
    assert moved < set(locked[0])
    assert Session.objects.filter(key__contains=str(SUPERGROUP)).count() == 0  # rolled back
    assert Session.objects.filter(key__contains=str(GROUP)).count() == 2
