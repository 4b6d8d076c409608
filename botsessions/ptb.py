"""Sessions inside python-telegram-bot: the context, the application and the installer.

PTB builds one :class:`~telegram.ext.CallbackContext` per update, and only when some
handler will handle it, then awaits its ``refresh_data()``. That is where strict
sessions are read, so an update no handler wants costs no query. The application
subclass wraps ``process_update`` to write the sessions after every handler (blocking
or not) has finished, and to discard the changes of an update whose handler raised;
the transaction around all of it is the update's unit of work (:mod:`botsessions.unit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
import types
import warnings
from collections.abc import Awaitable
from typing import Any, Generic, TypeAlias, cast, overload

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError
from telegram import Update
from telegram._utils.defaultvalue import DefaultValue
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackContext,
    ContextTypes,
    ExtBot,
    JobQueue,
)
from telegram.warnings import PTBUserWarning
from typing_extensions import TypeVar

from .chat_migration import migration_of, move_chat
from .config import Fragment, Sessions
from .database_errors import never_works
from .errors import (
    ConfigurationError,
    JobQueueNotRunning,
    SessionDataError,
    SessionNotLoadedError,
    StorageError,
    StoredDataError,
)
from .key_parts import InvalidKeyPart, check_key_parts
from .locks import KeyLocks
from .outcome import Outcome
from .persistence import (
    BOT_DATA,
    CHAT_DATA,
    USER_DATA,
    DjangoPersistence,
    PTBState,
    conversation_handlers,
    conversations_in,
)
from .session import FragmentSession, UpdateSessions, is_internal
from .storage.base import SessionStorage
from .unit import AfterCommit, DatabaseThreads, current_unit, process_as_unit

logger = logging.getLogger("botsessions")

#: What ``context.session`` holds: the data, ``Lazy[data]``, or a class naming the fragments.
S = TypeVar("S", default=Any)
D = TypeVar("D")

#: The type of a lazy session (or fragment): ``SessionContext[Lazy[PizzaData]]``.
Lazy: TypeAlias = Awaitable[D]

# Returned by SessionContext._ptb_data when PTB keeps that piece of its state itself.
_PTB_OWN = object()

# PTB's slots for its in-memory state, still used for the pieces DjangoPersistence does
# not store (SessionApplication's properties stand in front of them).
_PTB_SLOTS: dict[str, Any] = {
    name: Application.__dict__[name] for name in ("bot_data", "chat_data", "user_data")
}

JOB_QUEUE_NOT_RUNNING = (
    "the webhook view runs no JobQueue (a job would live in one web worker's memory and "
    "die with it). Run jobs with `manage.py runbot`, which runs PTB's JobQueue, or "
    "schedule work with a task queue or cron and a management command"
)

#: Idle database threads (each with its connection) an application keeps for next time.
IDLE_DATABASE_THREADS = 8
# The start of PTB's warning about tasks of an application that is not running.
_NOT_AWAITED = "Tasks created via `Application.create_task` while the application is not running"
_WARNINGS_LOCK = threading.Lock()

_current: contextvars.ContextVar[UpdateRun | None] = contextvars.ContextVar(
    "botsessions_update_run", default=None
)


class UpdateRun:
    """The bookkeeping of one ``process_update`` call."""

    __slots__ = (
        "application",
        "begun",
        "ended",
        "failed",
        "moved",
        "outcome",
        "sessions",
        "storage_error",
        "tasks",
        "unit",
        "update",
    )

    def __init__(self, application: SessionApplication, update: object) -> None:
        self.application = application
        self.update = update
        self.sessions: UpdateSessions | None = None
        self.begun = False
        #: Set once the update is processed: a context kept beyond it (a conversation's
        #: timeout handlers, a job copying the handler's context) no longer reaches it.
        self.ended = False
        self.failed = False
        self.storage_error: StorageError | None = None
        self.outcome = Outcome.SKIPPED
        #: How many sessions a chat migration moved (they commit with the update).
        self.moved = 0
        self.tasks: list[asyncio.Task[Any]] = []
        self.unit = current_unit()

    @property
    def loaded_sessions(self) -> UpdateSessions | None:
        """The update's sessions once read, while the update is being processed (its
        sends after the commit included, which may read what was committed)."""
        if not self.begun or (self.ended and not (self.unit is not None and self.unit.sending)):
            return None
        return self.sessions

    def prepare(self) -> UpdateSessions:
        """The update's sessions, with their keys resolved (nothing read yet)."""
        if self.sessions is None:
            app = self.application
            self.sessions = UpdateSessions(
                app.engine_sessions, app.session_bot_id, self.update, app.key_locks
            )
            if app.ptb_state is not None:
                app.ptb_state.prepared(self.sessions)
        return self.sessions

    async def begin(self) -> None:
        """Called from ``refresh_data``: lock and read before the first handler runs."""
        self.begun = True
        sessions = self.prepare()
        try:
            await sessions.begin()
        except StoredDataError as exc:
            self.outcome = Outcome.BAD_STORED_DATA
            self.failed = True
            logger.error("botsessions: update %s not processed: %s", _update_id(self.update), exc)
            raise ApplicationHandlerStop from exc
        except (StorageError, DatabaseError) as exc:
            self.storage_error = _storage_error(exc)
            self.failed = True
            raise ApplicationHandlerStop from exc
        if sessions.already_processed:
            self.outcome = Outcome.DUPLICATE
            self.failed = True
            raise ApplicationHandlerStop
        if self.application.ptb_state is not None:
            self.application.ptb_state.loaded(sessions)

    async def finish(self) -> None:
        """Wait for non-blocking handlers, then commit, unless something failed."""
        while self.tasks:
            tasks, self.tasks = self.tasks, []
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.failed:
            if self.outcome not in (Outcome.DUPLICATE, Outcome.BAD_STORED_DATA):
                self.outcome = Outcome.HANDLER_FAILED
            return
        if self.sessions is None or not self.begun:
            if self.moved:
                self.outcome = Outcome.COMMITTED
            return
        try:
            # An awaitable a handler assigned is the handler's own code: when it raises,
            # the handler failed (or, for want of the database, the update is retried).
            await self.sessions.await_assigned()
        except Exception as exc:
            self.outcome = Outcome.HANDLER_FAILED
            await self.application.process_error(update=self.update, error=exc)
            return
        try:
            if self.application.ptb_state is not None:
                self.application.ptb_state.before_commit(self.sessions)
            changed = await self.sessions.commit()
        except SessionDataError as exc:
            self.outcome = Outcome.HANDLER_FAILED
            await self.application.process_error(update=self.update, error=exc)
            return
        except StoredDataError:
            # A lazy read nobody awaited found a bad row (already logged with its key).
            self.outcome = Outcome.BAD_STORED_DATA
            return
        except (StorageError, DatabaseError) as exc:
            self.storage_error = _storage_error(exc)
            return
        if changed is None:
            self.outcome = Outcome.DUPLICATE
        else:
            # Rows the handlers wrote, or sends after the commit, are committed with the
            # update's record even when no session changed.
            unit = current_unit()
            recorded = unit is not None and unit.needs_record
            changed_anything = changed or self.moved or recorded
            self.outcome = Outcome.COMMITTED if changed_anything else Outcome.UNCHANGED


class SessionContext(
    CallbackContext[ExtBot[Any], dict[Any, Any], dict[Any, Any], dict[Any, Any]], Generic[S]
):
    """The callback context with ``context.session``.

    For a single strict session, ``context.session`` is the data; assign to replace it,
    assign ``None`` (or ``del`` it) to delete it. For a lazy session it is an awaitable
    of the data. For multi sessions it is an object whose attributes are the fragments.
    Shared code that must work in every mode awaits :meth:`session_data` instead.

    The type parameter says what ``context.session`` is, for the type checker:
    ``SessionContext[PizzaData]``, ``SessionContext[Lazy[PizzaData]]``, or for multi
    sessions a class (a ``Protocol``) with one attribute per fragment. Bare
    ``SessionContext`` leaves it untyped.
    """

    # The update's run, set by from_update; unset (read as None) in other contexts, such
    # as a job's, so that building a context costs no extra __init__.
    __slots__ = ("_botsessions_run",)

    _botsessions_run: UpdateRun | None
    _concrete: dict[Any, type[SessionContext[Any]]] = {}

    def __class_getitem__(cls, params: Any) -> Any:
        """``SessionContext[PizzaData]`` as a real subclass, when the data is known.

        PTB's ``ContextTypes(context=...)`` takes only classes, and a typing alias is
        not one: this lets the configuration name the same type as the handlers'
        annotations. With type variables still open it stays a plain typing alias, so
        that generic subclasses keep working.
        """
        alias = super().__class_getitem__(params)  # type: ignore[misc]
        if getattr(alias, "__parameters__", ()):
            return alias
        concrete = cls._concrete.get(alias)
        if concrete is None:
            name = repr(alias).removeprefix(f"{cls.__module__}.")
            concrete = types.new_class(
                name,
                (alias,),
                exec_body=lambda ns: ns.update(__slots__=(), __module__=cls.__module__),
            )
            concrete = cls._concrete.setdefault(alias, concrete)
        return concrete

    @classmethod
    def from_update(
        cls, update: object, application: Application[Any, Any, Any, Any, Any, Any]
    ) -> SessionContext[S]:
        context = super().from_update(update, application)
        run = _current.get()
        context._botsessions_run = run if run is not None and run.update is update else None
        return context

    async def refresh_data(self) -> None:
        run: UpdateRun | None = getattr(self, "_botsessions_run", None)
        if run is not None and not run.begun and not run.ended:
            await run.begin()
        if getattr(self.application, "ptb_state", None) is None or (
            run is not None and run.loaded_sessions is not None
        ):
            # PTB's refresh_* hooks: of another persistence, or of DjangoPersistence (a
            # subclass may override them) with the state begin() read. A job's context
            # has no update's state to give them.
            await super().refresh_data()

    # -- PTB's own state, when DjangoPersistence stores it (botsessions.persistence) -------

    def _ptb_data(self, name: str, what: str) -> Any:
        """The update's ``name`` fragment's data, or ``_PTB_OWN`` when PTB keeps it."""
        state = getattr(self.application, "ptb_state", None)
        if state is None or name not in state.stored:
            return _PTB_OWN
        run: UpdateRun | None = getattr(self, "_botsessions_run", None)
        sessions = run.loaded_sessions if run is not None else None
        if sessions is None:
            raise SessionNotLoadedError(
                f"context.{what} is stored with each update by DjangoPersistence, and exists "
                "only while an update is processed (not in a job's context): give a job what "
                "it needs in its data"
            )
        fragment = sessions.fragments[name]
        return None if fragment.key is None else fragment.get()

    @property  # type: ignore[misc]  # PTB's setter only refuses assignment, as no setter does
    def chat_data(self) -> Any:
        data = self._ptb_data(CHAT_DATA, "chat_data")
        return super().chat_data if data is _PTB_OWN else data

    @property  # type: ignore[misc]  # read-only, as in PTB
    def user_data(self) -> Any:
        data = self._ptb_data(USER_DATA, "user_data")
        return super().user_data if data is _PTB_OWN else data

    @property  # type: ignore[misc]  # read-only, as in PTB
    def bot_data(self) -> Any:
        data = self._ptb_data(BOT_DATA, "bot_data")
        return super().bot_data if data is _PTB_OWN else data

    @property
    def job_queue(self) -> Any:
        """PTB's JobQueue, refused where it is not running (the webhook never runs it)."""
        queue = super().job_queue
        if queue is not None and not queue.scheduler.running:
            raise JobQueueNotRunning(
                "the JobQueue is not running here, so a job scheduled now would never run: "
                + JOB_QUEUE_NOT_RUNNING
            )
        return queue

    def on_commit(self, send: AfterCommit) -> None:
        """Send something only once this update has committed.

        ``send`` is an awaitable (``update.message.reply_text("Paid.")``) or a function
        returning one. It runs after the commit, in the order given, before the webhook
        answers. When the update rolls back (a handler raised, a redelivery) it never
        runs; when it fails, the error is logged and not retried, since the update is
        already acknowledged.
        """
        run: UpdateRun | None = getattr(self, "_botsessions_run", None)
        unit = current_unit()
        if run is None or run.ended or unit is None:
            if inspect.iscoroutine(send):
                send.close()
            raise SessionNotLoadedError(
                "context.on_commit works only while an update is processed as a unit of "
                "work (the webhook view, runbot, or SessionApplication.process_update)"
            )
        unit.after_commit(send)

    def _update_sessions(self) -> UpdateSessions:
        if getattr(self.application, "sessions", None) is None:
            raise SessionNotLoadedError(
                "this bot has no sessions, only PTB's state: pass a botsessions.Sessions to "
                "use_sessions(builder, sessions) to use context.session"
            )
        run: UpdateRun | None = getattr(self, "_botsessions_run", None)
        sessions = run.loaded_sessions if run is not None else None
        if sessions is None:
            raise SessionNotLoadedError(
                "context.session exists only while an update is processed by a "
                "SessionApplication (not in jobs, and not before the handlers run)"
            )
        return sessions

    @property
    def session(self) -> S:
        sessions = self._update_sessions()
        if sessions.is_multi:
            view = sessions.view
            if view is None:
                view = sessions.view = MultiSession(sessions)
            return cast(S, view)
        fragment = sessions.single
        return cast(S, fragment.awaitable() if fragment.fragment.lazy else fragment.get())

    @session.setter
    def session(self, value: S | None) -> None:
        sessions = self._update_sessions()
        if sessions.is_multi:
            sessions.assign_all(value)
        else:
            sessions.single.set(value)

    @session.deleter
    def session(self) -> None:
        """``del context.session``: delete the session (every fragment of a multi one)."""
        self.session = None

    @overload
    async def session_data(self: SessionContext[Lazy[D]]) -> D: ...
    @overload
    async def session_data(self: SessionContext[D]) -> D: ...
    @overload
    async def session_data(self, fragment: Fragment[D]) -> D: ...
    @overload
    async def session_data(self, fragment: str) -> Any: ...
    async def session_data(self, fragment: Fragment[Any] | str | None = None) -> Any:
        """The session's data, read if it is lazy: one call for strict and lazy alike.

        Without an argument it is ``context.session``, awaited when the session is
        lazy (for multi sessions, the object of fragments). With a fragment, given by
        its name or by the :class:`~botsessions.Fragment` it was configured with, it is
        that fragment's data. Reusable handlers call this, so that they work whichever
        mode the bot that installs them chose; a typed ``Fragment[D]`` gives data typed
        ``D``.
        """
        sessions = self._update_sessions()
        if fragment is None:
            if sessions.is_multi:
                return self.session
            state = sessions.single
        else:
            state = _fragment_session(sessions, fragment)
        if state.fragment.lazy:
            return await state.awaitable()
        return state.get()


class MultiSession:
    """``context.session`` of a multi session: one attribute per fragment."""

    __slots__ = ("_sessions",)

    _sessions: UpdateSessions

    def __init__(self, sessions: UpdateSessions) -> None:
        object.__setattr__(self, "_sessions", sessions)

    def __getattr__(self, name: str) -> Any:
        try:
            fragment = self._sessions.fragments[name]
            if is_internal(name):
                raise KeyError(name)
        except KeyError:
            fragment = self._fragment(name)  # raises the AttributeError
        return fragment.awaitable() if fragment.fragment.lazy else fragment.get()

    def __setattr__(self, name: str, value: Any) -> None:
        self._fragment(name).set(value)

    def __delattr__(self, name: str) -> None:
        """``del context.session.chat`` deletes that fragment, as assigning ``None`` does."""
        self._fragment(name).set(None)

    def __dir__(self) -> list[str]:
        return [name for name in self._sessions.fragments if not is_internal(name)]

    def _fragment(self, name: str) -> FragmentSession:
        try:
            if is_internal(name):
                raise KeyError(name)
            return self._sessions.fragments[name]
        except KeyError:
            raise AttributeError(
                f"no session fragment named {name!r}; configured: "
                f"{', '.join(self._sessions.fragments)}"
            ) from None


class SessionApplication(Application):  # type: ignore[type-arg]
    """An :class:`~telegram.ext.Application` that loads and saves sessions per update."""

    def __init__(self, *, sessions: Sessions | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: PTB's own state, when a DjangoPersistence stores it (else ``None``).
        self.ptb_state = (
            PTBState(self, self.persistence)
            if isinstance(self.persistence, DjangoPersistence)
            else None
        )
        if sessions is None and self.ptb_state is None:
            raise ConfigurationError(
                "a SessionApplication needs a botsessions.Sessions, or a DjangoPersistence "
                "given to the builder (.persistence(DjangoPersistence())) to store PTB's state"
            )
        if sessions is not None and not isinstance(sessions, Sessions):
            raise ConfigurationError("sessions must be a botsessions.Sessions")
        if not isinstance(self.context_types.context, type) or not issubclass(
            self.context_types.context, SessionContext
        ):
            raise ConfigurationError(
                "a SessionApplication needs ContextTypes(context=SessionContext) "
                "(or a subclass of it); use botsessions.use_sessions(builder, sessions)"
            )
        self.sessions = sessions
        self.key_locks = KeyLocks()
        # The threads of updates that no waiting thread brings (ASGI, long polling).
        self.database_threads = DatabaseThreads(keep=IDLE_DATABASE_THREADS)
        self._bot_id_of: tuple[str, int] | None = None  # (token, the id it starts with)
        self._engine_sessions: Sessions | None = None
        #: Set by the webhook's BotRunner: this process never runs the JobQueue.
        self.served_by_webhook = False

    # -- PTB's in-memory state, refused where DjangoPersistence stores it instead ---------

    def _in_memory(self, name: str) -> Any:
        """PTB's in-memory ``name``, unless DjangoPersistence stores that piece: then a
        change made there would never be stored nor seen by a handler, so it raises."""
        state = getattr(self, "ptb_state", None)  # None while PTB's __init__ runs
        if state is not None and getattr(state.persistence.store_data, name):
            whose = "" if name == "bot_data" else f" (of the update's {name[:4]})"
            raise SessionNotLoadedError(
                f"application.{name} is PTB's in-memory {name}, which DjangoPersistence "
                "stores per update instead: what is put there stays in this process's memory, "
                f"never stored and never seen by a handler. Use context.{name}{whose} inside "
                "a handler"
                + (
                    " (defaults: a ContextTypes(bot_data=...) class that sets them)"
                    if name == "bot_data"
                    else ""
                )
            )
        return _PTB_SLOTS[name].__get__(self, type(self))

    @property
    def bot_data(self) -> Any:
        return self._in_memory("bot_data")

    @bot_data.setter
    def bot_data(self, value: Any) -> None:
        _PTB_SLOTS["bot_data"].__set__(self, value)

    @property
    def chat_data(self) -> Any:
        return self._in_memory("chat_data")

    @chat_data.setter
    def chat_data(self, value: Any) -> None:
        _PTB_SLOTS["chat_data"].__set__(self, value)

    @property
    def user_data(self) -> Any:
        return self._in_memory("user_data")

    @user_data.setter
    def user_data(self, value: Any) -> None:
        _PTB_SLOTS["user_data"].__set__(self, value)

    async def _initialize_persistence(self) -> None:
        # Under DjangoPersistence nothing is loaded: each update reads its own state.
        if self.ptb_state is None:
            await super()._initialize_persistence()

    def add_handler(self, handler: Any, group: int = 0) -> None:
        """PTB's ``add_handler``; a persistent conversation must come before ``initialize``
        under DjangoPersistence, which makes its fragment then."""
        if self.ptb_state is not None and self._initialized:
            for conversation in conversations_in([handler]):
                if conversation.persistent and conversation.name:
                    raise ConfigurationError(
                        f"persistent ConversationHandler {conversation.name!r} added after the "
                        "application was initialized: DjangoPersistence stores the conversations "
                        "it knows at start-up; add it where the application is built"
                    )
        super().add_handler(handler, group)

    @property
    def job_queue(self) -> Any:
        """PTB's JobQueue; refused under the webhook, which never runs it, while it is
        not running (``runbot`` runs it, and it takes jobs before it starts)."""
        queue = self._job_queue
        if self.served_by_webhook and queue is not None and not queue.scheduler.running:
            raise JobQueueNotRunning(
                "application.job_queue is not running here, so a job scheduled on it would "
                "never run: " + JOB_QUEUE_NOT_RUNNING
            )
        return super().job_queue

    def _refuse_what_would_never_run(self) -> None:
        """At start-up: jobs and conversation timeouts this process would never run."""
        queue = self._job_queue
        if self.served_by_webhook and queue is not None and queue.jobs():
            names = ", ".join(sorted(job.name or "?" for job in queue.jobs()))
            raise JobQueueNotRunning(
                f"the application's JobQueue holds jobs ({names}) that would never run: "
                + JOB_QUEUE_NOT_RUNNING
            )
        for handler in conversation_handlers(self):
            if not handler.conversation_timeout:
                continue
            if handler.persistent and self.ptb_state is not None:
                why = (
                    "while DjangoPersistence stores the conversation itself, so other processes "
                    "and a restart would not know of the timeout (refused under runbot too)"
                )
            elif self.served_by_webhook:
                why = "which the webhook never runs (`manage.py runbot` does)"
            else:
                continue
            raise ConfigurationError(
                f"ConversationHandler {handler.name or handler!r} has a conversation_timeout: "
                f"a job of PTB's JobQueue, held in one process's memory, {why}. End such "
                "conversations with a state or a command of your own, or store a deadline in "
                "chat_data"
            )

    @property
    def engine_sessions(self) -> Sessions:
        """What the session engine reads and writes per update: the sessions, and the
        fragments of PTB's state when a DjangoPersistence stores it."""
        if self._engine_sessions is None:
            if self.ptb_state is None:
                assert self.sessions is not None
                self._engine_sessions = self.sessions
            else:
                self._engine_sessions = self.ptb_state.combine(self.sessions)
        return self._engine_sessions

    async def initialize(self) -> None:
        if not self._initialized:
            self._refuse_what_would_never_run()
            if self.ptb_state is not None:
                # The handlers are all added by now: their conversations become fragments.
                self._engine_sessions = self.ptb_state.combine(self.sessions)
        await super().initialize()  # PTB asks the persistence for its state: none
        if self.ptb_state is not None:
            self.ptb_state.install()

    async def shutdown(self) -> None:
        await super().shutdown()
        # Connections the storages opened on this loop (Redis's, from url=) end with it:
        # under the webhook's runner, runbot, and a test kit's BotClient alike.
        for storage in self.session_storages():
            await storage.close_for_loop()

    async def update_persistence(self) -> None:
        """PTB's timer; under DjangoPersistence each update has written its state already."""
        if self.ptb_state is None:
            await super().update_persistence()

    def _mark_for_persistence_update(self, *, update: object = None, job: Any = None) -> None:
        # PTB remembers the ids for its timer; DjangoPersistence needs none of them.
        if self.ptb_state is None:
            super()._mark_for_persistence_update(update=update, job=job)

    def drop_chat_data(self, chat_id: int) -> None:
        """Drop a chat's chat_data; under DjangoPersistence, in the update's commit."""
        if self.ptb_state is None or not self.ptb_state.persistence.store_data.chat_data:
            return super().drop_chat_data(chat_id)
        self.ptb_state.drop(self._ptb_sessions("drop_chat_data"), CHAT_DATA, "chat", chat_id)
        return None

    def drop_user_data(self, user_id: int) -> None:
        """Drop a user's user_data; under DjangoPersistence, in the update's commit."""
        if self.ptb_state is None or not self.ptb_state.persistence.store_data.user_data:
            return super().drop_user_data(user_id)
        self.ptb_state.drop(self._ptb_sessions("drop_user_data"), USER_DATA, "user", user_id)
        return None

    def migrate_chat_data(
        self,
        message: Any = None,
        old_chat_id: int | None = None,
        new_chat_id: int | None = None,
    ) -> None:
        """Move chat_data to a supergroup; under DjangoPersistence, in the update's commit
        (for the two chats the update's migration message names)."""
        if self.ptb_state is None or not self.ptb_state.persistence.store_data.chat_data:
            return super().migrate_chat_data(message, old_chat_id, new_chat_id)
        if message is not None:
            if old_chat_id or new_chat_id:
                raise ValueError("give a message or the two chat ids, not both")
            old_chat_id = message.migrate_from_chat_id or message.chat.id
            new_chat_id = message.migrate_to_chat_id or message.chat.id
        if not (isinstance(old_chat_id, int) and isinstance(new_chat_id, int)):
            raise ValueError("migrate_chat_data needs a migration message or two chat ids")
        sessions = self._ptb_sessions("migrate_chat_data")
        self.ptb_state.migrate(sessions, old_chat_id, new_chat_id)
        return None

    def _ptb_sessions(self, what: str) -> UpdateSessions:
        run = _current.get()
        sessions = run.loaded_sessions if run is not None else None
        if sessions is None:
            raise SessionNotLoadedError(
                f"{what} under DjangoPersistence takes effect in the commit of the update "
                "being processed; call it from a handler"
            )
        return sessions

    @property
    def session_bot_id(self) -> int:
        """The bot's id, from its token (known before ``getMe`` is ever called)."""
        token = self.bot.token
        known = self._bot_id_of
        if known is not None and known[0] is token:
            return known[1]
        head = token.split(":", 1)[0]
        if not head.isdigit():
            bot_id: int = self.bot.id
            return bot_id
        self._bot_id_of = (token, int(head))
        return self._bot_id_of[1]

    def session_storages(self) -> list[SessionStorage]:
        """The storages the application's fragments use, each once."""
        found: dict[int, SessionStorage] = {}
        for fragment in self.engine_sessions.fragments.values():
            storage = fragment.resolve_storage()
            found.setdefault(id(storage), storage)
        return list(found.values())

    @property
    def unit_database(self) -> str:
        """The database alias of the update's transaction: where its sessions are stored."""
        from .storage.db import DatabaseStorage, default_database_storage

        for fragment in self.engine_sessions.fragments.values():
            storage = fragment.resolve_storage()
            if isinstance(storage, DatabaseStorage):
                return storage.using
        return default_database_storage().using

    async def process_update(self, update: object) -> None:
        """Process one update as a unit of work, committed before this returns.

        This is what PTB's own update fetcher (``run_polling``) calls: the update's
        database work runs on a thread of the application's (see
        :class:`~botsessions.unit.DatabaseThreads`). Raises
        :class:`~botsessions.errors.StorageError` when it must be delivered again.
        """
        if isinstance(update, Update):
            try:
                check_key_parts(update)  # the webhook checks in decode(); polling, here
            except InvalidKeyPart as exc:
                logger.error("botsessions: update %s ignored: %s", update.update_id, exc)
                return
        await process_as_unit(self, update, fresh_connections=True)

    async def process_update_with_sessions(self, update: object) -> str:
        """Run the handlers with sessions and write them; return the :class:`Outcome`.

        It does not open the transaction: :func:`~botsessions.unit.process_as_unit` does,
        and commits what this wrote (or rolls it back).
        """
        run = UpdateRun(self, update)
        token = _current.set(run)
        ptb = self.ptb_state
        states = ptb.start() if ptb is not None else None
        try:
            try:
                await self._before_dispatch(run, update)
            except (StorageError, DatabaseError):
                raise  # delivered again (a 503), as a failed read: not the handlers' error
            except Exception as exc:  # a key resolver of the project's
                await self.process_error(update, exc)
            if not run.failed:
                await super().process_update(update)
            await run.finish()
        finally:
            run.ended = True
            if states is not None:
                ptb.finish(states)  # type: ignore[union-attr]
            _current.reset(token)
            if run.sessions is not None:
                try:
                    await run.sessions.unlock_storages()
                finally:
                    run.sessions.release()
        if run.storage_error is not None:
            raise run.storage_error
        return run.outcome

    async def _before_dispatch(self, run: UpdateRun, update: object) -> None:
        """What runs before PTB dispatches: a chat migration's moves, and the early read
        of a persistent conversation's state. Both resolve the update's keys with the
        project's resolvers, whose errors are the handlers' (PTB's error handlers)."""
        if self.engine_sessions.migrate_chats and isinstance(update, Update):
            ids = migration_of(update)
            if ids is not None:
                run.moved = len(await move_chat(run.prepare(), *ids))
                unit = current_unit()
                if run.moved and unit is not None and unit.begun:
                    # The moves stand even if a handler fails (see keep_so_far).
                    await sync_to_async(unit.keep_so_far)()
        ptb = self.ptb_state
        if ptb is not None and ptb.conversations and ptb.needs_early_read(run.prepare()):
            # A persistent conversation can reach the update: its state is read before
            # dispatch (check_update reads it synchronously), with everything else.
            with contextlib.suppress(ApplicationHandlerStop):
                await run.begin()

    async def process_error(
        self,
        update: object | None,
        error: Exception,
        job: Any = None,
        coroutine: Any = None,
    ) -> bool:
        run = _current.get()
        if run is not None and update is run.update and not run.ended:
            run.failed = True
            # A lazy read, or a handler's own query, failed for want of the database
            # (down, a lock wait past the timeout, a deadlock): deliver it again. A query
            # that can never work (a table not migrated yet) is the handler's bug.
            transient = isinstance(error, StorageError | OperationalError | InterfaceError)
            if transient and run.storage_error is None and not never_works(error):
                run.storage_error = _storage_error(error)
        return await super().process_error(update, error, job, coroutine)

    def create_task(
        self, coroutine: Any, update: object | None = None, *, name: str | None = None
    ) -> asyncio.Task[Any]:
        run = _current.get()
        if run is None or update is not run.update or run.ended:
            return super().create_task(coroutine, update=update, name=name)
        # Non-blocking handlers: the session is saved only after they finish. PTB warns
        # that tasks of an application that is not running (the webhook's never is) are
        # not awaited; these are, by the update. The filters are process-wide: bots on
        # other loop threads must not restore them in between.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", _NOT_AWAITED, PTBUserWarning)
            task = super().create_task(coroutine, update=update, name=name)
        run.tasks.append(task)
        return task


# The builder's other type parameters, kept as they are by use_sessions.
_BT = TypeVar("_BT", bound=ExtBot[Any])
_SC = TypeVar("_SC", bound=SessionContext[Any])
_UD = TypeVar("_UD")
_CD = TypeVar("_CD")
_BD = TypeVar("_BD")
_JQ = TypeVar("_JQ", bound=JobQueue[Any] | None)


@overload
def use_sessions(
    builder: ApplicationBuilder[_BT, _SC, _UD, _CD, _BD, _JQ], sessions: Sessions | None = None
) -> ApplicationBuilder[_BT, _SC, _UD, _CD, _BD, _JQ]: ...
@overload
def use_sessions(
    builder: ApplicationBuilder[_BT, Any, _UD, _CD, _BD, _JQ], sessions: Sessions | None = None
) -> ApplicationBuilder[_BT, SessionContext[Any], _UD, _CD, _BD, _JQ]: ...
def use_sessions(
    builder: ApplicationBuilder[Any, Any, Any, Any, Any, Any], sessions: Sessions | None = None
) -> ApplicationBuilder[Any, Any, Any, Any, Any, Any]:
    """Configure an ``ApplicationBuilder`` so that the application it builds has sessions.

    It sets the application class to :class:`SessionApplication` and the context class
    to :class:`SessionContext`, keeping custom ``chat_data``/``user_data``/``bot_data``
    types. A custom context class must subclass :class:`SessionContext`. ``sessions``
    may be left out when the builder has a
    :class:`~botsessions.persistence.DjangoPersistence`: PTB's state is then all it stores.
    """
    if sessions is None:
        if not isinstance(DefaultValue.get_value(builder._persistence), DjangoPersistence):
            raise ConfigurationError(
                "use_sessions() needs a botsessions.Sessions, or a builder with "
                ".persistence(DjangoPersistence()) (PTB's state stored per update)"
            )
    elif not isinstance(sessions, Sessions):
        raise ConfigurationError("use_sessions() needs a botsessions.Sessions")
    # The builder keeps what it was given privately; PTB wraps unset values in DefaultValue.
    types: ContextTypes[Any, Any, Any, Any] = DefaultValue.get_value(builder._context_types)
    if not issubclass(types.context, SessionContext):
        if types.context is not CallbackContext:
            raise ConfigurationError(
                f"the context class {types.context.__name__} must subclass "
                "botsessions.SessionContext to carry sessions"
            )
        builder.context_types(
            ContextTypes(
                context=SessionContext,
                bot_data=types.bot_data,
                chat_data=types.chat_data,
                user_data=types.user_data,
            )
        )
    app_class = DefaultValue.get_value(builder._application_class)
    if not issubclass(app_class, SessionApplication):
        if app_class is not Application:
            raise ConfigurationError(
                f"the application class {app_class.__name__} must subclass "
                "botsessions.SessionApplication to carry sessions"
            )
        app_class = SessionApplication
    kwargs = dict(builder._application_kwargs)
    kwargs["sessions"] = sessions
    builder.application_class(app_class, kwargs=kwargs)
    return builder


def _fragment_session(sessions: UpdateSessions, fragment: Fragment[Any] | str) -> FragmentSession:
    """The update's session of a fragment given by name or by its configuration."""
    names = [name for name in sessions.fragments if not is_internal(name)]
    if isinstance(fragment, str):
        if not sessions.is_multi or fragment not in names:
            configured = ", ".join(names) if sessions.is_multi else "a single session"
            raise ConfigurationError(
                f"no session fragment named {fragment!r}; configured: {configured}"
            )
        return sessions.fragments[fragment]
    found = [sessions.fragments[n] for n in names if sessions.fragments[n].fragment is fragment]
    if len(found) != 1:
        raise ConfigurationError(
            "that Fragment is not one of this application's sessions"
            if not found
            else "that Fragment is configured under several names: pass the name instead"
        )
    return found[0]


def _storage_error(exc: Exception) -> StorageError:
    """A database error a storage let through is still a storage failure: retry the update."""
    if isinstance(exc, StorageError):
        return exc
    error = StorageError(f"session storage failed: {exc}")
    error.__cause__ = exc
    return error


def _update_id(update: object) -> object:
    return getattr(update, "update_id", "?")
