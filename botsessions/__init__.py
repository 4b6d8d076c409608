"""grammY-style sessions for python-telegram-bot, stored through Django.

Handlers use ``context.session``; the data is read before they run and written back,
only if it changed, after they finish. See the README for a complete bot.
"""

from __future__ import annotations

from .config import Fragment, Sessions
from .errors import (
    ConfigurationError,
    JobQueueNotRunning,
    MigrationError,
    SessionConflict,
    SessionDataError,
    SessionError,
    SessionKeyError,
    SessionNotLoadedError,
    StorageError,
    StoredDataError,
)
from .keys import per_chat, per_topic, per_user, per_user_in_chat
from .outcome import Outcome
from .persistence import DjangoPersistence
from .ptb import Lazy, MultiSession, SessionApplication, SessionContext, use_sessions
from .serializers import DataclassSerializer, JSONSerializer
from .storage import MemoryStorage, SessionStorage, StorageKey, StoredSession
from .versioning import DataMigrations

__all__ = [
    "ConfigurationError",
    "DataMigrations",
    "DataclassSerializer",
    "DjangoPersistence",
    "Fragment",
    "JSONSerializer",
    "JobQueueNotRunning",
    "Lazy",
    "MemoryStorage",
    "MigrationError",
    "MultiSession",
    "Outcome",
    "SessionApplication",
    "SessionConflict",
    "SessionContext",
    "SessionDataError",
    "SessionError",
    "SessionKeyError",
    "SessionNotLoadedError",
    "SessionStorage",
    "Sessions",
    "StorageError",
    "StorageKey",
    "StoredDataError",
    "StoredSession",
    "per_chat",
    "per_topic",
    "per_user",
    "per_user_in_chat",
    "use_sessions",
]
