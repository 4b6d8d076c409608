"""The exceptions botsessions raises, each named after what went wrong."""

from __future__ import annotations


class SessionError(Exception):
    """Base class of every error botsessions raises on purpose."""


class SessionKeyError(SessionError, AttributeError):
    """The update has no session key, so there is no session to read or write.

    It subclasses ``AttributeError`` as well, because it is raised from the
    ``context.session`` attribute: ``hasattr(context, "session")`` stays honest.
    """


class SessionNotLoadedError(SessionError):
    """The session was used where no update is being processed (a job, say)."""


class SessionDataError(SessionError, ValueError):
    """The session holds data the serializer cannot store without changing it."""


class StoredDataError(SessionError):
    """A stored row could not be decoded or migrated; the row is left as it is."""


class MigrationError(StoredDataError):
    """Stored data cannot be brought to the newest version (too new, or a step failed)."""


class StorageError(SessionError):
    """The storage failed to read or write; the update must not be acknowledged."""


class SessionConflict(StorageError):
    """Another process changed the session since it was read; the write was refused."""


class LockTimeout(StorageError):
    """The update's session locks were not granted within ``BOTSESSIONS_LOCK_TIMEOUT``."""

    @classmethod
    def budget_spent(cls, budget: float, where: str = "") -> LockTimeout:
        """Said of the whole budget: a wait late in an update has only what is left."""
        return cls(
            f"session locks{where} not granted within the update's lock-wait budget of "
            f"{budget:g} s (one for all its waits)"
        )


class ConfigurationError(SessionError, ValueError):
    """The session configuration is invalid (caught when it is built, not per update)."""


class JobQueueNotRunning(SessionError, RuntimeError):
    """A job was about to be scheduled on a JobQueue that is not running (the webhook's)."""
