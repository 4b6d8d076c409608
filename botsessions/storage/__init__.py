"""Session storages: the contract, an in-memory one and the Django database one."""

from .base import (
    Change,
    Delete,
    SessionStorage,
    StorageKey,
    StoredSession,
    UpdateMark,
    Write,
)
from .memory import MemoryStorage

__all__ = [
    "Change",
    "Delete",
    "MemoryStorage",
    "SessionStorage",
    "StorageKey",
    "StoredSession",
    "UpdateMark",
    "Write",
]
