"""Turning session data into stored text and back.

The default serializer accepts exactly what JSON can hold and refuses anything
that would come back different (a tuple would come back a list, an int dict key a
string, a ``Decimal`` would fail), so a handler never finds its data silently changed
on the next update. A custom serializer only needs ``dumps`` and ``loads``.

The engine encodes every loaded value once (to tell later whether it changed) and
again at the end, so the JSON calls here are on every update's path: the encoder and
decoder are built once, not per call as ``json.dumps(..., **options)`` does.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, Generic, Protocol, TypeVar

from .errors import ConfigurationError, SessionDataError

T = TypeVar("T")


class Serializer(Protocol):
    """What the session engine needs from a serializer."""

    def dumps(self, value: Any) -> str:
        """Encode ``value`` as JSON text, or raise :class:`SessionDataError`."""
        ...

    def loads(self, text: str) -> Any:
        """Decode text written by :meth:`dumps` (or by the database's JSON type)."""
        ...


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# What json.loads runs, minus its checks (set by JSONDecoder.__init__; typeshed omits it).
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# The C accelerator json.encoder uses when it is built (typeshed does not declare it).
_c_make_encoder: Callable[..., Any] | None = getattr(json.encoder, "c_make_encoder", None)


# Idle C encoders, each with its own circular-reference markers (empty between calls).
# An encoder is taken out while it works, so threads never share one, and one whose
# call failed (its markers may be left over) is not put back.
_idle_encoders: list[tuple[Callable[[Any, int], Any], dict[int, Any]]] = []


def _c_encode(value: Any) -> str:
    """``_ENCODER.encode(value)``, straight through the C encoder ``iterencode`` uses."""
    try:
        encoder, markers = _idle_encoders.pop()
    except IndexError:
        make = _c_make_encoder
        assert make is not None
        markers = {}
        encoder = make(
            markers, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False
        )
    chunks = encoder(value, 0)
    if not markers:
        _idle_encoders.append((encoder, markers))
    return "".join(chunks)


def _pick_encode() -> Callable[[Any], str]:
    """The C encoder when it gives exactly ``_ENCODER.encode``'s results, else that."""
    if _c_make_encoder is None:
        return _ENCODER.encode
    sample = {"a": [1, -2.5, True, None, 'é\n"\ud800'], "b": {"": 10**20}, "c": "x"}
    same = False
    try:
        same = _c_encode(sample) == _ENCODER.encode(sample) and _c_encode("é") == '"é"'
        circular: list[Any] = []
        circular.append(circular)
        _c_encode(circular)
    except ValueError:
        try:
            _c_encode(float("nan"))
        except ValueError:
            if same and _c_encode(sample) == _ENCODER.encode(sample):
                return _c_encode
    except Exception:
        pass  # any surprise means: use the documented path
    return _ENCODER.encode


json_encode: Callable[[Any], str] = _pick_encode()
"""Compact JSON text of a value, unchecked: what :meth:`JSONSerializer.encode` returns."""


class JSONSerializer:
    """Plain JSON: dict (string keys), list, str, int, float, bool and None."""

    def encode(self, value: Any) -> str:
        """Encode without checking: enough to tell whether data changed since it was loaded."""
        return json_encode(value)

    def dumps(self, value: Any) -> str:
        try:
            text = self.encode(value)
        except (TypeError, ValueError) as exc:
            raise SessionDataError(f"session data is not JSON-compatible: {exc}") from exc
        return self.verify(value, text)

    def verify(self, value: Any, text: str) -> str:
        """Return ``text`` (``value`` encoded) if it reads back as ``value``, else refuse it.

        Data made only of exact JSON types with string keys always reads back the same,
        so the round trip is only made for data that is not.
        """
        # A round trip that changes the value means something JSON cannot hold exactly.
        # Only this class's own encoder is known to write plain data exactly.
        shortcut = type(self).encode is JSONSerializer.encode and _plain_json(value)
        if not shortcut and (json.loads(text) != value or not _same_shape(value)):
            raise SessionDataError(
                "session data is not JSON-compatible: it would not read back the same "
                "(tuples, non-string dict keys and other non-JSON types are refused)"
            )
        return text

    def loads(self, text: str) -> Any:
        if type(text) is str:
            # json.loads without its argument checks; anything unusual (surrounding
            # whitespace, bad text) goes through json.loads for its exact behaviour.
            try:
                value, end = _scan_once(text, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(text):
                    return value
        return json.loads(text)


class DictSubclassSerializer(JSONSerializer):
    """JSON for data of a ``dict`` subclass, such as PTB's ``ContextTypes(bot_data=...)``.

    Its keys are stored as a plain JSON object and read back into a new instance of
    the class, so whatever its ``__init__`` sets is there: its attributes, and the
    defaults of keys never stored (a key it sets comes back, deleted or not). An
    attribute set later is not stored: refused, not lost.
    """

    def __init__(self, kind: type[dict[Any, Any]]) -> None:
        self.kind = kind

    @functools.cached_property
    def _init_attributes(self) -> frozenset[str]:
        return frozenset(getattr(self.kind(), "__dict__", ()))

    def _keys(self, value: Any) -> Any:
        if not isinstance(value, self.kind):
            return value
        added = set(getattr(value, "__dict__", ())) - self._init_attributes
        if added:
            raise SessionDataError(
                f"a {self.kind.__name__}'s attributes are not stored, only its keys: "
                f"{', '.join(sorted(added))} would be lost"
            )
        return dict(value)

    def encode(self, value: Any) -> str:
        return super().encode(self._keys(value))

    def dumps(self, value: Any) -> str:
        return super().dumps(self._keys(value))

    def loads(self, text: str) -> Any:
        stored = super().loads(text)
        if not isinstance(stored, dict):
            raise ValueError(f"a {self.kind.__name__} is stored as a JSON object")
        value = self.kind()
        value.update(stored)
        return value


class DataclassSerializer(Generic[T]):
    """Session data as a dataclass, stored as the JSON object of its fields.

    A dataclass gives handlers attribute access that a type checker follows; the
    storages keep plain JSON. Fields are converted both ways, nested dataclasses
    included (also inside ``list``, ``dict``, ``Sequence``, ``Mapping`` and
    ``X | None``; a dataclass in any other field type, such as a union of two, is refused
    when written, as it would come back a ``dict``), and the plain data must pass
    :class:`JSONSerializer`'s checks. Change detection compares the encoded
    fields, so changing an attribute is a change. A stored object with a field the
    class lacks is refused as bad stored data rather than silently dropped; a missing
    field takes its default. Data migrations see the stored JSON object, not the class:
    they upgrade an old shape the class could not be built from.
    """

    def __init__(self, cls: type[T]) -> None:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ConfigurationError("DataclassSerializer needs a dataclass")
        self.cls = cls
        self._json = JSONSerializer()

    def _plain(self, value: T) -> Any:
        if type(value) is not self.cls:
            raise TypeError(
                f"session data must be a {self.cls.__name__}, not {type(value).__name__}"
            )
        return dataclasses.asdict(value)  # type: ignore[call-overload]  # checked: a dataclass

    def encode(self, value: T) -> str:
        """Encode without checking: enough to tell whether data changed since it was loaded."""
        return json_encode(self._plain(value))

    def dumps(self, value: T) -> str:
        try:
            plain = self._plain(value)
        except TypeError as exc:
            raise SessionDataError(str(exc)) from exc
        try:
            _check_field_types(self.cls)  # type: ignore[arg-type]  # a class is hashable
        except _NotRebuilt as exc:
            # Written now, it would read back as something else than was written.
            raise SessionDataError(f"{self.cls.__name__} could not be read back: {exc}") from exc
        except Exception as exc:
            # Written now, it could never be read back: every later update would fail.
            raise SessionDataError(
                f"{self.cls.__name__} could not be read back: its field types do not "
                f"resolve ({type(exc).__name__}: {exc}); define the dataclasses where "
                "typing.get_type_hints finds them (at module level)"
            ) from exc
        text = self._json.dumps(plain)
        # The engine measures the nesting of the value it holds: here, of the fields.
        if text.count("[") + text.count("{") > MAX_NESTING and deeper_than(plain, MAX_NESTING):
            raise SessionDataError(f"session data nests deeper than {MAX_NESTING} levels")
        return text

    def loads(self, text: str) -> T:
        return self.build(self._json.loads(text))

    def loads_plain(self, text: str) -> Any:
        """The stored JSON as it is: what data migrations upgrade, before :meth:`build`."""
        return self._json.loads(text)

    def build(self, plain: Any) -> T:
        """The dataclass of decoded (and upgraded) JSON."""
        return typing.cast(T, _from_plain(self.cls, plain))


# A dataclass's field types, resolved once: loads runs on every update.
_type_hints = functools.cache(typing.get_type_hints)


# The containers :func:`_from_plain` rebuilds the items of (JSON's arrays and objects).
_LISTS = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_DICTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class _NotRebuilt(TypeError):
    """A dataclass in a field type :func:`_from_plain` cannot rebuild from JSON."""


@functools.cache
def _check_field_types(cls: type) -> None:
    """Resolve the field types of ``cls`` and of the dataclasses they name (a class may
    name itself), as :func:`_from_plain` will; raises what ``get_type_hints`` raises,
    or :class:`_NotRebuilt` for a dataclass it would give back as a ``dict``."""
    seen: set[type] = set()
    pending: list[tuple[Any, str]] = [(cls, cls.__name__)]
    while pending:
        kind, where = pending.pop()
        generic = _dataclass_of(kind)
        if generic is not None:
            if any(_holds_dataclass(arg) for arg in typing.get_args(kind)):
                raise _NotRebuilt(
                    f"{where} is typed {kind}: a dataclass given to a generic one would "
                    "come back as a dict"
                )
            kind = generic
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if kind not in seen:
                seen.add(kind)
                hints = _type_hints(kind)  # ClassVar annotations too: not fields
                pending += [
                    (hints.get(f.name, Any), f"{kind.__name__}.{f.name}")
                    for f in dataclasses.fields(kind)
                ]
            continue
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        options = [arg for arg in args if arg is not type(None)]
        if origin in _LISTS and args:
            pending.append((args[0], where))
        elif origin in _DICTS and len(args) == 2:
            pending.append((args[1], where))
        elif origin in (typing.Union, types.UnionType) and len(options) == 1:
            pending.append((options[0], where))
        elif _holds_dataclass(kind):
            raise _NotRebuilt(
                f"{where} is typed {kind}, and a dataclass there would come back as a dict "
                "(dataclasses are rebuilt as fields, in list, dict, Sequence, Mapping and "
                "X | None)"
            )


def _holds_dataclass(kind: Any) -> bool:
    pending = [kind]
    while pending:
        kind = pending.pop()
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            return True
        pending += typing.get_args(kind)
    return False


def _dataclass_of(kind: Any) -> type | None:
    """The dataclass a generic alias names (``Box[int]``), which is built as it."""
    origin = typing.get_origin(kind)
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return origin
    return None


def _from_plain(kind: Any, data: Any) -> Any:
    """``data`` (decoded JSON) as ``kind``: dataclasses are rebuilt, the rest kept."""
    kind = _dataclass_of(kind) or kind
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise TypeError(f"{kind.__name__} is stored as an object, found {type(data).__name__}")
        hints = _type_hints(kind)
        init = {f.name: f.init for f in dataclasses.fields(kind)}
        unknown = data.keys() - init.keys()
        if unknown:
            raise TypeError(f"{kind.__name__} has no field {', '.join(sorted(unknown))}")
        values = {name: _from_plain(hints.get(name, Any), v) for name, v in data.items()}
        built = kind(**{name: v for name, v in values.items() if init[name]})
        for name, v in values.items():
            if not init[name]:  # field(init=False): stored, so set back as it was
                object.__setattr__(built, name, v)
        return built
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in _LISTS and args and isinstance(data, list):
        return [_from_plain(args[0], item) for item in data]
    if origin in _DICTS and len(args) == 2 and isinstance(data, dict):
        return {key: _from_plain(args[1], item) for key, item in data.items()}
    if origin in (typing.Union, types.UnionType) and data is not None:
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:
            return _from_plain(options[0], data)
    return data


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


def _plain_json(value: Any) -> bool:
    """Whether ``value`` holds only dict (with ``str`` keys), list, str, int, float, bool
    and None, exactly those types: such data reads back equal from its JSON text."""
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            for key, child in item.items():
                if type(key) is not str:
                    return False
                push(child)
        elif kind is list:
            extend(item)
        elif kind not in _SCALARS:
            return False
    return True


_SCALARS = frozenset((str, int, float, bool, type(None)))

default_serializer = JSONSerializer()


MAX_NESTING = 31
"""The deepest nesting of lists and objects stored: MariaDB's JSON refuses 32 levels."""

MAX_DATA_SIZE = 4 * 1024 * 1024
"""The largest JSON text of one session, in bytes: MariaDB refuses a statement over its
``max_allowed_packet`` (16 MiB by default), and the driver's escaping can double text."""


def deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest more than ``limit`` levels deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth == limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
