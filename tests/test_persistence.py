"""DjangoPersistence: PTB's own state stored per update, through the session engine.

The cases follow the intent of PTB's own persistence suite (``test_basepersistence.py``)
where it applies to a persistence that works per update: data written by a handler is
stored (blocking or not), conversations are kept and end, ``drop_*`` and
``migrate_chat_data`` take effect, nothing is loaded at start-up. Its timer cases
(``update_interval``, flushing at shutdown) have no counterpart: every update commits
its own state. Restarts are applications built afresh; processes, see
``tests/test_persistence_processes.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any, TypedDict

import pytest
import typing_extensions
from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from telegram import Update
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    PersistenceInput,
    TypeHandler,
    filters,
)

from botsessions import (
    ConfigurationError,
    DataclassSerializer,
    DjangoPersistence,
    JSONSerializer,
    SessionContext,
    SessionDataError,
    SessionNotLoadedError,
    Sessions,
    StorageError,
    use_sessions,
)
from botsessions.models import ProcessedUpdate, Session
from botsessions.persistence import ConversationStates, conversation_key
from botsessions.ptb import _PTB_SLOTS, SessionApplication

from .harness import TOKEN
from .sql import locked, statements
from .updates import (
    ALICE,
    BOB,
    CONNECTION,
    GROUP,
    SUPERGROUP,
    business_message,
    callback_query,
    channel_post,
    edited_message,
    guest_message,
    message,
    service_message,
)

pytestmark = pytest.mark.django_db

BOT = 123456


def with_persistence(persistence: DjangoPersistence | None = None) -> Any:
    """The harness's ``configure``: the one line a PicklePersistence bot changes."""
    return lambda builder: builder.persistence(persistence or DjangoPersistence())


def row(fragment: str, key: str) -> Any:
    found = Session.objects.filter(bot_id=BOT, fragment=fragment, key=key).first()
    return None if found is None else found.data


def rows(prefix: str = "ptb.") -> dict[tuple[str, str], Any]:
    return {
        (r.fragment, r.key): r.data
        for r in Session.objects.filter(bot_id=BOT, fragment__startswith=prefix)
    }


# -- chat_data, user_data, bot_data ---------------------------------------------------


async def remember(update: Any, context: Any) -> None:
    context.chat_data["chat"] = context.chat_data.get("chat", 0) + 1
    context.user_data["user"] = context.user_data.get("user", 0) + 1
    context.bot_data["bot"] = context.bot_data.get("bot", 0) + 1


async def recall(update: Any, context: Any) -> None:
    counts = (context.chat_data.get("chat"), context.user_data.get("user"))
    await update.message.reply_text(f"{counts} {context.bot_data.get('bot')}")


def counting_bot(make_bot: Any, sessions: Sessions | None = None) -> Any:
    return make_bot(
        sessions,
        [CommandHandler("recall", recall), MessageHandler(filters.TEXT, remember)],
        configure=with_persistence(),
    )


def test_handler_state_is_stored_with_its_update_and_survives_a_restart(make_bot, api):
    bot = counting_bot(make_bot)
    assert bot.process(message("hi", chat_id=GROUP, user_id=ALICE)) == "committed"
    assert bot.process(message("hi", chat_id=GROUP, user_id=BOB)) == "committed"
    # Stored at once, in the update's commit: no timer, no shutdown needed.
    assert rows() == {
        ("ptb.chat_data", f"chat:{GROUP}"): {"chat": 2},
        ("ptb.user_data", f"user:{ALICE}"): {"user": 1},
        ("ptb.user_data", f"user:{BOB}"): {"user": 1},
        ("ptb.bot_data", "bot"): {"bot": 2},
    }
    bot.close()
    restarted = counting_bot(make_bot)
    restarted.process(message("/recall", chat_id=GROUP, user_id=BOB))
    assert api.sent_texts()[-1] == "(2, 1) 2"


def test_nothing_is_loaded_at_start_up_nor_kept_after_an_update(make_bot):
    bot = counting_bot(make_bot)
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    bot.close()
    restarted = counting_bot(make_bot)
    with CaptureQueriesContext(connection) as captured:
        restarted.runner.initialize()
    assert statements(captured) == []
    application = restarted.application

    def in_memory() -> list[Any]:
        return [
            application._chat_data,
            application._user_data,
            _PTB_SLOTS["bot_data"].__get__(application),
        ]

    assert in_memory() == [{}, {}, {}]
    restarted.process(message("hi", chat_id=GROUP, user_id=ALICE))
    # PTB's in-memory mappings stay empty: each update reads its own state afresh.
    assert in_memory() == [{}, {}, {}]


def test_ptb_in_memory_state_is_refused_where_it_is_stored_per_update(make_bot, api):
    """application.bot_data, chat_data and user_data would be PTB's dicts in one
    process's memory, never stored and never seen by a handler: they raise, saying to
    use the context's; the context's own stay usable in the same handler."""
    refused: list[str] = []

    async def meddle(update: Any, context: Any) -> None:
        context.bot_data["seen"] = True  # the stored bot_data
        for poke in (
            lambda: context.application.bot_data.setdefault("x", 1),
            lambda: context.application.user_data[BOB].update(x=1),
            lambda: context.application.chat_data[GROUP],
        ):
            try:
                poke()
            except SessionNotLoadedError as exc:
                refused.append(str(exc))
        await update.message.reply_text("done")

    bot = make_bot(None, [MessageHandler(filters.TEXT, meddle)], configure=with_persistence())
    with pytest.raises(SessionNotLoadedError, match=r"context\.bot_data inside a handler"):
        bot.application.bot_data["seed"] = 1  # seeded where the application is built
    assert bot.process(message("hi", chat_id=GROUP, user_id=ALICE)) == "committed"
    assert [text.split(" is ")[0] for text in refused] == [
        "application.bot_data",
        "application.user_data",
        "application.chat_data",
    ]
    assert "context.user_data (of the update's user) inside a handler" in refused[1]
    assert api.sent_texts() == ["done"]
    assert row("ptb.bot_data", "bot") == {"seen": True}
    # What DjangoPersistence does not store stays PTB's, in memory, as before.
    bot = make_bot(
        None,
        [],
        configure=with_persistence(DjangoPersistence(PersistenceInput(bot_data=False))),
    )
    bot.application.bot_data["seed"] = 1
    assert bot.application.bot_data == {"seed": 1}


def test_read_only_state_costs_one_read_and_no_write(make_bot, api):
    bot = counting_bot(make_bot)
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/recall", chat_id=GROUP, user_id=ALICE)) == "unchanged"
    assert statements(captured) == locked("SELECT")
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("hi", chat_id=GROUP, user_id=ALICE)) == "committed"
    # The record, then the three rows that changed.
    assert statements(captured) == locked("SELECT", "INSERT", "UPDATE", "UPDATE", "UPDATE")


def test_an_update_no_handler_takes_costs_nothing_without_persistent_conversations(make_bot):
    bot = counting_bot(make_bot)
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(callback_query(chat_id=GROUP, user_id=ALICE)) == "skipped"
    assert statements(captured) == []


def test_a_failing_handler_rolls_back_user_data_with_everything_else(make_bot):
    async def pay(update: Any, context: Any) -> None:
        context.user_data["paid"] = True
        context.chat_data["orders"] = 1
        await Session.objects.acreate(bot_id=1, fragment="audit", key="k", data={})
        raise RuntimeError("card declined")

    bot = make_bot(None, [CommandHandler("pay", pay)], configure=with_persistence())
    assert bot.process(message("/pay", chat_id=GROUP, user_id=ALICE)) == "handler_failed"
    assert rows() == {}
    assert not Session.objects.filter(fragment="audit").exists()
    assert not ProcessedUpdate.objects.exists()
    assert [type(e) for e in bot.errors] == [RuntimeError]


def test_a_redelivered_update_is_not_run_again(make_bot):
    bot = counting_bot(make_bot)
    update = message("hi", chat_id=GROUP, user_id=ALICE)
    assert bot.process(update) == "committed"
    assert bot.process(update) == "duplicate"
    assert row("ptb.chat_data", f"chat:{GROUP}") == {"chat": 1}


def test_non_blocking_handlers_are_stored_once_they_finish(make_bot):
    async def slow(update: Any, context: Any) -> None:
        await asyncio.sleep(0.05)
        context.user_data["slow"] = True

    bot = make_bot(
        None, [MessageHandler(filters.TEXT, slow, block=False)], configure=with_persistence()
    )
    bot.process(message("hi", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.user_data", f"user:{ALICE}") == {"slow": True}


def test_data_that_json_would_change_is_refused_not_stored_changed(make_bot):
    async def tuple_data(update: Any, context: Any) -> None:
        context.chat_data["pair"] = (1, 2)

    bot = make_bot(None, [MessageHandler(filters.TEXT, tuple_data)], configure=with_persistence())
    assert bot.process(message("hi")) == "handler_failed"
    assert rows() == {}


def test_store_data_turns_pieces_off_as_in_ptb(make_bot):
    persistence = DjangoPersistence(PersistenceInput(bot_data=False, user_data=False))
    bot = make_bot(
        None, [MessageHandler(filters.TEXT, remember)], configure=with_persistence(persistence)
    )
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    # What is not stored is PTB's own in-memory data, as without a persistence.
    assert rows() == {("ptb.chat_data", f"chat:{GROUP}"): {"chat": 1}}
    assert bot.application.user_data[ALICE] == {"user": 1}


def test_business_chats_have_chat_data_of_their_own(make_bot):
    async def note(update: Any, context: Any) -> None:
        context.chat_data["seen"] = update.effective_message.text

    bot = make_bot(None, [TypeHandler(object, note)], configure=with_persistence())
    bot.process(message("own", chat_id=BOB, user_id=BOB))
    bot.process(business_message("business", chat_id=BOB, user_id=BOB))
    assert row("ptb.chat_data", f"chat:{BOB}") == {"seen": "own"}
    assert row("ptb.chat_data", f"business:{CONNECTION}:chat:{BOB}") == {"seen": "business"}


def test_sessions_and_ptb_state_share_one_read_and_one_commit(make_bot):
    async def both(update: Any, context: Any) -> None:
        context.session["n"] += 1
        context.user_data["n"] = context.session["n"]

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}),
        [MessageHandler(filters.TEXT, both)],
        configure=with_persistence(),
    )
    with CaptureQueriesContext(connection) as captured:
        bot.process(message("hi", chat_id=ALICE, user_id=ALICE))
    # The record, the session and user_data; chat_data and bot_data did not change.
    assert statements(captured) == locked("SELECT", "INSERT", "INSERT", "INSERT")
    assert row("", f"chat:{ALICE}") == {"n": 1}
    assert row("ptb.user_data", f"user:{ALICE}") == {"n": 1}


def test_without_sessions_context_session_says_what_to_do(make_bot):
    seen: list[BaseException] = []

    async def touch(update: Any, context: Any) -> None:
        try:
            context.session  # noqa: B018
        except SessionNotLoadedError as exc:
            seen.append(exc)

    bot = make_bot(None, [MessageHandler(filters.TEXT, touch)], configure=with_persistence())
    bot.process(message("hi"))
    assert "use_sessions(builder, sessions)" in str(seen[0])


# -- bot_data ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # on_commit sends once the update commits
def test_bot_data_written_meanwhile_refuses_the_update_instead_of_losing_a_write(make_bot, api):
    raced: list[bool] = []

    async def bump(update: Any, context: Any) -> None:
        context.bot_data["n"] = context.bot_data.get("n", 0) + 1
        await update.message.reply_text("sent at once")
        n = context.bot_data["n"]
        context.on_commit(lambda: update.message.reply_text(f"n is {n}"))
        if update.message.text == "race" and not raced:
            raced.append(True)
            # Another update wrote bot_data after this one read it.
            await sync_to_async(Session.objects.filter(fragment="ptb.bot_data").update)(
                revision=F("revision") + 1, data={"n": 10}
            )

    bot = make_bot(None, [MessageHandler(filters.TEXT, bump)], configure=with_persistence())
    bot.process(message("hi"))
    race = message("race")
    with pytest.raises(StorageError):  # the webhook answers 503: Telegram delivers it again
        bot.process(race)
    assert row("ptb.bot_data", "bot") == {"n": 1}
    assert bot.process(race) == "committed"  # the redelivery runs again
    assert row("ptb.bot_data", "bot") == {"n": 2}
    # What the handler sent directly, the rerun sent again; context.on_commit sent once.
    assert api.sent_texts() == [
        "sent at once",
        "n is 1",
        "sent at once",
        "sent at once",
        "n is 2",
    ]


def test_updates_that_do_not_write_bot_data_do_not_lock_it(make_bot):
    bot = counting_bot(make_bot)
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    run_keys: list[Any] = []
    original = bot.application.key_locks.take_free

    def spy(keys: Any) -> int:
        run_keys.append([k.fragment for k in keys])
        return original(keys)

    bot.application.key_locks.take_free = spy  # type: ignore[method-assign]
    bot.process(message("/recall", chat_id=GROUP, user_id=ALICE))
    assert run_keys == [["ptb.chat_data", "ptb.user_data"]]


# -- drop_chat_data, drop_user_data, migrate_chat_data ------------------------------------


def test_drop_chat_and_user_data_take_effect_in_the_update_commit(make_bot):
    async def forget(update: Any, context: Any) -> None:
        context.application.drop_chat_data(update.effective_chat.id)
        context.application.drop_user_data(BOB)  # another user's: deleted as it stands

    bot = make_bot(
        None,
        [CommandHandler("forget", forget), MessageHandler(filters.TEXT, remember)],
        configure=with_persistence(),
    )
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    bot.process(message("hi", chat_id=GROUP, user_id=BOB))
    bot.process(message("/forget", chat_id=GROUP, user_id=ALICE))
    assert set(rows()) == {("ptb.user_data", f"user:{ALICE}"), ("ptb.bot_data", "bot")}


class Settings(dict[str, Any]):
    """chat_data with a default, as a ContextTypes class."""

    def __init__(self) -> None:
        super().__init__(lang="en")


@pytest.mark.parametrize("chat_data", [dict, Settings])
@pytest.mark.parametrize("write_after", [False, True])
def test_after_dropping_its_own_data_a_handler_sees_fresh_data(make_bot, chat_data, write_after):
    """As in PTB: fresh ``ContextTypes`` data, stored only if the handler writes to it."""
    seen: list[Any] = []

    async def restart(update: Any, context: Any) -> None:
        context.application.drop_chat_data(update.effective_chat.id)
        context.application.drop_user_data(update.effective_user.id)
        chat = context.chat_data
        seen.extend([type(chat), dict(chat), dict(context.user_data)])
        assert context.chat_data is chat  # the same data for the rest of the update
        if write_after:
            context.chat_data["after"] = 1
            context.user_data["after"] = 2

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, chat_data=chat_data))
        builder.persistence(DjangoPersistence())

    bot = make_bot(
        None,
        [CommandHandler("restart", restart), MessageHandler(filters.TEXT, remember)],
        configure=configure,
    )
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    assert bot.process(message("/restart", chat_id=GROUP, user_id=ALICE)) == "committed"
    assert seen == [chat_data, dict(chat_data()), {}]
    stored = {key: data for key, data in rows().items() if key[0] != "ptb.bot_data"}
    if write_after:
        assert stored == {
            ("ptb.chat_data", f"chat:{GROUP}"): {**chat_data(), "after": 1},
            ("ptb.user_data", f"user:{ALICE}"): {"after": 2},
        }
    else:
        assert stored == {}  # deleted, not stored empty (nor with the class's defaults)


def test_dropping_data_never_stored_writes_nothing(make_bot):
    async def forget(update: Any, context: Any) -> None:
        context.application.drop_chat_data(update.effective_chat.id)
        context.application.drop_user_data(update.effective_user.id)

    bot = make_bot(None, [CommandHandler("forget", forget)], configure=with_persistence())
    assert bot.process(message("/forget", chat_id=GROUP, user_id=ALICE)) == "unchanged"
    assert rows() == {}


def test_drop_outside_an_update_says_why(make_bot):
    bot = counting_bot(make_bot)
    with pytest.raises(SessionNotLoadedError, match="call it from a handler"):
        bot.application.drop_chat_data(GROUP)


def test_a_job_the_handler_scheduled_cannot_drop_data_of_a_finished_update(make_bot):
    """APScheduler runs a job in a copy of the scheduling handler's context: the drop must
    not land in that update, committed long before, and be lost without a word."""
    refused: list[BaseException] = []

    async def cleanup(context: Any) -> None:
        try:
            context.application.drop_chat_data(GROUP)
        except SessionNotLoadedError as exc:
            refused.append(exc)

    async def later(update: Any, context: Any) -> None:
        context.job_queue.run_once(cleanup, 0.01)

    bot = make_bot(
        None,
        [CommandHandler("later", later), MessageHandler(filters.TEXT, remember)],
        configure=with_persistence(),
    )
    bot.runner.initialize()
    bot.runner.run(bot.application.start())  # as runbot does: the JobQueue runs
    try:
        bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
        bot.process(message("/later", chat_id=GROUP, user_id=ALICE))
        bot.runner.run(asyncio.sleep(0.3))
    finally:
        bot.runner.run(bot.application.stop())
    assert "call it from a handler" in str(refused[0])
    assert row("ptb.chat_data", f"chat:{GROUP}") == {"chat": 1}


@pytest.mark.django_db(transaction=True)
def test_a_conversation_timeout_cannot_reach_the_state_of_the_update_it_outlived(api):
    """PTB hands a conversation's TIMEOUT handlers the context of the update that started
    the wait, long processed: reading it would give stale data, a write would be lost."""
    seen: list[Any] = []

    async def begin(update: Any, context: Any) -> int:
        context.user_data["step"] = "started"
        return NAME

    async def timed_out(update: Any, context: Any) -> None:
        try:
            seen.append(dict(context.user_data))
        except SessionNotLoadedError as exc:
            seen.append(exc)

    conversation = ConversationHandler(
        entry_points=[CommandHandler("start", begin)],
        states={
            NAME: [MessageHandler(filters.TEXT, begin)],
            ConversationHandler.TIMEOUT: [TypeHandler(Update, timed_out)],
        },
        fallbacks=[],
        conversation_timeout=0.1,  # not persistent: allowed under runbot
    )
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder.persistence(DjangoPersistence())).build()
    application.add_handler(conversation)

    async def run_like_runbot() -> None:
        async with application:
            await application.start()
            start_update = message("/start", chat_id=ALICE, user_id=ALICE)
            await application.process_update(Update.de_json(start_update, application.bot))
            await asyncio.sleep(0.5)
            await application.stop()

    asyncio.run(run_like_runbot())
    [refusal] = seen
    assert isinstance(refusal, SessionNotLoadedError)
    assert row("ptb.user_data", f"user:{ALICE}") == {"step": "started"}


@pytest.mark.parametrize("announcement", ["migrate_to_chat_id", "migrate_from_chat_id"])
def test_migrate_chat_data_moves_the_group_data_to_the_supergroup(make_bot, announcement):
    async def migrate(update: Any, context: Any) -> None:
        context.application.migrate_chat_data(message=update.message)

    bot = make_bot(
        None,
        [
            MessageHandler(filters.StatusUpdate.MIGRATE, migrate),
            MessageHandler(filters.TEXT, remember),
        ],
        configure=with_persistence(),
    )
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    bot.process(message("hi", chat_id=SUPERGROUP, user_id=ALICE))  # overwritten, as in PTB
    if announcement == "migrate_to_chat_id":
        update = service_message(GROUP, migrate_to_chat_id=SUPERGROUP)
    else:
        update = service_message(SUPERGROUP, migrate_from_chat_id=GROUP)
    assert bot.process(update) == "committed"
    assert row("ptb.chat_data", f"chat:{GROUP}") is None
    assert row("ptb.chat_data", f"chat:{SUPERGROUP}") == {"chat": 1}


def migrating_bot(make_bot: Any, sessions: Sessions | None = None) -> Any:
    """PTB's documented pattern: ``migrate_chat_data`` on both notices."""

    async def migrate(update: Any, context: Any) -> None:
        context.application.migrate_chat_data(message=update.message)

    async def clear(update: Any, context: Any) -> None:
        context.chat_data.clear()

    return make_bot(
        sessions,
        [
            MessageHandler(filters.StatusUpdate.MIGRATE, migrate),
            CommandHandler("clear", clear),
            MessageHandler(filters.TEXT, remember),
        ],
        configure=with_persistence(),
    )


def both_notices(first: str) -> list[dict[str, Any]]:
    notices = [
        service_message(GROUP, migrate_to_chat_id=SUPERGROUP),
        service_message(SUPERGROUP, migrate_from_chat_id=GROUP),
    ]
    return notices if first == "migrate_to_chat_id" else notices[::-1]


@pytest.mark.parametrize("first", ["migrate_to_chat_id", "migrate_from_chat_id"])
def test_both_notices_calling_migrate_chat_data_leave_the_group_data_in_the_supergroup(
    make_bot, first
):
    bot = migrating_bot(make_bot)
    for _ in range(2):
        bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    bot.process(message("hi", chat_id=SUPERGROUP, user_id=ALICE))  # overwritten, as in PTB
    outcomes = [bot.process(notice) for notice in both_notices(first)]
    assert outcomes == ["committed", "unchanged"]  # the second finds nothing to move
    assert row("ptb.chat_data", f"chat:{GROUP}") is None
    assert row("ptb.chat_data", f"chat:{SUPERGROUP}") == {"chat": 2}


@pytest.mark.parametrize("first", ["migrate_to_chat_id", "migrate_from_chat_id"])
def test_migrate_chat_data_after_migrate_chats_moved_the_rows_keeps_them(make_bot, first):
    """With ``Sessions(migrate_chats=True)`` the rows have moved before any handler runs."""
    bot = migrating_bot(make_bot, Sessions(initial=dict, migrate_chats=True))
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    outcomes = [bot.process(notice) for notice in both_notices(first)]
    assert outcomes == ["committed", "unchanged"]  # the first moved the rows
    assert row("ptb.chat_data", f"chat:{GROUP}") is None
    assert row("ptb.chat_data", f"chat:{SUPERGROUP}") == {"chat": 1}


@pytest.mark.parametrize("announcement", ["migrate_to_chat_id", "migrate_from_chat_id"])
@pytest.mark.parametrize("group", ["never stored", "emptied"])
def test_migrating_a_group_without_data_leaves_the_supergroups_data(make_bot, announcement, group):
    bot = migrating_bot(make_bot)
    if group == "emptied":
        bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
        bot.process(message("/clear", chat_id=GROUP, user_id=ALICE))
        assert row("ptb.chat_data", f"chat:{GROUP}") == {}
    bot.process(message("hi", chat_id=SUPERGROUP, user_id=ALICE))
    bot.process(both_notices(first=announcement)[0])
    assert row("ptb.chat_data", f"chat:{GROUP}") is None
    assert row("ptb.chat_data", f"chat:{SUPERGROUP}") == {"chat": 1}


@pytest.mark.parametrize("later", ["reads", "writes"])
def test_after_migrate_chat_data_the_old_chat_s_handlers_see_fresh_data(make_bot, later):
    """As in PTB: on the old group's notice, a later handler of the update gets fresh
    chat_data, not ``None``; what it writes is the old chat's, else that row stays gone."""

    async def migrate(update: Any, context: Any) -> None:
        context.application.migrate_chat_data(message=update.message)

    async def touch(update: Any, context: Any) -> None:
        if later == "writes":
            context.chat_data["after"] = True
        else:
            assert context.chat_data.get("chat") is None

    bot = make_bot(
        None,
        [
            MessageHandler(filters.StatusUpdate.MIGRATE, migrate),
            MessageHandler(filters.TEXT, remember),
        ],
        configure=with_persistence(),
    )
    bot.application.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, touch), group=1)
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    assert bot.process(service_message(GROUP, migrate_to_chat_id=SUPERGROUP)) == "committed"
    assert row("ptb.chat_data", f"chat:{SUPERGROUP}") == {"chat": 1}
    expected = {"after": True} if later == "writes" else None
    assert row("ptb.chat_data", f"chat:{GROUP}") == expected


def test_migrate_chat_data_outside_a_migration_update_says_why(make_bot):
    async def migrate(update: Any, context: Any) -> None:
        context.application.migrate_chat_data(old_chat_id=GROUP, new_chat_id=SUPERGROUP)

    bot = make_bot(None, [CommandHandler("move", migrate)], configure=with_persistence())
    assert bot.process(message("/move", chat_id=GROUP, user_id=ALICE)) == "handler_failed"
    assert "does not announce a migration" in str(bot.errors[0])


# -- conversations ----------------------------------------------------------------------

NAME, AGE, DONE = range(3)


async def start(update: Any, context: Any) -> int:
    await update.message.reply_text("Your name?")
    return NAME


async def got_name(update: Any, context: Any) -> int:
    context.user_data["name"] = update.message.text
    await update.message.reply_text("Your age?")
    return AGE


async def got_age(update: Any, context: Any) -> int:
    await update.message.reply_text(f"{context.user_data['name']} is {update.message.text}.")
    return ConversationHandler.END


def signup(**options: Any) -> ConversationHandler[Any]:
    return ConversationHandler(
        entry_points=[CommandHandler("signup", start)],
        states={
            NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, got_name)],
            AGE: [MessageHandler(filters.Regex(r"^\d+$"), got_age)],
        },
        fallbacks=[],
        name="signup",
        persistent=True,
        **options,
    )


def signup_bot(make_bot: Any, **options: Any) -> Any:
    return make_bot(None, [signup(**options)], configure=with_persistence())


def test_a_conversation_continues_across_applications_and_restarts(make_bot, api):
    # Step 1 in one application, step 2 in another (a second worker), step 3 after both
    # were shut down and a third was built: each reads the state the last one stored.
    first, second = signup_bot(make_bot), signup_bot(make_bot)
    first.process(message("/signup", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == NAME
    second.process(message("Alice", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == AGE
    first.close()
    second.close()
    third = signup_bot(make_bot)
    third.process(message("30", chat_id=ALICE, user_id=ALICE))
    assert api.sent_texts()[-3:] == ["Your name?", "Your age?", "Alice is 30."]
    # The conversation ended: its row is gone.
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") is None


def test_a_conversation_state_is_the_updates_own_not_the_processes(make_bot, api):
    bot = signup_bot(make_bot)
    bot.process(message("/signup", chat_id=ALICE, user_id=ALICE))
    handler = bot.application.handlers[0][0]
    assert isinstance(handler._conversations, ConversationStates)
    assert dict(handler._conversations) == {}  # nothing kept between updates
    # The stored row is what counts: reset in the admin (or by another process), the
    # conversation is over here too.
    Session.objects.filter(fragment="ptb.conversation.signup").delete()
    assert bot.process(message("Alice", chat_id=ALICE, user_id=ALICE)) == "unchanged"
    assert api.sent_texts()[-1] == "Your name?"


def test_conversations_are_read_before_dispatch_only_for_updates_they_can_reach(make_bot):
    bot = signup_bot(make_bot)
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(channel_post()) == "skipped"  # conversations ignore channels
    assert statements(captured) == []
    with CaptureQueriesContext(connection) as captured:
        # Reachable, though no handler takes it: the price of persistent conversations.
        assert bot.process(edited_message()) == "unchanged"
    assert statements(captured) == locked("SELECT")


def test_conversation_keys_are_the_handlers_own(make_bot):
    per_message = ConversationHandler(
        entry_points=[CallbackQueryHandler(start)],
        states={},
        fallbacks=[],
        per_message=True,
        name="menu",
        persistent=True,
    )
    update = callback_query(chat_id=GROUP, user_id=ALICE)
    from telegram import Update

    decoded = Update.de_json(update, None)
    assert conversation_key(per_message, decoded) == per_message._get_key(decoded)
    plain = signup()
    decoded = Update.de_json(message("x", chat_id=GROUP, user_id=BOB), None)
    assert conversation_key(plain, decoded) == plain._get_key(decoded) == (GROUP, BOB)


def test_business_conversations_are_apart_from_the_bots_own(make_bot, api):
    bot = signup_bot(make_bot)
    bot.process(message("/signup", chat_id=BOB, user_id=BOB))
    assert row("ptb.conversation.signup", f"chat:{BOB}:user:{BOB}") == NAME
    assert row("ptb.conversation.signup", f"business:{CONNECTION}:chat:{BOB}:user:{BOB}") is None


def test_private_guest_chats_keep_their_per_chat_conversations_apart(make_bot, api):
    """Two people summon the bot in their private chats with the same third person: both
    chats carry that person's id, and the summoner keeps them apart, as chat_data does."""
    carol = 444444444

    async def ask(update: Any, context: Any) -> int:
        await update.effective_message.reply_text("Which size?")
        return NAME

    async def answer(update: Any, context: Any) -> int:
        await update.effective_message.reply_text(f"Size {update.effective_message.text}.")
        return ConversationHandler.END

    handler = ConversationHandler(
        entry_points=[MessageHandler(filters.Regex("order"), ask)],
        states={NAME: [MessageHandler(filters.TEXT, answer)]},
        fallbacks=[],
        per_user=False,
        name="order",
        persistent=True,
    )
    bot = make_bot(None, [handler], configure=with_persistence())
    api.reset()
    bot.process(guest_message("order pizza", chat_id=carol, user_id=ALICE))
    bot.process(guest_message("large", chat_id=carol, user_id=BOB))  # not Alice's order
    assert api.sent_texts() == ["Which size?"]
    assert row("ptb.conversation.order", f"guest:chat:{carol}:user:{ALICE}") == NAME


def test_a_failing_step_keeps_the_previous_state(make_bot):
    async def broken(update: Any, context: Any) -> int:
        raise RuntimeError("boom")

    handler = ConversationHandler(
        entry_points=[CommandHandler("signup", start)],
        states={NAME: [MessageHandler(filters.TEXT, broken)]},
        fallbacks=[],
        name="signup",
        persistent=True,
    )
    bot = make_bot(None, [handler], configure=with_persistence())
    bot.process(message("/signup", chat_id=ALICE, user_id=ALICE))
    assert bot.process(message("Alice", chat_id=ALICE, user_id=ALICE)) == "handler_failed"
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == NAME


def test_non_blocking_conversation_steps_are_stored_when_done(make_bot):
    bot = make_bot(None, [signup(block=False)], configure=with_persistence())
    bot.process(message("/signup", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == NAME


class Step(enum.IntEnum):
    NAME = 1
    AGE = 2


def test_enum_states_are_stored_as_their_values_and_found_again(make_bot, api):
    async def ask(update: Any, context: Any) -> Step:
        await update.message.reply_text("Your name?")
        return Step.NAME

    async def named(update: Any, context: Any) -> Step:
        await update.message.reply_text(f"Hello {update.message.text}.")
        return Step.AGE

    def build() -> Any:
        handler = ConversationHandler(
            entry_points=[CommandHandler("signup", ask)],
            states={Step.NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, named)]},
            fallbacks=[],
            name="signup",
            persistent=True,
        )
        return make_bot(None, [handler], configure=with_persistence())

    build().process(message("/signup", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == 1
    build().process(message("Ann", chat_id=ALICE, user_id=ALICE))
    assert api.sent_texts()[-1] == "Hello Ann."
    assert row("ptb.conversation.signup", f"chat:{ALICE}:user:{ALICE}") == 2


class Word(str, enum.Enum):  # noqa: UP042  # what is tested: str() gives "Word.NAME"
    NAME = "name"
    AGE = "age"


def test_str_enum_states_continue_in_another_application(make_bot, api):
    async def ask(update: Any, context: Any) -> Word:
        await update.message.reply_text("Your name?")
        return Word.NAME

    async def named(update: Any, context: Any) -> Word:
        await update.message.reply_text(f"Hello {update.message.text}. Your age?")
        return Word.AGE

    async def aged(update: Any, context: Any) -> int:
        await update.message.reply_text(f"{update.message.text}, noted.")
        return ConversationHandler.END

    def build() -> Any:
        handler = ConversationHandler(
            entry_points=[CommandHandler("signup", ask)],
            states={
                Word.NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, named)],
                Word.AGE: [MessageHandler(filters.TEXT & ~filters.COMMAND, aged)],
            },
            fallbacks=[],
            name="signup",
            persistent=True,
        )
        return make_bot(None, [handler], configure=with_persistence())

    key = f"chat:{ALICE}:user:{ALICE}"
    build().process(message("/signup", chat_id=ALICE, user_id=ALICE))
    assert row("ptb.conversation.signup", key) == "name"
    build().process(message("Ann", chat_id=ALICE, user_id=ALICE))  # another application
    assert row("ptb.conversation.signup", key) == "age"
    build().process(message("30", chat_id=ALICE, user_id=ALICE))
    assert api.sent_texts() == ["Your name?", "Hello Ann. Your age?", "30, noted."]
    assert row("ptb.conversation.signup", key) is None


class Plain(enum.Enum):
    NAME = 1


def test_plain_enum_states_are_refused_saying_why(make_bot):
    async def ask(update: Any, context: Any) -> Plain:
        return Plain.NAME

    handler = ConversationHandler(
        entry_points=[CommandHandler("signup", ask)],
        states={Plain.NAME: [MessageHandler(filters.TEXT, ask)]},
        fallbacks=[],
        name="signup",
        persistent=True,
    )
    bot = make_bot(None, [handler], configure=with_persistence())
    assert bot.process(message("/signup", chat_id=ALICE, user_id=ALICE)) == "handler_failed"
    [error] = bot.errors
    assert isinstance(error, SessionDataError)
    assert "plain Enum" in str(error) and "IntEnum or StrEnum" in str(error)
    assert rows() == {}


def test_a_persistent_conversation_with_a_timeout_is_refused_at_start_up(make_bot, api):
    bot = signup_bot(make_bot, conversation_timeout=60)
    with pytest.raises(ConfigurationError, match="conversation_timeout"):
        bot.runner.initialize()
    # Also where PTB's JobQueue runs (runbot): the timeout would be one process's.
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder.persistence(DjangoPersistence())).build()
    application.add_handler(signup(conversation_timeout=60))
    with pytest.raises(ConfigurationError, match="refused under runbot too"):
        asyncio.run(application.initialize())


def test_a_persistent_conversation_added_after_start_up_is_refused(make_bot):
    bot = signup_bot(make_bot)
    bot.runner.initialize()
    with pytest.raises(ConfigurationError, match="added after the application was initialized"):
        bot.application.add_handler(signup())
    # A conversation that is not persistent is PTB's as before.
    bot.application.add_handler(ConversationHandler([], {}, []))


def test_two_persistent_conversations_with_one_name_are_refused(make_bot):
    nested = signup()
    outer = ConversationHandler(
        entry_points=[CommandHandler("menu", start)],
        states={NAME: [nested]},
        fallbacks=[],
        name="menu",
        persistent=True,
    )
    bot = make_bot(None, [outer, signup()], configure=with_persistence())
    with pytest.raises(ConfigurationError, match="two persistent ConversationHandlers"):
        bot.runner.initialize()


# -- set-up --------------------------------------------------------------------------------


def test_a_plain_application_gets_an_error_saying_what_to_do(api):
    application = (
        ApplicationBuilder()
        .token(TOKEN)
        .base_url(api.base_url)
        .updater(None)
        .persistence(DjangoPersistence())
        .build()
    )
    with pytest.raises(ConfigurationError, match="use_sessions"):
        asyncio.run(application.initialize())


def test_use_sessions_without_sessions_needs_the_persistence():
    with pytest.raises(ConfigurationError, match="DjangoPersistence"):
        use_sessions(ApplicationBuilder().token(TOKEN))
    application = use_sessions(
        ApplicationBuilder().token(TOKEN).persistence(DjangoPersistence())
    ).build()
    assert isinstance(application, SessionApplication)
    assert application.sessions is None


@dataclasses.dataclass
class ChatData:
    messages: int = 0
    last: str = ""


def test_each_piece_has_its_own_serializer_for_its_context_type(make_bot, api):
    """A dataclass chat_data through ContextTypes, with plain dict user_data and
    bot_data: each piece is stored by its own serializer."""

    async def note(update: Any, context: Any) -> None:
        chat_data: ChatData = context.chat_data
        chat_data.messages += 1
        chat_data.last = update.message.text
        context.user_data["seen"] = True
        context.bot_data["chats"] = 1
        await update.message.reply_text(f"{chat_data.messages}: {chat_data.last}")

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, chat_data=ChatData))
        builder.persistence(DjangoPersistence(chat_data_serializer=DataclassSerializer(ChatData)))

    for text in ("one", "two"):
        bot = make_bot(None, [MessageHandler(filters.TEXT, note)], configure=configure)
        assert bot.process(message(text, chat_id=GROUP, user_id=ALICE)) == "committed"
        bot.close()
    assert api.sent_texts() == ["1: one", "2: two"]
    assert rows() == {
        ("ptb.chat_data", f"chat:{GROUP}"): {"messages": 2, "last": "two"},
        ("ptb.user_data", f"user:{ALICE}"): {"seen": True},
        ("ptb.bot_data", "bot"): {"chats": 1},
    }
    # Without one, the JSON default refuses the class, naming the argument to give.
    with pytest.raises(ConfigurationError, match="chat_data_serializer"):
        use_sessions(
            ApplicationBuilder()
            .token(TOKEN)
            .context_types(ContextTypes(context=SessionContext, chat_data=ChatData))
            .persistence(DjangoPersistence())
        ).build()


class BotData(dict[str, Any]):
    """bot_data with defaults, the usual PTB way: a dict subclass in ContextTypes."""

    def __init__(self) -> None:
        super().__init__(greeting="hi", count=0)


def test_a_dict_subclass_in_context_types_is_stored_as_json_and_read_back_as_itself(make_bot, api):
    seen: list[Any] = []

    async def count(update: Any, context: Any) -> None:
        seen.append((type(context.bot_data), dict(context.bot_data)))
        context.bot_data["count"] += 1

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, bot_data=BotData))
        builder.persistence(DjangoPersistence())

    for _ in range(2):
        bot = make_bot(None, [MessageHandler(filters.TEXT, count)], configure=configure)
        assert bot.process(message("hello", chat_id=GROUP, user_id=ALICE)) == "committed"
        bot.close()
    assert seen == [
        (BotData, {"greeting": "hi", "count": 0}),
        (BotData, {"greeting": "hi", "count": 1}),
    ]
    assert rows()[("ptb.bot_data", "bot")] == {"greeting": "hi", "count": 2}


def test_an_attribute_set_on_a_dict_subclass_is_refused_not_lost(make_bot):
    async def set_language(update: Any, context: Any) -> None:
        context.bot_data.lang = "fr"  # not a key: JSON would not keep it

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, bot_data=BotData))
        builder.persistence(DjangoPersistence())

    bot = make_bot(None, [MessageHandler(filters.TEXT, set_language)], configure=configure)
    assert bot.process(message("hello", chat_id=GROUP, user_id=ALICE)) == "handler_failed"
    assert "BotData's attributes are not stored, only its keys: lang" in str(bot.errors[0])


def test_a_dict_subclass_with_a_json_serializer_of_its_own_is_read_back_as_itself(make_bot):
    seen: list[Any] = []

    async def count(update: Any, context: Any) -> None:
        seen.append(type(context.bot_data))
        context.bot_data["count"] += 1

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, bot_data=BotData))
        builder.persistence(DjangoPersistence(serializer=JSONSerializer()))

    for _ in range(2):
        bot = make_bot(None, [MessageHandler(filters.TEXT, count)], configure=configure)
        assert bot.process(message("hello", chat_id=GROUP, user_id=ALICE)) == "committed"
        bot.close()
    assert seen == [BotData, BotData]


class TypedChatData(TypedDict, total=False):
    messages: int


class ExtensionsChatData(typing_extensions.TypedDict, total=False):
    messages: int


@pytest.mark.parametrize("typed", [TypedChatData, ExtensionsChatData], ids=["typing", "te"])
def test_a_typeddict_in_context_types_is_a_plain_dict(make_bot, typed):
    async def note(update: Any, context: Any) -> None:
        context.chat_data["messages"] = context.chat_data.get("messages", 0) + 1

    def configure(builder: Any) -> None:
        builder.context_types(ContextTypes(context=SessionContext, chat_data=typed))
        builder.persistence(DjangoPersistence())

    bot = make_bot(None, [MessageHandler(filters.TEXT, note)], configure=configure)
    for _ in range(2):
        assert bot.process(message("hi", chat_id=GROUP, user_id=ALICE)) == "committed"
    assert row("ptb.chat_data", f"chat:{GROUP}") == {"messages": 2}


def test_a_dataclass_serializer_for_another_class_than_context_types_is_refused(api):
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url)
    builder.persistence(DjangoPersistence(chat_data_serializer=DataclassSerializer(ChatData)))
    with pytest.raises(ConfigurationError, match="builds ChatData, but ContextTypes"):
        use_sessions(builder).build()


def test_a_persistence_that_stores_nothing_lets_handlers_run(make_bot, api):
    nothing = PersistenceInput(
        bot_data=False, chat_data=False, user_data=False, callback_data=False
    )

    async def hello(update: Any, context: Any) -> None:
        await update.message.reply_text("hello")

    persistence = DjangoPersistence(nothing)
    bot = make_bot(
        None, [MessageHandler(filters.TEXT, hello)], configure=with_persistence(persistence)
    )
    api.reset()
    assert bot.process(message("hi", chat_id=GROUP, user_id=ALICE)) == "unchanged"
    assert api.sent_texts() == ["hello"]


class Refreshing(DjangoPersistence):
    """PTB's hooks, overridden as with any persistence."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshed: list[tuple[str, Any]] = []

    async def refresh_bot_data(self, bot_data: Any) -> None:
        self.refreshed.append(("bot", dict(bot_data)))

    async def refresh_chat_data(self, chat_id: int, chat_data: Any) -> None:
        self.refreshed.append((f"chat {chat_id}", dict(chat_data)))

    async def refresh_user_data(self, user_id: int, user_data: Any) -> None:
        self.refreshed.append((f"user {user_id}", dict(user_data)))


def test_ptbs_refresh_hooks_get_the_updates_state(make_bot):
    persistence = Refreshing()
    bot = make_bot(
        None, [MessageHandler(filters.TEXT, remember)], configure=with_persistence(persistence)
    )
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    bot.process(message("hi", chat_id=GROUP, user_id=ALICE))
    assert persistence.refreshed[-3:] == [
        ("bot", {"bot": 1}),
        (f"chat {GROUP}", {"chat": 1}),
        (f"user {ALICE}", {"user": 1}),
    ]


def test_arbitrary_callback_data_is_refused_until_it_is_stored():
    builder = ApplicationBuilder().token(TOKEN).arbitrary_callback_data(True)
    with pytest.raises(ConfigurationError, match="callback data"):
        use_sessions(builder.persistence(DjangoPersistence())).build()
    # Said not to be stored, it is not: the cache stays in memory, as without persistence.
    persistence = DjangoPersistence(PersistenceInput(callback_data=False))
    builder = ApplicationBuilder().token(TOKEN).arbitrary_callback_data(True)
    assert use_sessions(builder.persistence(persistence)).build().ptb_state is not None


# -- the switch from PicklePersistence ------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the bot replies once the update commits
def test_a_picklepersistence_bot_behaves_the_same_after_the_one_line_change(
    make_bot, api, tmp_path
):
    """The same handlers and updates, with a restart before the last step: what
    PicklePersistence replies, DjangoPersistence replies."""
    from telegram import Update
    from telegram.ext import PicklePersistence

    from .persistencebot import add_handlers

    script = [
        [message("/checkout", chat_id=ALICE, user_id=ALICE)],
        [message("tea", chat_id=ALICE, user_id=ALICE)],  # after a restart
        [message("Home", chat_id=ALICE, user_id=ALICE), message("/stats", chat_id=ALICE)],
    ]

    async def pickle_run(updates: list[dict[str, Any]]) -> None:
        builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
        application = builder.persistence(PicklePersistence(tmp_path / "bot.pickle")).build()
        add_handlers(application)
        async with application:  # shutting down writes the pickle file
            for data in updates:
                await application.process_update(Update.de_json(data, application.bot))

    api.reset()
    for updates in script:
        asyncio.run(pickle_run(updates))
    with_pickle = api.sent_texts()

    api.reset()
    for updates in script:
        bot = make_bot(None, [], configure=with_persistence())
        add_handlers(bot.application)
        for data in updates:
            bot.process(data)
        bot.close()
    assert with_pickle == [
        "What would you like?",
        "Where to?",
        "tea to Home, order 1.",
        "2 messages here, 1 orders in all.",
    ]
    assert api.sent_texts() == with_pickle
