"""PTB's JobQueue with sessions: it runs where PTB runs it, and is refused elsewhere.

The webhook view never starts a JobQueue (a job would live in one web worker's memory
and die with it), so scheduling there fails loudly instead of never running, through
``context.job_queue`` or ``application.job_queue``; so do jobs scheduled where the
application is built, and a ``conversation_timeout``, at start-up. Where the JobQueue
runs (``runbot``, which runs PTB's own polling), jobs run as PTB runs them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telegram.ext import (
    ApplicationBuilder,
    CommandHandler,
    ConversationHandler,
    MessageHandler,
    filters,
)

from botsessions import (
    ConfigurationError,
    DjangoPersistence,
    JobQueueNotRunning,
    SessionNotLoadedError,
    Sessions,
    use_sessions,
)
from botsessions.runner import BotRunner

from .harness import TOKEN, poll
from .updates import ALICE, message

pytestmark = pytest.mark.django_db

pytest.importorskip("apscheduler", reason="PTB's JobQueue: python-telegram-bot[job-queue]")

ran: list[str] = []


async def job(context: Any) -> None:
    ran.append(context.job.name)


async def schedule(update: Any, context: Any) -> None:
    context.job_queue.run_once(job, 0.01, name="reminder", chat_id=ALICE)
    await update.message.reply_text("scheduled")


def test_scheduling_where_no_job_queue_runs_fails_loudly(make_bot, api):
    bot = make_bot(Sessions(initial=dict), [CommandHandler("remind", schedule)])
    assert bot.application._job_queue is not None  # installed, as with the job-queue extra
    assert bot.process(message("/remind", chat_id=ALICE)) == "handler_failed"
    assert api.sent_texts() == []  # no "scheduled" for a job that would never run
    [error] = bot.errors
    assert isinstance(error, JobQueueNotRunning)
    assert "runbot" in str(error)


def test_scheduling_on_the_application_job_queue_fails_loudly_too(make_bot, api):
    async def schedule_on_application(update: Any, context: Any) -> None:
        context.application.job_queue.run_once(job, 0.01, name="reminder")
        await update.message.reply_text("scheduled")

    bot = make_bot(Sessions(initial=dict), [CommandHandler("remind", schedule_on_application)])
    with pytest.raises(JobQueueNotRunning, match="runbot"):
        bot.application.job_queue.run_repeating(job, 60)  # in the bot's factory
    assert bot.process(message("/remind", chat_id=ALICE)) == "handler_failed"
    assert api.sent_texts() == []
    assert isinstance(bot.errors[0], JobQueueNotRunning)


def test_jobs_scheduled_where_the_application_is_built_stop_the_webhook(api):
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.job_queue.run_repeating(job, 60, name="digest")  # in the bot's factory
    runner = BotRunner(application)  # what the webhook serves it with
    try:
        with pytest.raises(JobQueueNotRunning, match=r"holds jobs \(digest\)"):
            runner.initialize()
    finally:
        runner.shutdown()


def test_where_the_job_queue_runs_jobs_run(make_bot, api):
    ran.clear()
    bot = make_bot(Sessions(initial=dict), [CommandHandler("remind", schedule)])
    bot.runner.initialize()
    bot.runner.run(bot.application.start())  # what runbot's polling does: starts the queue
    try:
        assert bot.process(message("/remind", chat_id=ALICE)) == "unchanged"
        bot.runner.run(asyncio.sleep(0.2))
    finally:
        bot.runner.run(bot.application.stop())
    assert ran == ["reminder"]
    assert api.sent_texts() == ["scheduled"]


def test_runbot_keeps_jobs_scheduled_where_the_application_is_built(api):
    """No webhook runner: PTB's own start-up (runbot's) starts the queue and runs them."""
    ran.clear()
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.job_queue.run_once(job, 0.01, name="at start-up")

    async def run_like_runbot() -> None:
        async with application:
            await application.start()
            await asyncio.sleep(0.2)
            await application.stop()

    asyncio.run(run_like_runbot())
    assert ran == ["at start-up"]


def test_a_job_cannot_touch_state_stored_per_update(make_bot):
    touched: list[BaseException] = []

    async def job_writing_chat_data(context: Any) -> None:
        try:
            context.chat_data["x"] = 1
        except SessionNotLoadedError as exc:
            touched.append(exc)

    async def later(update: Any, context: Any) -> None:
        context.job_queue.run_once(job_writing_chat_data, 0.01, chat_id=ALICE)

    bot = make_bot(
        None,
        [CommandHandler("later", later)],
        configure=lambda builder: builder.persistence(DjangoPersistence()),
    )
    bot.runner.initialize()
    bot.runner.run(bot.application.start())
    try:
        bot.process(message("/later", chat_id=ALICE))
        bot.runner.run(asyncio.sleep(0.2))
    finally:
        bot.runner.run(bot.application.stop())
    # Not written to a dict nobody stores: refused, with what to do instead.
    assert "exists only while an update is processed" in str(touched[0])


def test_a_conversation_timeout_is_refused_where_no_job_queue_runs(make_bot, api):
    async def start(update: Any, context: Any) -> int:
        return 1

    handler = ConversationHandler(
        entry_points=[CommandHandler("start", start)],
        states={1: [MessageHandler(filters.TEXT, start)]},
        fallbacks=[],
        conversation_timeout=60,
    )
    bot = make_bot(Sessions(initial=dict), [handler])
    with pytest.raises(ConfigurationError, match="conversation_timeout"):
        bot.runner.initialize()
    # Under runbot (no webhook runner) it is PTB's, as before.
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.add_handler(handler)
    asyncio.run(application.initialize())


@pytest.fixture
def tries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """runbot's retries without their pauses, and the sessions of the first try not
    stored: the handlers note each try in the list given, the first when it starts."""
    from botsessions import telegram_api
    from botsessions.backoff import Backoff
    from botsessions.errors import StorageError
    from botsessions.storage.db import DatabaseStorage

    monkeypatch.setattr(telegram_api, "OUTAGE_BACKOFF", Backoff(first=0.001, cap=0.002))
    real_commit = DatabaseStorage.commit_sync
    noted: list[str] = []

    def down_once(*args: Any, **kwargs: Any) -> Any:
        if len(noted) == 1:
            raise StorageError("database restarting")
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(DatabaseStorage, "commit_sync", down_once)
    return noted


@pytest.mark.django_db(transaction=True)
def test_runbot_removes_the_jobs_of_a_try_it_retries(api, tries):
    """The first try's sessions cannot be stored: runbot tries again, and only the try
    that committed leaves its jobs (the handler's own, and a task's it started); a job
    scheduled outside the update stays."""
    from botsessions import telegram_api

    async def remind(update: Any, context: Any) -> None:
        tries.append("try")
        context.job_queue.run_once(job, 60, name="reminder")
        await asyncio.create_task(follow_up(context))
        context.session["reminders"] = 1

    async def follow_up(context: Any) -> None:
        context.job_queue.run_once(job, 60, name="follow-up")

    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.add_handler(CommandHandler("remind", remind))
    application.job_queue.run_once(job, 60, name="nightly")
    telegram_api.keep_polling_through_storage_errors(application)
    names: list[str] = []

    poll(
        application,
        message("/remind", chat_id=ALICE),
        before_stop=lambda: names.extend(sorted(j.name for j in application.job_queue.jobs())),
    )
    assert tries == ["try", "try"]
    assert names == ["follow-up", "nightly", "reminder"]


@pytest.mark.django_db(transaction=True)
def test_jobs_another_job_adds_while_a_try_is_open_are_not_the_tries(api, tries):
    """The try's add_job wakes the scheduler, whose timers then keep the try's context:
    the jobs a repeating job adds meanwhile are still its own."""
    from botsessions import telegram_api

    added: list[str] = []

    async def every_tenth_of_a_second(context: Any) -> None:
        added.append(f"added by a job {len(added)}")
        context.job_queue.run_once(job, 3600, name=added[-1])

    async def remind(update: Any, context: Any) -> None:
        tries.append("try")
        context.job_queue.run_once(job, 3600, name="reminder")
        await asyncio.sleep(0.5)  # the handler takes a moment (a Bot API call, say)
        context.session["reminders"] = 1

    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.add_handler(CommandHandler("remind", remind))
    application.job_queue.run_repeating(every_tenth_of_a_second, 0.1, first=0.05)
    telegram_api.keep_polling_through_storage_errors(application)
    names: list[str] = []

    poll(
        application,
        message("/remind", chat_id=ALICE),
        before_stop=lambda: names.extend(j.name for j in application.job_queue.jobs()),
    )
    assert tries == ["try", "try"]
    assert names.count("reminder") == 1
    assert added and set(added) <= set(names)


@pytest.mark.django_db(transaction=True)
def test_a_retried_try_leaves_a_conversation_timeout_to_its_handler(api, tries):
    """A ConversationHandler keeps its timeout job and replaces it itself: removed under
    it, the retry (and every later step) failed as PTB removed it again."""
    from botsessions import telegram_api

    steps = tries  # "asked" first: its commit fails once

    async def ask(update: Any, context: Any) -> int:
        steps.append("asked")
        context.session["asked"] = True
        return 1

    async def answer(update: Any, context: Any) -> int:
        steps.append("answered")
        return ConversationHandler.END

    conversation = ConversationHandler(
        entry_points=[CommandHandler("start", ask)],
        states={1: [MessageHandler(filters.TEXT & ~filters.COMMAND, answer)]},
        fallbacks=[],
        conversation_timeout=60,
    )
    builder = ApplicationBuilder().token(TOKEN).base_url(api.base_url).updater(None)
    application = use_sessions(builder, Sessions(initial=dict)).build()
    application.add_handler(conversation)
    errors: list[BaseException] = []

    async def record(update: Any, context: Any) -> None:
        errors.append(context.error)

    application.add_error_handler(record)
    telegram_api.keep_polling_through_storage_errors(application)

    poll(application, *(message(text, chat_id=ALICE) for text in ("/start", "pizza")))
    # PTB keeps a conversation that is not persistent in memory, outside the unit: the
    # retry finds it waiting for the answer already, and the answer is taken.
    assert steps == ["asked", "answered"]
    assert errors == []
