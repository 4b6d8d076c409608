"""Stored session data as people read it: in the admin's pages and in a terminal.

Kept apart from the admin so :mod:`botsessions.lookup` and the session commands show data
the same way without depending on the admin.
"""

from __future__ import annotations

import contextlib
import json
import re
from decimal import Decimal
from typing import Any

#: The most characters of data a list shows for one session.
PREVIEW_LENGTH = 80

# What no page or terminal should show as it is: control characters (ESC starts a
# terminal's escape sequences), DEL and the C1 controls, the bidirectional controls
# (U+202E turns the text after it around, so shown data could pass for other data), and
# lone surrogates (a page holding one cannot be encoded as UTF-8). Tab, line feed and
# carriage return stay in text of several lines: indented JSON, a textarea's content.
_UNSHOWABLE = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # controls, DEL
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional controls
    "\ud800-\udfff"  # surrogates
)
_HIDDEN = re.compile(f"[{_UNSHOWABLE}]")
_HIDDEN_IN_A_LINE = re.compile(f"[\t\n\r{_UNSHOWABLE}]")


def printable(text: str) -> str:
    """``text`` with every character a reader should not get raw written as a JSON
    escape (``\\u202e``).

    Inside a JSON string the escape means the same character, so JSON text stays the
    same data; elsewhere (a key, a message) it shows what is there instead of hiding it.
    """
    if not _HIDDEN.search(text):
        return text
    return _HIDDEN.sub(_escape, text)


def printable_line(text: str) -> str:
    """:func:`printable` for one line (a key, a fragment's name): line breaks escaped too."""
    if not _HIDDEN_IN_A_LINE.search(text):
        return text
    return _HIDDEN_IN_A_LINE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


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


def shown_version(version: Decimal) -> str:
    """A data version as it is configured (``2``, ``1.5``), not as the column stores it
    (``2.000000``): the admin, its filter and ``showsession`` all show it so."""
    return format(version.normalize(), "f")
