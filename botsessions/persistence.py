"""PTB's own state (chat_data, user_data, bot_data, conversations) stored per update.

python-telegram-bot's persistence classes keep every chat in memory, load them all at
start-up and write them on a timer. :class:`DjangoPersistence` plugs into the same
``ApplicationBuilder().persistence(...)`` slot but does none of that: it only tells the
:class:`~botsessions.ptb.SessionApplication` which state to store, and the session engine
reads and writes that state with each update, as fragments of the update's sessions.

Where each piece lives (rows of the sessions table, fragment names reserved for PTB):

============================  ==========================  ===========================
state                         fragment                    key
============================  ==========================  ===========================
``context.chat_data``         ``ptb.chat_data``           :func:`~botsessions.keys.per_chat`
``context.user_data``         ``ptb.user_data``           :func:`~botsessions.keys.per_user`
``context.bot_data``          ``ptb.bot_data``            ``bot``
a persistent conversation     ``ptb.conversation.NAME``   ``chat:C:user:U`` (its ``per_*``)
============================  ==========================  ===========================

So chat_data and user_data follow the session keys: a business chat's data is not the
bot's own chat's with the same id. Conversation keys are the handler's own key (chat,
user, message) behind the same business or guest space.

A ``ConversationHandler`` decides synchronously, before any handler runs, whether an
update continues a conversation. So for a bot with persistent conversations, an update
that one of them could reach is read (with its sessions and the rest of its PTB state,
in the same statement) before dispatch; a bot without them reads nothing for an update
no handler takes. During the update each conversation's state lives in a mapping of the
update's own (:class:`ConversationStates`), so concurrent updates never see each other's
states and nothing is kept in memory afterwards.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.ext import BasePersistence, ConversationHandler, PersistenceInput
from telegram.ext._handlers.conversationhandler import PendingState
from typing_extensions import is_typeddict  # typing's misses typing_extensions' own

from .chat_migration import migration_of
from .config import Fragment, Sessions
from .errors import ConfigurationError, SessionDataError, SessionNotLoadedError
from .keys import describe_key, per_chat, per_user, place_of
from .serializers import (
    DataclassSerializer,
    DictSubclassSerializer,
    JSONSerializer,
    Serializer,
    default_serializer,
)
from .storage.base import Delete, StorageKey, StoredSession, Write

if TYPE_CHECKING:
    from telegram.ext import Application

    from .session import FragmentSession, UpdateSessions

#: Fragment names that start with this hold PTB's state; a session's name never does
#: (it cannot hold a dot: :func:`botsessions.session.is_internal`).
PTB_PREFIX = "ptb."
CHAT_DATA = "ptb.chat_data"
USER_DATA = "ptb.user_data"
BOT_DATA = "ptb.bot_data"
CONVERSATION = "ptb.conversation."
BOT_KEY = "bot"
#: The fragment column holds 64 characters.
MAX_CONVERSATION_NAME = 64 - len(CONVERSATION)

ConversationKey = tuple[int | str, ...]

# The conversation states of the update being processed: handler name → key → state.
_states: contextvars.ContextVar[dict[str, dict[ConversationKey, object]] | None] = (
    contextvars.ContextVar("botsessions_conversation_states", default=None)
)


class DjangoPersistence(BasePersistence[dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """PTB's chat_data, user_data, bot_data and persistent conversations, stored per update.

    Give it to the builder as any PTB persistence, and build with
    :func:`~botsessions.use_sessions` (the ``Sessions`` argument is optional)::

        builder = ApplicationBuilder().token(TOKEN).persistence(DjangoPersistence())
        application = use_sessions(builder).build()

    Each update reads only its own chat's, user's and conversations' state (and
    ``bot_data``), in the statement that reads its sessions, and writes what changed in
    its transaction: nothing is loaded at start-up and nothing waits for a timer.
    ``store_data`` turns pieces off as in PTB. ``serializer`` (JSON by default) stores
    every piece, conversation states included, except those given one of their own:
    ``chat_data_serializer``, ``user_data_serializer``, ``bot_data_serializer`` (each
    piece can have a class of its own in ``ContextTypes``, so each needs a serializer
    that builds it). Arbitrary callback data is not persisted yet.
    """

    def __init__(
        self,
        store_data: PersistenceInput | None = None,
        *,
        serializer: Serializer = default_serializer,
        chat_data_serializer: Serializer | None = None,
        user_data_serializer: Serializer | None = None,
        bot_data_serializer: Serializer | None = None,
    ) -> None:
        # The interval only paces PTB's timer, which has nothing to write here.
        super().__init__(store_data=store_data, update_interval=3600)
        self.serializer = serializer
        #: The serializer of each piece of PTB's data, by its name in ``store_data``.
        self.serializers: dict[str, Serializer] = {
            "chat_data": chat_data_serializer or serializer,
            "user_data": user_data_serializer or serializer,
            "bot_data": bot_data_serializer or serializer,
        }
        self.application: Application[Any, Any, Any, Any, Any, Any] | None = None

    def attach(self, application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Called by the SessionApplication that stores this persistence's state."""
        if self.application is not None and self.application is not application:
            raise ConfigurationError("a DjangoPersistence serves one application")
        self.application = application

    def _attached(self) -> Application[Any, Any, Any, Any, Any, Any]:
        if self.application is None:
            raise ConfigurationError(
                "DjangoPersistence stores PTB's state with each update, in botsessions' unit "
                "of work, which a plain Application does not run: build the application with "
                "botsessions.use_sessions(ApplicationBuilder()...persistence(DjangoPersistence()))"
            )
        return self.application

    # -- start-up: nothing is loaded (each update reads its own state) ------------------

    async def get_user_data(self) -> dict[int, dict[Any, Any]]:
        self._attached()
        return {}

    async def get_chat_data(self) -> dict[int, dict[Any, Any]]:
        self._attached()
        return {}

    async def get_bot_data(self) -> dict[Any, Any]:
        # PTB checks the type against its ContextTypes; each update gets its own copy.
        return self._attached().context_types.bot_data()  # type: ignore[no-any-return]

    async def get_callback_data(self) -> None:
        return None

    async def get_conversations(self, name: str) -> dict[ConversationKey, object]:
        self._attached()
        return {}

    # -- PTB's timer: everything was written with its update already --------------------

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        return None

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        return None

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        return None

    async def update_callback_data(self, data: Any) -> None:
        return None

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        return None

    async def drop_chat_data(self, chat_id: int) -> None:
        return None

    async def drop_user_data(self, user_id: int) -> None:
        return None

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        return None

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        return None

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        return None

    async def flush(self) -> None:
        return None


# -- conversation keys -----------------------------------------------------------------


def conversation_key(handler: ConversationHandler[Any], update: object) -> ConversationKey | None:
    """The key ``handler`` gives ``update``, or ``None`` when it cannot reach the update.

    The same conditions as ``ConversationHandler.check_update`` (which reads its state
    with this key), so the state of every conversation an update can reach is loaded.
    """
    if not isinstance(update, Update) or update.channel_post or update.edited_channel_post:
        return None
    chat, user, query = update.effective_chat, update.effective_user, update.callback_query
    if (handler.per_chat and chat is None) or (handler.per_user and user is None):
        return None
    if handler.per_message and query is None:
        return None
    if query is not None and handler.per_chat and query.message is None:
        return None
    key: list[int | str] = []
    if handler.per_chat:
        key.append(chat.id)  # type: ignore[union-attr]
    if handler.per_user:
        key.append(user.id)  # type: ignore[union-attr]
    if handler.per_message:
        assert query is not None
        key.append(query.inline_message_id or query.message.message_id)  # type: ignore[union-attr]
    return tuple(key)


def conversation_key_text(handler: ConversationHandler[Any], update: object) -> str | None:
    """The stored key of ``handler``'s conversation in ``update``: ``chat:C:user:U`` and
    so on, behind the business or guest space of the update's chat."""
    key = conversation_key(handler, update)
    if key is None:
        return None
    parts = iter(key)
    words = []
    place = place_of(update)
    if handler.per_chat:
        chat = f"chat:{next(parts)}"
        if place is not None and place.chat_names_user and not handler.per_user:
            # A private guest chat's id is one of two people's: the summoner keeps
            # different people's chats apart, as in per_chat's own key.
            chat = place.chat or chat
        words.append(chat)
    if handler.per_user:
        words.append(f"user:{next(parts)}")
    if handler.per_message:
        query = update.callback_query  # type: ignore[attr-defined]
        kind = "inline" if query.inline_message_id else "message"
        words.append(f"{kind}:{next(parts)}")
    return (place.space if place is not None else "") + ":".join(words)


def _conversation_resolver(handler: ConversationHandler[Any]) -> Callable[[object], str | None]:
    def resolve(update: object) -> str | None:
        return conversation_key_text(handler, update)

    return resolve


def _bot_key(update: object) -> str:
    return BOT_KEY


_bot_key.chat_key = None  # type: ignore[attr-defined]  # bot_data never moves with a chat


def conversation_handlers(
    application: Application[Any, Any, Any, Any, Any, Any],
) -> list[ConversationHandler[Any]]:
    """Every ConversationHandler of the application, nested ones too."""
    return conversations_in(h for handlers in application.handlers.values() for h in handlers)


def conversations_in(handlers: Iterable[object]) -> list[ConversationHandler[Any]]:
    """The ConversationHandlers among ``handlers``, and those nested in them."""
    found: list[ConversationHandler[Any]] = []
    pending = list(handlers)
    while pending:
        handler = pending.pop()
        if isinstance(handler, ConversationHandler):
            found.append(handler)
            for children in (handler.entry_points, handler.fallbacks, *handler.states.values()):
                pending.extend(children)
    return found


def persistent_conversations(
    application: Application[Any, Any, Any, Any, Any, Any],
) -> dict[str, ConversationHandler[Any]]:
    """Every persistent, named ConversationHandler of the application, by name.

    Two of them with one name would share one row per key, each taking the other's
    state for its own: refused.
    """
    found: dict[str, ConversationHandler[Any]] = {}
    for handler in conversation_handlers(application):
        if not (handler.persistent and handler.name):
            continue
        other = found.setdefault(handler.name, handler)
        if other is not handler:
            raise ConfigurationError(
                f"two persistent ConversationHandlers are named {handler.name!r}: each "
                "conversation's state is stored under its name, so give each a name of its own"
            )
    return found


# -- the state of one update -------------------------------------------------------------


class ConversationStates(MutableMapping[ConversationKey, object]):
    """What a persistent ConversationHandler keeps its states in, under DjangoPersistence.

    It reads and writes the states of the update being processed (loaded before
    dispatch), never a dict shared by the process: two updates of the same chat in two
    processes, or of two chats in one, each see their own.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _current(self, writing: bool = False) -> dict[ConversationKey, object]:
        states = _states.get()
        if states is None:
            if writing:
                raise SessionNotLoadedError(
                    f"conversation {self.name!r} changed outside an update: under "
                    "DjangoPersistence conversations change only while an update is processed "
                    "(conversation_timeout needs PTB's JobQueue, which is not supported)"
                )
            return {}
        return states.setdefault(self.name, {})

    def __getitem__(self, key: ConversationKey) -> object:
        return self._current()[key]

    def __setitem__(self, key: ConversationKey, value: object) -> None:
        self._current(writing=True)[key] = value

    def __delitem__(self, key: ConversationKey) -> None:
        del self._current(writing=True)[key]

    def __iter__(self) -> Iterator[ConversationKey]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


class PTBState:
    """The PTB state of one SessionApplication: its fragments, and the per-update steps."""

    def __init__(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        persistence: DjangoPersistence,
    ) -> None:
        self.application = application
        self.persistence = persistence
        persistence.attach(application)
        types = application.context_types
        store = persistence.store_data
        if store.callback_data and getattr(application.bot, "callback_data_cache", None):
            raise ConfigurationError(
                "DjangoPersistence does not store arbitrary callback data yet: give it "
                "store_data=PersistenceInput(callback_data=False) to keep the buttons' data in "
                "memory only (lost at a restart, and unknown to other processes)"
            )
        #: The serializer of each piece: the persistence's, or, for a ``dict`` subclass
        #: in ``ContextTypes`` stored as JSON, one that reads it back as that class.
        self.serializers = dict(persistence.serializers)
        for name, kind in (
            ("chat_data", types.chat_data),
            ("user_data", types.user_data),
            ("bot_data", types.bot_data),
        ):
            serializer = persistence.serializers[name]
            if not getattr(store, name):
                continue
            if isinstance(serializer, DataclassSerializer) and serializer.cls is not kind:
                raise ConfigurationError(
                    f"the {name}_serializer builds {serializer.cls.__name__}, but "
                    f"ContextTypes({name}=...) is {getattr(kind, '__name__', kind)}: give "
                    "ContextTypes the same class"
                )
            if kind is dict or is_typeddict(kind) or type(serializer) is not JSONSerializer:
                continue  # plain dicts (a TypedDict's too), or a serializer of its own
            if not issubclass(kind, dict):
                raise ConfigurationError(
                    f"DjangoPersistence stores {name} as JSON, so ContextTypes({name}=...) must "
                    f"be dict or a subclass of it (it is {kind.__name__}); or give "
                    f"DjangoPersistence a {name}_serializer that stores your type "
                    f"(DjangoPersistence({name}_serializer=DataclassSerializer(...)))"
                )
            self.serializers[name] = DictSubclassSerializer(kind)
        self.conversations: dict[str, ConversationHandler[Any]] = {}
        #: The names of the fragments PTB's state is stored in.
        self.stored: frozenset[str] = frozenset()

    def combine(self, sessions: Sessions | None) -> Sessions:
        """The sessions the engine runs: the bot's own fragments, then PTB's state's.

        ``context.session`` sees only the bot's own (PTB's have a dot in their name).
        """
        fragments = self.fragments()
        self.stored = frozenset(fragments)
        if sessions is None:
            return Sessions.of_fragments(fragments, is_multi=False)
        return Sessions.of_fragments(
            {**sessions.fragments, **fragments},
            is_multi=sessions.is_multi,
            migrate_chats=sessions.migrate_chats,
            locking=sessions.locking,
        )

    def fragments(self) -> dict[str, Fragment]:
        """The fragments PTB's state is stored in, for the handlers added so far."""
        store = self.persistence.store_data
        serializers = self.serializers
        types = self.application.context_types
        fragments: dict[str, Fragment] = {}
        if store.chat_data:
            fragments[CHAT_DATA] = Fragment(
                initial=types.chat_data, key=per_chat, serializer=serializers["chat_data"]
            )
        if store.user_data:
            fragments[USER_DATA] = Fragment(
                initial=types.user_data, key=per_user, serializer=serializers["user_data"]
            )
        if store.bot_data:
            # Read by every update, locked by none: a write is a compare-and-set.
            fragments[BOT_DATA] = Fragment(
                initial=types.bot_data,
                key=_bot_key,
                serializer=serializers["bot_data"],
                lock=False,
            )
        self.conversations = persistent_conversations(self.application)
        for name, handler in sorted(self.conversations.items()):
            if len(name) > MAX_CONVERSATION_NAME or not name.isprintable():
                raise ConfigurationError(
                    f"a persistent ConversationHandler's name must be printable and at most "
                    f"{MAX_CONVERSATION_NAME} characters to be stored: {name!r:.80}"
                )
            fragments[CONVERSATION + name] = Fragment(
                key=_conversation_resolver(handler), serializer=self.persistence.serializer
            )
        return fragments

    def install(self) -> None:
        """Make every persistent ConversationHandler keep its states per update."""
        for name, handler in self.conversations.items():
            handler._conversations = ConversationStates(name)

    # -- per update ------------------------------------------------------------------

    def prepared(self, sessions: UpdateSessions) -> None:
        """Before anything is read: an update announcing a supergroup migration also
        reads (and locks) the other chat's chat_data, for ``migrate_chat_data``."""
        keys = self.migration_keys(sessions)
        if keys:
            storage = sessions.fragments[CHAT_DATA].fragment.resolve_storage()
            sessions.also_read(storage, keys)

    def needs_early_read(self, sessions: UpdateSessions) -> bool:
        """Whether a persistent conversation can reach the update: its state must be
        read before dispatch (``check_update`` reads it synchronously)."""
        fragments = sessions.fragments
        return any(fragments[CONVERSATION + name].key is not None for name in self.conversations)

    def start(self) -> contextvars.Token[dict[str, dict[ConversationKey, object]] | None]:
        """Give the update a mapping of its own for its conversations' states."""
        return _states.set({})

    def finish(self, token: contextvars.Token[Any]) -> None:
        _states.reset(token)

    def loaded(self, sessions: UpdateSessions) -> None:
        """Put the loaded conversation states where the handlers look for them."""
        states = _states.get()
        if states is None:
            return
        for name, handler in self.conversations.items():
            fragment = sessions.fragments[CONVERSATION + name]
            if fragment.key is None or fragment.value is None:
                continue
            key = conversation_key(handler, sessions.update)
            if key is not None:
                states.setdefault(name, {})[key] = fragment.value

    def before_commit(self, sessions: UpdateSessions) -> None:
        """Take each conversation's state after the handlers, for the engine to compare."""
        states = _states.get() or {}
        for name, handler in self.conversations.items():
            fragment = sessions.fragments[CONVERSATION + name]
            if fragment.key is None or not fragment.loaded:
                continue
            key = conversation_key(handler, sessions.update)
            state = states.get(name, {}).get(key) if key is not None else None
            if isinstance(state, PendingState):
                # Non-blocking handlers have finished by now (the engine waited for them).
                state = state.resolve()
            if state == ConversationHandler.END:
                state = None
            fragment.value = _plain_state(name, state)
        for name in (CHAT_DATA, USER_DATA):
            # Dropped, and nothing written to the fresh data since: the row stays deleted
            # (not stored empty, nor with the defaults of a ContextTypes class).
            data = sessions.fragments.get(name)
            if data is not None and data.assigned and _holds_nothing(data.value, data):
                data.value = None

    # -- drop_chat_data, drop_user_data, migrate_chat_data ---------------------------------

    def drop(self, sessions: UpdateSessions, name: str, scope: str, ident: int) -> None:
        """Delete ``scope`` (chat or user) ``ident``'s data in the update's commit.

        The update's own chat's (or user's) data is deleted like a session assigned
        ``None`` (a compare-and-set); another one's row is deleted as it stands. As in PTB,
        the handler then sees fresh data in ``context.chat_data`` (``user_data``): stored if
        it writes to it, else the row stays deleted (:meth:`before_commit`).
        """
        fragment = sessions.fragments.get(name)
        if fragment is None:
            return  # not stored
        update = sessions.update
        own = update.effective_chat if scope == "chat" else update.effective_user  # type: ignore[attr-defined]
        if own is not None and own.id == ident and fragment.key is not None:
            fragment.set(_fresh(fragment))
            return
        key = StorageKey(sessions.bot_id, name, f"{scope}:{ident}")
        sessions.extra_changes.append((fragment.fragment.resolve_storage(), Delete(key, None)))

    def migration_keys(self, sessions: UpdateSessions) -> list[StorageKey]:
        """The other chat's chat_data key of an update announcing a supergroup migration:
        read and locked with the update's own, so ``migrate_chat_data`` can move it."""
        fragment = sessions.fragments.get(CHAT_DATA)
        update = sessions.update
        if fragment is None or fragment.key is None or not isinstance(update, Update):
            return []
        ids = migration_of(update)
        if ids is None:
            return []
        return [StorageKey(sessions.bot_id, CHAT_DATA, f"chat:{i}") for i in ids]

    def migrate(self, sessions: UpdateSessions, old_chat_id: int, new_chat_id: int) -> None:
        """``migrate_chat_data``: the new chat's data becomes the old one's, the old one's
        is deleted, both in the update's commit (as PTB does, overwriting the new chat's).

        An old chat without data (none stored, or empty) moves nothing and leaves the new
        chat's data as it is: Telegram sends two notices, and a bot that calls this on
        both would otherwise empty the supergroup on the second, after the first moved.
        On the old chat's notice the handlers then see fresh ``chat_data``, as in PTB.
        """
        fragment = sessions.fragments.get(CHAT_DATA)
        if fragment is None:
            return
        old = StorageKey(sessions.bot_id, CHAT_DATA, f"chat:{old_chat_id}")
        new = StorageKey(sessions.bot_id, CHAT_DATA, f"chat:{new_chat_id}")
        if old not in sessions.extra_records or new not in sessions.extra_records:
            raise SessionNotLoadedError(
                "migrate_chat_data moves the chat_data of the two chats the update's "
                "migration message names (migrate_to_chat_id / migrate_from_chat_id); "
                f"this update does not announce a migration from {old_chat_id} to {new_chat_id}"
            )
        storage = fragment.fragment.resolve_storage()
        if fragment.key == old:
            data = fragment.value
            fragment.set(_fresh(fragment))  # as after a drop: fresh data, deleted unless written
        else:
            record = sessions.extra_records[old]
            data = None if record is None else fragment.fragment.serializer.loads(record.data)
        # Nothing to move: the other notice moved it already, or there never was any.
        moving = not _holds_nothing(data, fragment)
        if moving and fragment.key == new:
            fragment.set(data)
        elif moving:
            record = sessions.extra_records[new]
            text = fragment.fragment.serializer.dumps(data)
            expected = record.revision if record is not None else 0
            sessions.extra_changes.append(
                (storage, Write(new, StoredSession(text, revision=expected + 1), expected))
            )
        if fragment.key != old and sessions.extra_records[old] is not None:
            sessions.extra_changes.append((storage, Delete(old, None)))


def _fresh(fragment: FragmentSession) -> Any:
    """New data of the fragment's ``ContextTypes`` class (``chat_data`` or ``user_data``)."""
    make = fragment.fragment.initial
    assert make is not None  # PTB's data fragments are built with their ContextTypes class
    return make()


def _holds_nothing(data: object, fragment: FragmentSession) -> bool:
    """Whether ``data`` is no data at all: ``None``, or stored as fresh data would be.

    A missing row reads as fresh data, so storing it (or moving it) would keep nothing.
    """
    if data is None:
        return True
    serializer = fragment.fragment.serializer
    try:
        return serializer.dumps(data) == serializer.dumps(_fresh(fragment))
    except Exception:
        return False  # data it cannot store: the commit says why


def _plain_state(name: str, state: object) -> object:
    """A state of an int or str enum (``IntEnum``, ``StrEnum``, ``class S(str, Enum)``)
    as its plain value.

    The value reads back equal to the member (``Step.NAME == 1``, with the same hash),
    so the handler's ``states`` finds it. A plain ``Enum`` member equals nothing it
    could be stored as, so its conversation would never find its state again: refused.
    Other objects go to the serializer as they are (JSON refuses what it would change).
    """
    if isinstance(state, enum.Enum):
        value: object = state.value
        plain = isinstance(value, int | str) and not isinstance(value, bool)
        if not (plain and value == state):
            raise SessionDataError(
                f"conversation {name!r} returned {state!r}, a member of a plain Enum: stored, it "
                "would not read back as that member, and the conversation would not find its "
                "state. Use an IntEnum or StrEnum (or int and str constants) for its states"
            )
        state = value
    if isinstance(state, bool):
        return state
    if isinstance(state, int):
        return int(state)
    if isinstance(state, str):
        return str(state)
    return state


def describe_ptb_row(fragment: str, meaning: str) -> str | None:
    """What a PTB-state row is, in words ("user_data of user 42"), or ``None``.

    ``meaning`` is the key in words (:func:`~botsessions.keys.describe_key`).
    """
    if fragment in (CHAT_DATA, USER_DATA):
        return f"{fragment[len(PTB_PREFIX) :]} of {meaning}"
    if fragment == BOT_DATA:
        return "bot_data of the bot"
    if fragment.startswith(CONVERSATION):
        name = fragment[len(CONVERSATION) :]
        # A per_message key is no built-in key: ``meaning`` is still the key itself.
        for marker, what in ((":message:", "message"), (":inline:", "inline message")):
            head, found, message = meaning.rpartition(marker)
            if found and head:
                return f"conversation {name}, {what} {message} of {describe_key(head)}"
        return f"conversation {name}, {meaning}"
    return None
