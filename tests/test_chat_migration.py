"""Per-chat sessions follow a group when Telegram turns it into a supergroup."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from telegram.ext import MessageHandler, filters

from botsessions import Fragment, Sessions, per_chat, per_topic, per_user, per_user_in_chat

from .probes import RecordingStorage
from .sql import deadlock_with_another_connection
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
    # No handler wants it; the rows moved, in its commit.
    assert bot.process(notice) == "committed"
    assert probe.stored_text(BOT, "chat", f"chat:{GROUP}") is None
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":2}'
    assert probe.stored_text(BOT, "member", f"chat:{SUPERGROUP}:user:{BOB}") == '{"n":2}'
    assert probe.stored_text(BOT, "user", f"user:{BOB}") == '{"n":2}'  # not per chat
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":3}'


def test_the_second_announcement_finds_nothing_to_move(make_bot, probe):
    bot = make_bot(sessions(probe.storage), handlers())
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "committed"
    assert bot.process(service_message(SUPERGROUP, migrate_from_chat_id=GROUP)) == "skipped"
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
    the update's own) were locked in one go; a failing handler does not take the move
    back (nobody delivers the update again), only its own writes."""
    from botsessions.models import Session
    from botsessions.unit import UnitOfWork

    locked: list[list[str]] = []
    real_lock = UnitOfWork.lock

    def lock(unit: UnitOfWork, keys: Any) -> None:
        locked.append(sorted(f"{key.fragment}/{key.key}" for key in keys))
        real_lock(unit, keys)

    async def fail(update, context):
        context.session.chat["pizza"] += 10
        await Session.objects.acreate(bot_id=1, fragment="handler", key="x", data={})
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
    assert Session.objects.filter(key__contains=str(SUPERGROUP)).count() == 2  # kept
    assert Session.objects.filter(key__contains=str(GROUP)).count() == 0
    assert not Session.objects.filter(fragment="handler").exists()  # the handler's: not
    assert Session.objects.get(fragment="chat").data == {"pizza": 1}


@pytest.mark.parametrize("announcement", ["migrate_to", "migrate_from"])
def test_a_handler_failing_on_both_notices_leaves_the_sessions_moved(
    make_bot, probe, announcement
):
    async def fail(update, context):
        raise RuntimeError("handler bug")

    bot = make_bot(
        sessions(probe.storage), [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, fail)]
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    first = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    second = service_message(SUPERGROUP, migrate_from_chat_id=GROUP)
    if announcement == "migrate_from":
        first, second = second, first
    assert bot.process(first) == "handler_failed"
    assert bot.process(second) == "handler_failed"
    assert probe.stored_text(BOT, "chat", f"chat:{GROUP}") is None
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":1}'
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"pizza":2}'


def test_the_moves_stand_when_the_update_is_refused_for_redelivery(make_bot, monkeypatch):
    """The update's own writes fail (a 503): the moves commit all the same, and the
    redelivery finds nothing left to move."""
    from botsessions.errors import StorageError
    from botsessions.models import Session
    from botsessions.storage.db import DatabaseStorage

    async def notice_seen(update, context):
        context.session.chat["noticed"] = True

    bot = make_bot(
        sessions(None), [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, notice_seen)]
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    real = DatabaseStorage.commit_sync

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("disk full")

    monkeypatch.setattr(DatabaseStorage, "commit_sync", broken)
    notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    with pytest.raises(StorageError):
        bot.process(notice)
    moved = Session.objects.filter(key__startswith=f"chat:{SUPERGROUP}")
    assert moved.count() == 2
    monkeypatch.setattr(DatabaseStorage, "commit_sync", real)
    assert bot.process(notice) == "committed"
    assert moved.count() == 2
    assert Session.objects.get(fragment="chat", key=f"chat:{SUPERGROUP}").data == {"pizza": 1}


def test_a_handler_whose_database_error_spoiled_the_transaction_leaves_the_moves(make_bot):
    """A database error inside Django's own savepoint-less blocks (bulk_create) marks the
    transaction for rollback even when it propagates: the handler's part is rolled back,
    the moves commit, and the update ends as a failed handler's (200), not a 503."""
    from botsessions.models import Session

    async def clash(update, context):
        row = Session(bot_id=1, fragment="handler", key="x", data={})
        await Session.objects.acreate(bot_id=1, fragment="handler", key="x", data={})
        await Session.objects.abulk_create([row])

    bot = make_bot(
        sessions(None), [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, clash)]
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "handler_failed"
    assert Session.objects.filter(key__startswith=f"chat:{SUPERGROUP}").count() == 2
    assert not Session.objects.filter(fragment="handler").exists()
    assert bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB)) == "committed"


@pytest.mark.django_db(transaction=True)
def test_a_failed_handlers_on_commit_callbacks_do_not_run(make_bot):
    from asgiref.sync import sync_to_async
    from django.db import transaction

    fired: list[str] = []

    async def fail(update, context):
        await sync_to_async(transaction.on_commit)(lambda: fired.append("sent"))
        raise RuntimeError("handler bug")

    bot = make_bot(
        sessions(None), [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, fail)]
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "handler_failed"
    assert fired == []


# -- prefixes, resolvers of your own, and what never moves ---------------------------------


def per_room(update: Any) -> str | None:
    """A resolver of someone's own: one session per user in a "room" (a chat)."""
    chat, user = update.effective_chat, update.effective_user
    if chat is None or user is None:
        return None
    return f"room:{chat.id}:{user.id}"


per_room.chat_key = lambda chat_id: f"room:{chat_id}"  # type: ignore[attr-defined]


def per_chat_unmoved(update: Any) -> str | None:
    """Built-in keys, but this fragment asks to stay where it is."""
    return per_chat(update)


per_chat_unmoved.chat_key = None  # type: ignore[attr-defined]


def prefixed(storage: Any) -> Sessions:
    return Sessions.multi(
        chat=Fragment(initial=lambda: {"n": 0}, key=per_chat, prefix="pizza:", storage=storage),
        member=Fragment(
            initial=lambda: {"n": 0}, key=per_user_in_chat, prefix="m/", storage=storage
        ),
        topic=Fragment(initial=lambda: {"n": 0}, key=per_topic, prefix="t-", storage=storage),
        user=Fragment(initial=lambda: {"n": 0}, key=per_user, prefix="pizza:", storage=storage),
        room=Fragment(initial=lambda: {"n": 0}, key=per_room, prefix="r:", storage=storage),
        stay=Fragment(initial=lambda: {"n": 0}, key=per_chat_unmoved, storage=storage),
        plain=Fragment(initial=lambda: {"n": 0}, key=per_chat, storage=storage),
        migrate_chats=True,
    )


async def count_all(update: Any, context: Any) -> None:
    for name in ("chat", "member", "topic", "user", "room", "stay", "plain"):
        getattr(context.session, name)["n"] += 1


@pytest.mark.parametrize("announcement", ["migrate_to", "migrate_from"])
def test_fragments_with_a_prefix_or_a_resolver_of_your_own_move_too(make_bot, probe, announcement):
    bot = make_bot(prefixed(probe.storage), [MessageHandler(filters.TEXT, count_all)])
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    if announcement == "migrate_to":
        bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    else:
        bot.process(service_message(SUPERGROUP, migrate_from_chat_id=GROUP))
    moved = {
        "chat": "pizza:chat:{}",
        "member": f"m/chat:{{}}:user:{BOB}",
        "topic": "t-chat:{}",
        "room": f"r:room:{{}}:{BOB}",
        "plain": "chat:{}",
    }
    for fragment, key in moved.items():
        assert probe.stored_text(BOT, fragment, key.format(GROUP)) is None, fragment
        assert probe.stored_text(BOT, fragment, key.format(SUPERGROUP)) == '{"n":1}', fragment
    assert probe.stored_text(BOT, "user", f"pizza:user:{BOB}") == '{"n":1}'  # not per chat
    assert probe.stored_text(BOT, "stay", f"chat:{GROUP}") == '{"n":1}'  # chat_key = None
    assert probe.stored_text(BOT, "stay", f"chat:{SUPERGROUP}") is None


def test_prefixed_rows_never_overwrite_what_the_supergroup_has(make_bot, probe):
    bot = make_bot(prefixed(probe.storage), [MessageHandler(filters.TEXT, count_all)])
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    bot.process(message("🍕", chat_id=SUPERGROUP, user_id=BOB))
    bot.process(service_message(SUPERGROUP, migrate_from_chat_id=GROUP))
    assert probe.stored_text(BOT, "chat", f"pizza:chat:{SUPERGROUP}") == '{"n":2}'
    assert probe.stored_text(BOT, "chat", f"pizza:chat:{GROUP}") == '{"n":1}'
    assert probe.stored_text(BOT, "room", f"r:room:{SUPERGROUP}:{BOB}") == '{"n":2}'


def test_keys_of_a_chat_are_the_chats_key_or_continue_it_after_a_colon(make_bot, probe):
    """Chat -40's keys never include chat -401's, with a prefix as without."""
    bot = make_bot(prefixed(probe.storage), [MessageHandler(filters.TEXT, count_all)])
    bot.process(message("🍕", chat_id=-40, user_id=BOB))
    bot.process(message("🍕", chat_id=-401, user_id=BOB))
    bot.process(service_message(-40, migrate_to_chat_id=SUPERGROUP))
    assert probe.stored_text(BOT, "chat", "pizza:chat:-401") == '{"n":1}'
    assert probe.stored_text(BOT, "room", f"r:room:-401:{BOB}") == '{"n":1}'
    assert probe.stored_text(BOT, "chat", f"pizza:chat:{SUPERGROUP}") == '{"n":1}'


def test_guest_sessions_of_the_group_stay(make_bot, probe):
    """A guest chat is not the bot's chat, even when Telegram migrates a group it shares
    an id with; and an edit never announces a migration."""
    from telegram import Update
    from telegram.ext import TypeHandler

    from .updates import edited_message, guest_message

    async def count(update: Any, context: Any) -> None:
        context.session["n"] += 1

    sessions = Sessions(initial=lambda: {"n": 0}, storage=probe.storage, migrate_chats=True)
    bot = make_bot(sessions, [TypeHandler(Update, count)])
    bot.process(guest_message(chat_id=GROUP, user_id=BOB))
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    edit = edited_message(chat_id=GROUP, user_id=BOB)
    edit["edited_message"]["migrate_to_chat_id"] = SUPERGROUP
    bot.process(edit)
    assert probe.stored_text(BOT, "", f"chat:{GROUP}") == '{"n":2}'  # not moved by the edit
    bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    assert probe.stored_text(BOT, "", f"guest:chat:{GROUP}") == '{"n":1}'
    assert probe.stored_text(BOT, "", f"chat:{SUPERGROUP}") == '{"n":2}'


def test_prefixed_keys_are_locked_with_the_rest_in_one_go(make_bot, monkeypatch):
    """The moved keys of every fragment, found by the storage's own search or by their
    heads, are locked in the first acquisition, with the update's own keys."""
    from botsessions.unit import UnitOfWork

    calls: list[set[str]] = []
    real_lock = UnitOfWork.lock

    def lock(unit: UnitOfWork, keys: Any) -> None:
        calls.append({f"{key.fragment}/{key.key}" for key in keys})
        real_lock(unit, keys)

    bot = make_bot(prefixed(None), [MessageHandler(filters.TEXT, count_all)])
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    monkeypatch.setattr(UnitOfWork, "lock", lock)
    bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    expected = {
        f"{fragment}/{key.format(chat)}"
        for fragment, key in {
            "chat": "pizza:chat:{}",
            "member": f"m/chat:{{}}:user:{BOB}",
            "topic": "t-chat:{}",
            "room": f"r:room:{{}}:{BOB}",
            "plain": "chat:{}",
        }.items()
        for chat in (GROUP, SUPERGROUP)
    }
    assert expected <= calls[0]
    assert all(later <= calls[0] for later in calls[1:])


# -- a deadlock the database resolves by rolling back the whole transaction ---------------


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_a_handler_catches_never_loses_the_moves(make_bot, settings):
    """MariaDB rolls back the whole transaction of a deadlock's victim, not just the
    handler's savepoint: the update (the moves with it) must then be refused for
    redelivery, not answered as done. PostgreSQL rolls back only the savepoint: the
    handler caught the error and the update commits."""
    from asgiref.sync import sync_to_async
    from django.db import OperationalError, connection

    from botproject.models import Purchase
    from botsessions.errors import StorageError
    from botsessions.models import Session

    if connection.vendor == "sqlite":
        pytest.skip("SQLite has one writer: two connections never wait for each other")
    settings.BOTSESSIONS_LOCK_TIMEOUT = 10
    first, second = (Purchase.objects.create(chat_id=1, user_id=1, item="x").pk for _ in "ab")
    done = threading.Event()
    caught: list[Exception] = []

    async def clash(update, context):
        if caught:
            return  # the redelivery runs without the other connection
        try:
            await sync_to_async(deadlock_with_another_connection)(first, second, done)
        except OperationalError as exc:
            caught.append(exc)

    bot = make_bot(
        sessions(None), [*handlers(), MessageHandler(filters.StatusUpdate.MIGRATE, clash)]
    )
    bot.process(message("🍕", chat_id=GROUP, user_id=BOB))
    notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    moved = Session.objects.filter(key__startswith=f"chat:{SUPERGROUP}")
    if connection.vendor == "postgresql":
        assert bot.process(notice) == "committed"
    else:
        with pytest.raises(StorageError, match="Deadlock found"):
            bot.process(notice)
        assert not moved.exists()  # nothing of it was kept: Telegram delivers it again
        assert done.wait(10)
        assert bot.process(notice) == "committed"
    assert caught, "the handler saw no deadlock: the test set none up"
    assert done.wait(10)  # its connection closed before the test's teardown
    assert moved.count() == 2
    assert Session.objects.get(fragment="chat", key=f"chat:{SUPERGROUP}").data == {"pizza": 1}


def test_a_resolver_failing_on_the_notice_is_a_handler_failure_not_a_server_error(make_bot, probe):
    """The migration resolves keys before PTB dispatches: its errors are the handlers'."""

    def by_first_word(update: Any) -> str:
        return "word:" + update.effective_message.text.split()[0]  # a notice has no text

    broken = Sessions.multi(
        chat=Fragment(initial=lambda: {"pizza": 0}, key=per_chat, storage=probe.storage),
        word=Fragment(initial=dict, key=by_first_word, storage=probe.storage),
        migrate_chats=True,
    )
    bot = make_bot(broken, handlers())
    notice = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    assert bot.process(notice) == "handler_failed"
    assert isinstance(bot.errors[0], AttributeError)


def test_a_chat_key_that_is_not_text_fails_the_notice_with_a_clear_error(make_bot, probe):
    def numbered(update: Any) -> str | None:
        chat = update.effective_chat
        return None if chat is None else f"n:{chat.id}"

    numbered.chat_key = lambda chat_id: chat_id  # type: ignore[attr-defined]
    wrong = Sessions(initial=dict, key=numbered, storage=probe.storage, migrate_chats=True)
    bot = make_bot(wrong, handlers())
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "handler_failed"
    assert "key.chat_key of fragment '' returned int, not str" in str(bot.errors[0])


def test_a_key_the_move_would_make_too_long_stays_and_the_rest_moves(make_bot, probe, caplog):
    prefix = "p" * (255 - len(f"chat:{GROUP}"))  # the group's key fits, the supergroup's not
    both = Sessions.multi(
        long=Fragment(
            initial=lambda: {"n": 0}, key=per_chat, prefix=prefix, storage=probe.storage
        ),
        chat=Fragment(initial=lambda: {"n": 0}, key=per_chat, storage=probe.storage),
        migrate_chats=True,
    )

    async def count_both(update: Any, context: Any) -> None:
        context.session.long["n"] += 1
        context.session.chat["n"] += 1

    bot = make_bot(both, [MessageHandler(filters.TEXT, count_both)])
    assert bot.process(message("🍕", chat_id=GROUP, user_id=BOB)) == "committed"
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "committed"
    assert probe.stored_text(BOT, "long", f"{prefix}chat:{GROUP}") == '{"n":1}'
    assert probe.stored_text(BOT, "chat", f"chat:{SUPERGROUP}") == '{"n":1}'
    assert "its key there would be longer than 255 characters" in caplog.text


def test_a_storage_failing_during_the_move_is_a_redelivery_not_a_handlers_error(
    make_bot, monkeypatch
):
    """Delivered again (the webhook's 503), as a failed read: error handlers, which may
    tell the chat that something went wrong, hear nothing of an outage."""
    from botsessions import StorageError
    from botsessions.storage.db import DatabaseStorage

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("the database went away")

    bot = make_bot(sessions(None), handlers())
    monkeypatch.setattr(DatabaseStorage, "rename_chat", down)
    with pytest.raises(StorageError, match="went away"):
        bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP))
    assert bot.errors == []
