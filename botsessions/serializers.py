"""Turning session data into stored text and back.

The default serializer accepts exactly what JSON can hold and refuses anything
that would come back different (a tuple would come back a list, an int dict key a
string, a ``Decimal`` would fail), so a handler never finds its data silently changed
on the next update. A custom serializer only needs ``dumps`` and ``loads``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from .errors import SessionDataError


class Serializer(Protocol):
    """What the session engine needs from a serializer."""

    def dumps(self, value: Any) -> str:
        """Encode ``value`` as JSON text, or raise :class:`SessionDataError`."""
        ...

    def loads(self, text: str) -> Any:
        """Decode text written by :meth:`dumps` (or by the database's JSON type)."""
        ...


class JSONSerializer:
    """Plain JSON: dict (string keys), list, str, int, float, bool and None."""

    def encode(self, value: Any) -> str:
        """Encode without checking: enough to tell whether data changed since it was loaded."""
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def dumps(self, value: Any) -> str:
        try:
            text = self.encode(value)
        except (TypeError, ValueError) as exc:
            raise SessionDataError(f"session data is not JSON-compatible: {exc}") from exc
        # A round trip that changes the value means something JSON cannot hold exactly.
        if json.loads(text) != value or not _same_shape(value):
            raise SessionDataError(
                "session data is not JSON-compatible: it would not read back the same "
                "(tuples, non-string dict keys and other non-JSON types are refused)"
            )
        return text

    def loads(self, text: str) -> Any:
        return json.loads(text)


def _same_shape(value: Any) -> bool:
    """Check the container types that compare equal after a round trip but are not JSON."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if type(item) is not dict:
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            if type(item) is not list:
                return False
            stack.extend(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif type(item) not in (str, int, float):
            return False
    return True


default_serializer = JSONSerializer()
