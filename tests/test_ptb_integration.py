"""Sessions inside a real PTB application: handler kinds, groups, blocking, jobs."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
from telegram import Update
from telegram.ext import (
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackContext,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from botsessions import (
    ConfigurationError,
    JobQueueNotRunning,
    SessionContext,
    SessionNotLoadedError,
    Sessions,
    use_sessions,
)
from botsessions.models import Session

from .sql import locked, statements
from .updates import ALICE, callback_query, message

pytestmark = pytest.mark.django_db

BOT = 123456


def stored(key: str = f"chat:{ALICE}", fragment: str = "") -> Any:
    row = Session.objects.filter(bot_id=BOT, fragment=fragment, key=key).first()
    return None if row is None else row.data


def test_statement_counts(make_bot):
    """Unmatched: none. Read-only: the key's lock and one read. Changed: the lock, one
    read, then the exactly-once record and the session row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    async def show(update, context):
        _ = context.session["n"]

    async def bump(update, context):
        context.session["n"] += 1

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}),
        [CommandHandler("show", show), CommandHandler("bump", bump)],
    )
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("just text")) == "skipped"
    assert statements(captured) == []
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/show")) == "unchanged"
    assert statements(captured) == locked("SELECT")
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/bump")) == "committed"
    assert statements(captured) == locked("SELECT", "INSERT", "INSERT")
    with CaptureQueriesContext(connection) as captured:
        assert bot.process(message("/bump")) == "committed"
    assert statements(captured) == locked("SELECT", "INSERT", "UPDATE")


def test_all_handler_groups_share_one_session(make_bot):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    async def first(update, context):
        context.session["trail"].append("group 0")

    async def second(update, context):
        context.session["trail"].append("group 1")

    bot = make_bot(
        Sessions(initial=lambda: {"trail": []}),
        [(MessageHandler(filters.TEXT, first), 0), (MessageHandler(filters.TEXT, second), 1)],
    )
    with CaptureQueriesContext(connection) as captured:
        bot.process(message("x"))
    assert statements(captured) == locked("SELECT", "INSERT", "INSERT")
    assert stored() == {"trail": ["group 0", "group 1"]}


def test_handler_stop_keeps_the_changes_made_so_far(make_bot):
    async def first(update, context):
        context.session["n"] = 1
        raise ApplicationHandlerStop

    async def never(update, context):
        context.session["n"] = 2

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}),
        [(MessageHandler(filters.TEXT, first), 0), (MessageHandler(filters.TEXT, never), 1)],
    )
    assert bot.process(message("x")) == "committed"
    assert stored() == {"n": 1}


def test_non_blocking_handlers_are_saved_after_they_finish(make_bot):
    async def slow(update, context):
        await asyncio.sleep(0.05)
        context.session["done"] = True

    bot = make_bot(
        Sessions(initial=lambda: {"done": False}),
        [MessageHandler(filters.TEXT, slow, block=False)],
    )
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert bot.process(message("x")) == "committed"
    assert stored() == {"done": True}
    # PTB's "won't be automatically awaited" is not true of them: the update awaits them.
    assert [str(w.message) for w in warned if "awaited" in str(w.message)] == []


def test_bots_on_two_threads_do_not_leave_the_warning_filters_changed(monkeypatch):
    """Each non-blocking handler's task is made with PTB's warning silenced for the call;
    two bots' loop threads doing so at once must leave the process's filters as found."""
    from telegram.ext import Application

    from botsessions import ptb

    inside = {name: threading.Event() for name in ("first", "second")}
    go_on = {name: threading.Event() for name in ("first", "second")}

    def create_task(self, coroutine, update=None, *, name=None):
        inside[name].set()
        go_on[name].wait(5)
        return name

    monkeypatch.setattr(Application, "create_task", create_task)
    app = use_sessions(ApplicationBuilder().token("1:x"), Sessions()).build()
    before = list(warnings.filters)

    def on_a_loop_thread(name):
        run = ptb.UpdateRun(app, update=name)
        ptb._current.set(run)
        app.create_task(None, update=name, name=name)

    first = threading.Thread(target=on_a_loop_thread, args=("first",))
    second = threading.Thread(target=on_a_loop_thread, args=("second",))
    first.start()
    assert inside["first"].wait(5)
    second.start()
    inside["second"].wait(0.2)  # reached at once when nothing keeps the calls apart
    go_on["first"].set()
    first.join(5)
    go_on["second"].set()
    second.join(5)
    assert warnings.filters == before


def test_failing_non_blocking_handler_discards_the_update(make_bot):
    async def writes(update, context):
        context.session["n"] = 1

    async def fails(update, context):
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    bot = make_bot(
        Sessions(initial=lambda: {"n": 0}),
        [
            (MessageHandler(filters.TEXT, writes), 0),
            (MessageHandler(filters.TEXT, fails, block=False), 1),
        ],
    )
    assert bot.process(message("x")) == "handler_failed"
    assert stored() is None
    assert str(bot.errors[0]) == "boom"


def test_callback_query_handler(make_bot):
    async def pressed(update, context):
        await update.callback_query.answer()
        context.session["pressed"] = update.callback_query.data

    bot = make_bot(Sessions(initial=dict), [CallbackQueryHandler(pressed)])
    bot.process(callback_query("more"))
    assert stored() == {"pressed": "more"}


def test_conversation_handler(make_bot):
    NAME, AGE = range(2)

    async def start(update, context):
        context.session["form"] = {}
        return NAME

    async def name(update, context):
        context.session["form"]["name"] = update.message.text
        return AGE

    async def age(update, context):
        context.session["form"]["age"] = int(update.message.text)
        return ConversationHandler.END

    conversation = ConversationHandler(
        entry_points=[CommandHandler("start", start)],
        states={
            NAME: [MessageHandler(filters.TEXT & ~filters.COMMAND, name)],
            AGE: [MessageHandler(filters.Regex(r"^\d+$"), age)],
        },
        fallbacks=[],
    )
    bot = make_bot(Sessions(initial=dict), [conversation])
    for text in ["/start", "Alice", "30"]:
        bot.process(message(text))
    assert stored() == {"form": {"name": "Alice", "age": 30}}


def test_session_is_not_available_in_jobs(make_bot):
    """Jobs have no update, so no session; the error says so instead of guessing."""
    errors: list[BaseException] = []

    async def job(context):
        try:
            context.session  # noqa: B018
        except SessionNotLoadedError as exc:
            errors.append(exc)

    async def schedule(update, context):
        await job(
            context.application.context_types.context.from_job(_FakeJob(), context.application)
        )

    bot = make_bot(Sessions(initial=dict), [MessageHandler(filters.TEXT, schedule)])
    bot.process(message("x"))
    assert len(errors) == 1 and "only while an update is processed" in str(errors[0])


class _FakeJob:
    chat_id = None
    user_id = None
    data = None


def test_counters_survive_a_new_application(make_bot):
    """What the README promises: a restart of the process keeps every counter."""

    async def bump(update, context):
        context.session["n"] += 1

    sessions = Sessions(initial=lambda: {"n": 0})
    first = make_bot(sessions, [MessageHandler(filters.TEXT, bump)])
    first.process(message("x"))
    first.close()
    second = make_bot(sessions, [MessageHandler(filters.TEXT, bump)])
    second.process(message("x"))
    assert stored() == {"n": 2}


def test_use_sessions_keeps_custom_data_types():
    class ChatData(dict):
        pass

    builder = ApplicationBuilder().token("1:x").context_types(ContextTypes(chat_data=ChatData))
    app = use_sessions(builder, Sessions()).build()
    assert app.context_types.context is SessionContext
    assert app.context_types.chat_data is ChatData


def test_use_sessions_refuses_a_foreign_context_class():
    class MyContext(CallbackContext):  # type: ignore[type-arg]
        pass

    builder = ApplicationBuilder().token("1:x").context_types(ContextTypes(context=MyContext))
    with pytest.raises(ConfigurationError, match="must subclass"):
        use_sessions(builder, Sessions())


def test_a_subclass_of_session_context_is_kept():
    class MyContext(SessionContext):
        pass

    builder = ApplicationBuilder().token("1:x").context_types(ContextTypes(context=MyContext))
    app = use_sessions(builder, Sessions()).build()
    assert app.context_types.context is MyContext


def test_use_sessions_needs_sessions():
    with pytest.raises(ConfigurationError):
        use_sessions(ApplicationBuilder().token("1:x"), {"initial": dict})  # type: ignore[arg-type]


def test_type_handler_sees_session(make_bot):
    async def handler(update, context):
        context.session["kind"] = "any"

    bot = make_bot(Sessions(initial=dict), [TypeHandler(Update, handler)])
    bot.process(message("x"))
    assert stored() == {"kind": "any"}


def test_post_init_runs_once_before_the_first_update_and_again_after_a_failure(make_bot, api):
    """The webhook starts the application as run_webhook would: initialize, then post_init."""
    calls: list[str] = []

    async def post_init(application: Any) -> None:
        calls.append("post_init")
        if len(calls) == 1:
            raise RuntimeError("the commands could not be set")
        await application.bot.set_my_commands([("hunger", "How hungry?")])

    async def post_shutdown(application: Any) -> None:
        calls.append("post_shutdown")

    async def handler(update: Any, context: Any) -> None:
        calls.append("handler")

    def configure(builder: Any) -> None:
        builder.post_init(post_init).post_shutdown(post_shutdown)

    bot = make_bot(Sessions(initial=dict), [TypeHandler(Update, handler)], configure=configure)
    with pytest.raises(RuntimeError, match="commands"):
        bot.process(message("one"))  # the view answers 503: Telegram delivers it again
    assert bot.process(message("one")) == "unchanged"
    assert bot.process(message("two")) == "unchanged"
    assert calls == ["post_init", "post_init", "handler", "handler"]
    assert len(api.calls_to("getMe")) == 1 and len(api.calls_to("setMyCommands")) == 1
    bot.close()
    assert calls[-1] == "post_shutdown"


def test_a_burst_of_first_updates_under_asgi_starts_the_application_once(make_bot, api):
    started: list[int] = []

    async def post_init(application: Any) -> None:
        started.append(1)

    bot = make_bot(Sessions(initial=dict), [], configure=lambda b: b.post_init(post_init))

    async def burst() -> None:
        await asyncio.gather(*(bot.runner.ainitialize() for _ in range(20)))

    asyncio.run(burst())
    assert len(api.calls_to("getMe")) == 1 and started == [1]


def test_jobs_scheduled_by_post_init_are_refused_under_the_webhook(make_bot):
    async def post_init(application: Any) -> None:
        application.job_queue.run_repeating(lambda context: None, interval=60, name="tick")

    bot = make_bot(Sessions(initial=dict), [], configure=lambda b: b.post_init(post_init))
    with pytest.raises(JobQueueNotRunning, match="would never run"):
        bot.runner.initialize()
