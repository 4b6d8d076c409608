"""How sessions are configured: one :class:`Fragment` per piece of session data.

A single session is one fragment; multi sessions are several named fragments, each
with its own key, initial data, storage, timeout and migrations. Configuration is
checked when it is built, so a mistake fails at start-up, not on the first update.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic

from typing_extensions import TypeVar

from .errors import ConfigurationError
from .keys import KeyResolver, per_chat, storable_key
from .serializers import Serializer, default_serializer
from .storage.base import SessionStorage
from .versioning import DataMigrations, Migration

D = TypeVar("D", default=Any)

#: A function returning a new session's data, or an awaitable of it.
Initial = Callable[[], D | Awaitable[D]]

_FRAGMENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Fragment(Generic[D]):
    """The configuration of one session (or one fragment of a multi session).

    ``initial`` builds the data of a new session (it may be async) and is called for
    every new session, and what it returns is copied (deep), so two chats never share
    an object; without it a new session
    is ``None``. ``key`` resolves the update to a session key (per chat by default);
    ``prefix`` is put in front of that key. ``storage`` defaults to the Django
    database. ``ttl`` expires sessions that long after their last write. ``migrations``
    maps versions to upgrade functions. ``lazy`` loads the session only when a handler
    awaits it.

    ``Fragment[D]`` is the fragment of data ``D``, inferred from ``initial`` (or
    written out), for :meth:`~botsessions.SessionContext.session_data`.
    """

    initial: Initial[D] | None = None
    key: KeyResolver = per_chat
    storage: SessionStorage | None = None
    ttl: timedelta | None = None
    migrations: Mapping[Any, Migration] | DataMigrations | None = None
    lazy: bool = False
    prefix: str = ""
    serializer: Serializer = default_serializer
    #: ``False``: the key is never locked, and a write is a compare-and-set on the
    #: revision alone (a concurrent write fails the update with ``SessionConflict``, a
    #: 503). For data every update reads and few write: PTB's ``bot_data``.
    lock: bool = True
    data_migrations: DataMigrations | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.initial is not None and not callable(self.initial):
            raise ConfigurationError(
                "initial must be a function that returns new data (a shared object would "
                "be shared by every chat)"
            )
        if not callable(self.key):
            raise ConfigurationError("key must be a function of the update")
        if self.storage is not None and not isinstance(self.storage, SessionStorage):
            raise ConfigurationError("storage must be a botsessions.storage.SessionStorage")
        if self.ttl is not None and (
            not isinstance(self.ttl, timedelta) or self.ttl <= timedelta(0)
        ):
            raise ConfigurationError("ttl must be a positive datetime.timedelta")
        if self.ttl is not None:
            try:
                datetime.now(UTC) + self.ttl
            except OverflowError:
                raise ConfigurationError(
                    "ttl reaches past the year 9999, which no expiry can hold; for sessions "
                    "that never expire, leave ttl out"
                ) from None
        if not isinstance(self.prefix, str) or not storable_key(self.prefix):
            raise ConfigurationError("prefix must be a string without NUL or lone surrogates")
        embed = getattr(self.key, "chat_key", None)
        if embed is not None and not callable(embed):
            raise ConfigurationError(
                "key.chat_key must be a function from a chat id to that chat's key, or None"
            )
        if isinstance(self.serializer, type) and inspect.isfunction(
            inspect.getattr_static(self.serializer, "dumps", None)
        ):  # a class whose dumps() needs an instance (static methods would do)
            raise ConfigurationError(
                f"serializer must be an instance, such as {self.serializer.__name__}(), "
                "not the class"
            )
        for method in ("dumps", "loads"):
            if not callable(getattr(self.serializer, method, None)):
                raise ConfigurationError(f"serializer has no {method}() method")
        migrations = self.migrations
        if migrations is not None and not isinstance(migrations, DataMigrations):
            migrations = DataMigrations(migrations)
        object.__setattr__(self, "data_migrations", migrations)

    def resolve_storage(self) -> SessionStorage:
        """The storage this fragment uses (the shared database storage by default)."""
        if self.storage is not None:
            return self.storage
        return database_storage()


_default_database_storage: Callable[[], SessionStorage] | None = None


def database_storage() -> SessionStorage:
    """The shared database storage; imported on first use (it needs Django's models)."""
    global _default_database_storage
    if _default_database_storage is None:
        from .storage.db import default_database_storage

        _default_database_storage = default_database_storage
    return _default_database_storage()


class Sessions:
    """The sessions installed on an application: one fragment, or several named ones.

    ``Sessions(initial=..., key=...)`` configures a single session (the keyword
    arguments are those of :class:`Fragment`); :meth:`multi` configures named fragments.
    ``migrate_chats`` moves per-chat sessions when a group becomes a supergroup.
    ``locking=False`` turns off per-key serialisation and revision checks (last write
    wins): it exists to measure and to demonstrate what the locking prevents.
    """

    def __init__(
        self,
        fragment: Fragment | None = None,
        *,
        migrate_chats: bool = False,
        locking: bool = True,
        **options: Any,
    ) -> None:
        if fragment is not None and options:
            raise ConfigurationError("pass either a Fragment or its options, not both")
        if fragment is not None and not isinstance(fragment, Fragment):
            raise ConfigurationError(
                "Sessions takes a Fragment or keyword options (initial=..., key=...), "
                f"not {type(fragment).__name__}"
            )
        self.fragments: dict[str, Fragment] = {"": fragment or Fragment(**options)}
        self.is_multi = False
        self.migrate_chats = migrate_chats
        self.locking = locking
        # What the engine derives from the fragments, built on first use (session.py).
        self.engine_plan: Any = None

    @classmethod
    def multi(
        cls, *, migrate_chats: bool = False, locking: bool = True, **fragments: Fragment
    ) -> Sessions:
        """Named fragments, reached as ``context.session.<name>``."""
        if not fragments:
            raise ConfigurationError("a multi session needs at least one fragment")
        for name, fragment in fragments.items():
            if not _FRAGMENT_NAME.match(name):
                raise ConfigurationError(
                    f"fragment name {name!r} must be lower-case letters, digits and "
                    "underscores, starting with a letter, at most 64 characters"
                )
            if not isinstance(fragment, Fragment):
                raise ConfigurationError(f"fragment {name!r} must be a Fragment")
        return cls.of_fragments(
            fragments, is_multi=True, migrate_chats=migrate_chats, locking=locking
        )

    @classmethod
    def of_fragments(
        cls,
        fragments: Mapping[str, Fragment],
        *,
        is_multi: bool,
        migrate_chats: bool = False,
        locking: bool = True,
    ) -> Sessions:
        """Sessions of fragments whose names are checked already: :meth:`multi`'s, or
        the engine's own combination of a bot's sessions with PTB's state."""
        sessions = cls(migrate_chats=migrate_chats, locking=locking)
        sessions.fragments = dict(fragments)
        sessions.is_multi = is_multi
        return sessions

    def __repr__(self) -> str:
        names = ", ".join(name or "<single>" for name in self.fragments)
        return f"<Sessions {names}>"
