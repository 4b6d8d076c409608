"""Stored session data as people read it: in the admin's pages and in a terminal.

Kept apart from the admin so :mod:`botsessions.lookup` and the session commands show data
the same way without depending on the admin.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

#: The most characters of data a list shows for one session.
PREVIEW_LENGTH = 80

_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every surrogate written as a JSON escape (``\\ud800``).

    JSON may escape a lone surrogate and SQLite keeps such data, but a page holding one
    raw cannot be encoded as UTF-8. Inside a JSON string the escape means the same.
    """
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def decode_stored(text: str | None) -> tuple[bool, Any]:
    """``(True, value)`` for stored JSON text Python can read, else ``(False, None)``.

    Rows written before the admin checked edits, or by other code, may hold what
    Python's JSON cannot read: numbers of more than 4,300 digits, nesting deeper than
    its recursion limit.
    """
    if text is None:
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def shown_data(text: str | None, *, indent: int | None = None) -> str:
    """Stored JSON text as a page shows it: re-encoded when Python can, else as stored."""
    if text is None:
        return ""
    readable, value = decode_stored(text)
    if readable:
        with contextlib.suppress(ValueError, RecursionError):  # too deep for indenting
            text = json.dumps(value, indent=indent, ensure_ascii=False)
    return printable(text)


def shortened(text: str, limit: int = PREVIEW_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
