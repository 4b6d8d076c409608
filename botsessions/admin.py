"""The admin: find a chat's session, read it, fix it, reset it or delete it.

Built for the operator answering "the bot forgot my order" on a table of millions of
rows: the list never counts the whole table, orders by the indexed ``updated_at``,
and its filters take their choices from the bots' configuration instead of scanning
for distinct values. Edits and resets bump ``revision`` so that a bot holding older
data fails its compare-and-set rather than overwriting the operator's change.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal, DecimalException
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ListFilter, helpers
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import SEARCH_VAR, ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import DatabaseError, OperationalError, connections, router, transaction
from django.db.models import F, Q, QuerySet, TextField
from django.db.models.functions import Cast, Collate
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

from .bots import session_configs, sessions_for_bot_id
from .display import (
    decode_stored,
    printable,
    printable_line,
    shortened,
    shown_data,
    shown_version,
)
from .errors import SessionDataError
from .keys import describe_key
from .maintenance import (
    BatchHook,
    UnknownConfiguration,
    delete_sessions,
    fragment_config,
    fragment_pairs,
    initial_data,
    reset_sessions,
    unknown_fragments,
)
from .models import ProcessedUpdate, Session
from .persistence import describe_ptb_row
from .serializers import MAX_NESTING, DataclassSerializer, Serializer, default_serializer
from .storage.db import STORED_VALUE_ERRORS, read_expiry, read_version
from .versioning import VERSION_LIMIT, VERSION_STEP, DataMigrations

SINGLE_FRAGMENT = "-"  # the filter's value for the unnamed fragment of a single session


# -- counting without counting everything ---------------------------------------------


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]  # not subscriptable at runtime
    """Counts at most ``count_limit`` rows, so no page load counts a million of them.

    The count is a bounded ``SELECT COUNT(*) FROM (... LIMIT n)``; past the limit an
    unfiltered list shows the database's own row estimate (PostgreSQL, MySQL/MariaDB)
    and a filtered one says "more than the limit". With ``one_pass`` (a search, whose
    text matching has to scan the table) it instead collects the ids of the first
    ``count_limit + 1`` matches in display order and reads each page by id, so the
    table is scanned once per page load rather than twice.
    """

    count_limit = 10_000

    def __init__(self, *args: Any, one_pass: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_pass = one_pass
        self.count_is_exact = True
        self.count_is_estimate = False
        self.matched_ids: list[Any] | None = None

    @cached_property
    def count(self) -> int:
        rows = cast("QuerySet[Any]", self.object_list)  # the admin paginates querysets
        if self.one_pass:
            self.matched_ids = list(rows.values_list("pk", flat=True)[: self.count_limit + 1])
            found = len(self.matched_ids)
        else:
            # Only ids: the rows' other columns, and the admin's decoding of the data
            # text, cost nothing here.
            found = rows.order_by().values("pk")[: self.count_limit + 1].count()
        if found <= self.count_limit:
            return found
        self.count_is_exact = False
        estimate = None if rows.query.has_filters() else estimated_row_count(rows)
        if estimate is not None and estimate > self.count_limit:
            self.count_is_estimate = True
            return estimate
        return self.count_limit + 1

    def page(self, number: Any) -> Any:
        number = self.validate_number(number)
        if self.matched_ids is None:
            return super().page(number)
        first = (number - 1) * self.per_page
        rows = self.rows_with_ids(first, first + self.per_page)
        return self._get_page(rows, number, self)  # type: ignore[attr-defined]  # Django's, unstubbed

    def rows_with_ids(self, start: int, stop: int) -> QuerySet[Any]:
        """Matched rows ``start:stop``, read by primary key (the filters stay as a check)."""
        assert self.matched_ids is not None
        return cast("QuerySet[Any]", self.object_list).filter(pk__in=self.matched_ids[start:stop])


class OwnFiltersChangeList(ChangeList):
    """A changelist that filters only by the admin's own filters.

    Django also takes any lookup on the model's fields from the query string
    (``?key__regex=(``, ``?created_at__year=99999999999``, ``?data__contains=x``), which
    the database may refuse with an error page; the admin's filters were written to
    ignore what they cannot use. Anything else is Django's "wacky lookup parameters"
    (a redirect to the plain list with ``?e=1``), as a name no field has already is.
    """

    def get_filters(
        self, request: HttpRequest
    ) -> tuple[list[ListFilter], bool, dict[str, bool | str], bool, bool]:
        filters = super().get_filters(request)
        if remaining := filters[2]:
            raise IncorrectLookupParameters(f"not a filter of this list: {', '.join(remaining)}")
        return filters


class OnePassChangeList(OwnFiltersChangeList):
    """A changelist that shows a short search result from the ids already matched.

    Django reads a result that fits on one page (or "show all") with the full query
    again; with :class:`CappedCountPaginator` the ids are known, so that second pass
    over the table is skipped.
    """

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        paginator = self.paginator
        if not isinstance(paginator, CappedCountPaginator) or paginator.matched_ids is None:
            return
        if not self.multi_page or (self.show_all and self.can_show_all):
            self.result_list = paginator.rows_with_ids(0, len(paginator.matched_ids))


def estimated_row_count(queryset: QuerySet[Any]) -> int | None:
    """The planner's idea of the table's size, or ``None`` where there is no cheap one."""
    connection = connections[queryset.db]
    table = queryset.model._meta.db_table
    if connection.vendor == "postgresql":
        sql = "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)"
        params = [connection.ops.quote_name(table)]
    elif connection.vendor == "mysql":
        sql = (
            "SELECT table_rows FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s"
        )
        params = [table]
    else:
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] <= 0:
        return None
    return int(row[0])


# -- data as the admin shows and takes it -----------------------------------------------

MAX_EDIT_SIZE = 1024 * 1024
"""The largest data the edit form takes: 1 MiB of JSON text (UTF-8), as typed."""

MAX_DEPTH = MAX_NESTING
"""The deepest nesting of lists and objects the edit form takes: what sessions may hold."""

# NUL: PostgreSQL stores it in no text, JSON included. A lone surrogate: no valid Unicode,
# so no database stores it as text, and a page holding one cannot be encoded at all.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def parse_edit(text: str) -> Any:
    """The value of JSON text typed in the edit form, or a :class:`ValidationError`."""
    text = text.replace("\r\n", "\n")  # browsers send a textarea's lines so: not data
    if len(text) > MAX_EDIT_SIZE or len(text.encode("utf-8", "surrogatepass")) > MAX_EDIT_SIZE:
        raise ValidationError(
            _("The data is larger than %(limit)s bytes."),
            code="too_large",
            params={"limit": f"{MAX_EDIT_SIZE:,}"},
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            _("Enter a valid JSON: %(error)s."), code="invalid", params={"error": exc}
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # an integer longer than Python converts from text
        raise ValidationError(
            _("A number has more than %(limit)s digits, more than the bot can read back."),
            code="number",
            params={"limit": f"{sys.get_int_max_str_digits():,}"},
        ) from None


def unstorable(value: Any) -> ValidationError | None:
    """Why no database would store ``value`` as it is, or ``None``.

    Nesting deeper than :data:`MAX_DEPTH`, NaN and the infinities (not JSON), and text
    holding a NUL character or a lone surrogate, in keys as in values.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > MAX_DEPTH:
                return _too_deep()
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and (problem := _unstorable_text(key)):
                        return problem
                    stack.append((child, depth))
            else:
                stack.extend((child, depth) for child in item)
        elif isinstance(item, str):
            if problem := _unstorable_text(item):
                return problem
        elif isinstance(item, float) and not math.isfinite(item):
            return ValidationError(
                _("NaN, Infinity and numbers too large for a float are not JSON."),
                code="not_finite",
            )
    return None


def _unstorable_text(text: str) -> ValidationError | None:
    found = _UNSTORABLE_CHARACTER.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return ValidationError(
            _("Text holds a NUL character (\\u0000), which PostgreSQL cannot store."),
            code="nul",
        )
    return ValidationError(
        _(
            "Text holds a lone surrogate (%(escape)s), which is not Unicode: no database "
            "can store it as text."
        ),
        code="surrogate",
        params={"escape": printable(found.group())},
    )


def _too_deep() -> ValidationError:
    return ValidationError(
        _("The data is nested more than %(limit)s levels deep."),
        code="too_deep",
        params={"limit": MAX_DEPTH},
    )


def first_difference(value: Any, back: Any) -> tuple[str, Any, Any] | None:
    """Where ``back`` (data read back) differs from ``value``: ``(path, was, became)``.

    Numbers compare by value (``1e16`` read back as ``10000000000000000`` is the same
    number), everything else by type and value.
    """
    stack: list[tuple[str, Any, Any]] = [("$", value, back)]
    while stack:
        where, one, other = stack.pop()
        if isinstance(one, dict) and isinstance(other, dict):
            if one.keys() != other.keys():
                return where, one, other
            stack.extend((f"{where}.{key}", one[key], other[key]) for key in reversed(one))
        elif isinstance(one, list) and isinstance(other, list):
            if len(one) != len(other):
                return where, one, other
            pairs = enumerate(zip(one, other, strict=True))
            stack.extend((f"{where}[{n}]", a, b) for n, (a, b) in reversed(list(pairs)))
        elif _number(one) and _number(other):
            if one != other:
                return where, one, other
        elif type(one) is not type(other) or one != other:
            return where, one, other
    return None


def _brief(value: Any) -> str:
    """A value as an error message quotes it: JSON, cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        text = str(value)
    return shortened(printable(text), 60)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- filters whose choices come from configuration -------------------------------------


def _known_fragments() -> list[str]:
    names = {name for _, sessions in session_configs().values() for name in sessions.fragments}
    return sorted(names)


class UsableValueFilter(admin.SimpleListFilter):
    """A filter that ignores a value it cannot use, as if it had not been given.

    The values come from the query string, where anyone can type anything
    (``?version=NaN``, a bot id of 5,000 digits, a NUL character): the list then shows
    every row and the filter's "All" choice, instead of an error page or a query the
    database refuses.
    """

    def usable(self, value: str) -> bool:
        raise NotImplementedError

    def value(self) -> str | None:
        value = super().value()
        if value is None or not self.usable(str(value)):
            return None
        return str(value)


class BotFilter(UsableValueFilter):
    """The configured bots, by alias; no ``SELECT DISTINCT`` over the table."""

    title = _("bot")
    parameter_name = "bot_id"

    def usable(self, value: str) -> bool:
        return _bot_id(value) is not None

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = {
            str(bot_id): f"{alias} ({bot_id})" for bot_id, (alias, _) in session_configs().items()
        }
        if not choices:
            # Nothing configured here: offer what the table holds (bot_id leads an index).
            stored = Session.objects.order_by("bot_id").values_list("bot_id", flat=True)
            choices = {str(bot_id): str(bot_id) for bot_id in stored.distinct()[:50]}
        current = self.value()
        if current and current not in choices:
            choices[current] = current
        return list(choices.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> QuerySet[Session]:
        value = self.value()
        bot_id = None if value is None else _bot_id(value)
        return queryset if bot_id is None else queryset.filter(bot_id=bot_id)


def _bot_id(value: str) -> int | None:
    """A bot id typed in a URL: a 64-bit integer, else ``None``."""
    if len(value) > 30:  # longer than any 64-bit integer, however it is written
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if -(2**63) <= number < 2**63 else None


class FragmentFilter(UsableValueFilter):
    """The fragments the configured bots define."""

    title = _("fragment")
    parameter_name = "fragment"

    def usable(self, value: str) -> bool:
        # What the fragment column can hold (PostgreSQL refuses NUL in any text).
        return 0 < len(value) <= 64 and not _UNSTORABLE_CHARACTER.search(value)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, StrOrPromise]]:
        names = _known_fragments()
        current = self.value()
        if current and current != SINGLE_FRAGMENT and current not in names:
            names.append(current)
        return [(name or SINGLE_FRAGMENT, name or _("(single session)")) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> QuerySet[Session]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(fragment="" if value == SINGLE_FRAGMENT else value)


class VersionFilter(UsableValueFilter):
    """No version, or one of the versions the configured migrations know."""

    title = _("version")
    parameter_name = "version"

    def usable(self, value: str) -> bool:
        return value == "none" or _version(value) is not None

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        versions: set[Decimal] = set()
        for _alias, sessions in session_configs().values():
            for fragment in sessions.fragments.values():
                if fragment.data_migrations is not None:
                    versions.update(fragment.data_migrations.versions)
        choices = [("none", str(_("no version")))]
        choices += [(shown_version(v), shown_version(v)) for v in sorted(versions)]
        current = self.value()
        if current and current not in dict(choices):
            choices.append((current, current))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> QuerySet[Session]:
        value = self.value()
        if value is None:
            return queryset
        if value == "none":
            return queryset.filter(version__isnull=True)
        version = _version(value)
        return queryset if version is None else queryset.filter(version=version)


def _version(value: str) -> Decimal | None:
    """A version typed in a URL, if the version column can hold it exactly, else ``None``.

    ``NaN``, ``sNaN`` and ``Infinity`` are decimals to Python but to no database, and a
    number the column cannot hold matches no row.
    """
    if len(value) > 40:
        return None
    try:
        version = Decimal(value)
        if not version.is_finite() or version.copy_abs() >= VERSION_LIMIT:
            return None
        if version.quantize(VERSION_STEP) != version:
            return None
    except DecimalException:  # not a number, or one beyond the context's exponent
        return None
    return version


class ExpiryFilter(UsableValueFilter):
    """Active sessions (no expiry, or not yet) versus expired ones the bot would ignore."""

    title = _("status")
    parameter_name = "status"

    def usable(self, value: str) -> bool:
        return value in ("active", "expired")

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", str(_("active"))), ("expired", str(_("expired")))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> QuerySet[Session]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


def _unreadable_bookkeeping(obj: Session) -> dict[str, str]:
    """The row's version and expiry, as the text :meth:`SessionAdmin.get_queryset` read
    on SQLite, decoded into the row here; returns those that could not be (column →
    the value as stored). Elsewhere the columns are typed, and Django reads them."""
    unreadable: dict[str, str] | None = obj.__dict__.get("unreadable_bookkeeping")
    if unreadable is not None:
        return unreadable
    unreadable = {}
    if hasattr(obj, "stored_version") and "version" in obj.get_deferred_fields():
        zone = connections[obj._state.db or "default"].timezone or UTC
        texts = {"version": obj.stored_version, "expires_at": obj.stored_expiry}  # type: ignore[attr-defined]
        try:
            obj.version = read_version(texts["version"])
        except STORED_VALUE_ERRORS:
            obj.version, unreadable["version"] = None, str(texts["version"])
        try:
            obj.expires_at = read_expiry(texts["expires_at"], zone)
        except STORED_VALUE_ERRORS:
            obj.expires_at, unreadable["expires_at"] = None, str(texts["expires_at"])
    obj.__dict__["unreadable_bookkeeping"] = unreadable
    return unreadable


def _unreadable(text: str) -> SafeString:
    return format_html('<span class="errornote">{}: {}</span>', _("unreadable"), shortened(text))


def _stored_text(obj: Session) -> str | None:
    """A row's data as the database holds it: JSON text, from the admin's queryset."""
    text = getattr(obj, "stored_data", None)
    if text is None and "data" not in obj.get_deferred_fields():
        text = json.dumps(obj.data)  # a row loaded some other way, fully decoded
    return text


_ID = re.compile(r"[1-9][0-9]{0,18}")


def _session_id(value: str) -> bool:
    """Whether ``value`` (a selected checkbox's, from the form) can be a row's id."""
    return _ID.fullmatch(value) is not None and int(value) < 2**63


def _prefix_of(obj: Session) -> str:
    """The configured prefix of a row's fragment, so prefixed built-in keys read as such."""
    sessions = sessions_for_bot_id(obj.bot_id)
    fragment = None if sessions is None else sessions.fragments.get(obj.fragment)
    return "" if fragment is None else fragment.prefix


# -- search ----------------------------------------------------------------------------

_TELEGRAM_ID = re.compile(r"-?\d+")
SEARCH_COLLATION = "utf8mb4_unicode_ci"  # MySQL/MariaDB: ignores case (and accents)
_KEY_PAIRS = re.compile(r"[a-z]+:-?\d+(?::[a-z]+:-?\d+)*")


def _key_segment(segment: str) -> Q:
    """Keys containing ``segment`` as whole ``kind:id`` parts (``chat:-1`` ≠ ``chat:-12``)."""
    # Case-insensitive lookups all compare UPPER(key), so one trigram index serves them.
    return (
        Q(key_text__iexact=segment)
        | Q(key_text__istartswith=f"{segment}:")
        | Q(key_text__iendswith=f":{segment}")
        | Q(key_text__icontains=f":{segment}:")
    )


def _prefixes_not_ending_in_a_colon() -> list[str]:
    """The configured fragments' key prefixes that a key's ``chat:``/``user:`` part
    follows without a colon between them."""
    prefixes = {
        fragment.prefix
        for _alias, sessions in session_configs().values()
        for fragment in sessions.fragments.values()
    }
    return sorted(p for p in prefixes if p and not p.endswith(":"))


def _key_condition(term: str) -> Q:
    """How a search word matches keys.

    The precise part-by-part test comes after one plain substring test, which alone
    rejects almost every row of a big table; that keeps a scan close to one ``LIKE``
    per row instead of eight.
    """
    if _TELEGRAM_ID.fullmatch(term):
        parts = _key_segment(f"chat:{term}") | _key_segment(f"user:{term}")
        for prefix in _prefixes_not_ending_in_a_colon():  # "pizza-chat:42" is chat 42's
            for segment in (f"{prefix}chat:{term}", f"{prefix}user:{term}"):
                parts |= Q(key_text__iexact=segment) | Q(key_text__istartswith=f"{segment}:")
        return Q(key_text__icontains=f":{term}") & parts
    if _KEY_PAIRS.fullmatch(term):
        return Q(key_text__icontains=term) & _key_segment(term)
    return Q(key_text__icontains=term)


def _searchable_key(using: str) -> Any:
    """The key column as searches compare it: case-insensitively on every database.

    Keys themselves compare exactly (migration 0002). Django's case-insensitive lookups
    say ``UPPER(...)`` on PostgreSQL and SQLite, but on MySQL/MariaDB a plain ``LIKE``,
    which the key column's binary collation would make case-sensitive; there the search
    compares the key in a case-insensitive collation instead.
    """
    if connections[using].vendor == "mysql":
        return Collate(F("key"), SEARCH_COLLATION)
    return F("key")


def search_condition(term: str) -> Q:
    """What one search word matches: a key, a chat or user id, or text in the data.

    A bare number is a Telegram id: it finds the chat's key, that chat's per-user and
    per-topic keys, and the user's keys. Data is searched as its JSON text, also in the
    escaped forms JSON may store (``\\u00fc`` for ``ü``, ``\\"`` for a quote). It refers
    to the ``key_text`` and ``data_text`` aliases that :func:`search_sessions` adds.

    SQLite's ``UPPER()`` changes only ASCII letters, so a word with other letters is
    also looked for all in lower case and all in upper case (``Ü`` finds ``ü``).
    """
    casings = {term} if term.isascii() else {term, term.lower(), term.upper()}
    condition = Q()
    variants: set[str] = set()
    for casing in sorted(casings):
        condition |= _key_condition(casing)
        escaped = json.dumps(casing)[1:-1], json.dumps(casing, ensure_ascii=False)[1:-1]
        variants |= {casing, *escaped}
    for variant in sorted(variants):
        condition |= Q(data_text__icontains=variant)
    return condition


MAX_SEARCH_WORDS = 10
"""Words a search uses; the rest are left out (each adds a dozen tests per row)."""

MAX_SEARCH_WORD_LENGTH = 255
"""Characters of a word a search uses: the longest key (a longer word is cut)."""


@dataclass(frozen=True)
class SearchWords:
    """The words of a search, and whether some were left out or cut to fit the caps."""

    words: list[str]
    capped: bool


def search_words(search_term: str) -> SearchWords:
    """Every word must match (as in Django's search); quotes keep words together."""
    words = []
    for bit in smart_split(search_term):
        if len(bit) > 1 and bit[0] in "\"'" and bit[-1] == bit[0]:
            bit = unescape_string_literal(bit)
        if bit:
            words.append(bit)
    capped = len(words) > MAX_SEARCH_WORDS or any(
        len(word) > MAX_SEARCH_WORD_LENGTH for word in words
    )
    kept = [word[:MAX_SEARCH_WORD_LENGTH] for word in words[:MAX_SEARCH_WORDS]]
    return SearchWords(kept, capped)


def search_sessions(queryset: QuerySet[Session], search_term: str) -> QuerySet[Session]:
    """The rows matching every word of ``search_term`` (at most :data:`MAX_SEARCH_WORDS`)."""
    words = search_words(search_term).words
    if not words:
        return queryset
    # Cast, not data__icontains: on PostgreSQL that would be a jsonb lookup, not text.
    queryset = queryset.alias(
        key_text=_searchable_key(queryset.db),
        data_text=Cast("data", output_field=TextField()),
    )
    for word in words:
        queryset = queryset.filter(search_condition(word))
    return queryset


# -- the edit form ---------------------------------------------------------------------


class EditConflict(Exception):
    """The row changed between the operator's page load and their save."""


# How the databases say another transaction holds what a statement needs: SQLite's
# "database is locked" (the bot's update holds the file), PostgreSQL's lock timeout and
# deadlock, MySQL/MariaDB's "Lock wait timeout exceeded" and deadlock.
_BUSY = re.compile(r"database (table )?is locked|lock timeout|lock wait timeout|deadlock", re.I)


def database_busy(exc: DatabaseError) -> bool:
    """Whether ``exc`` says the database was busy, not that it refused the data."""
    return isinstance(exc, OperationalError) and _BUSY.search(str(exc)) is not None


def _busy() -> ValidationError:
    return ValidationError(
        _(
            "The database is busy (the bot is probably writing to it); nothing was "
            "saved. Try again in a moment."
        ),
        code="busy",
    )


class PrettyJSONField(forms.JSONField):
    """A JSON form field that shows its value indented, one key per line.

    It reads what an operator types with :func:`parse_edit`, so text too large, too
    deep or with numbers too long is a form error, never a server error, and it shows
    whatever it is given (stored rows included) in a form a page can hold.
    """

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return printable(value)
        try:
            text = printable(json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder))
        except (ValueError, TypeError, RecursionError):
            text = ""
        if not text or len(text.encode("utf-8", "surrogatepass")) > MAX_EDIT_SIZE:
            # Indenting can multiply deeply nested data's size: shown compact, data that
            # fits the limit can be saved back from the page as shown.
            compact = json.dumps(
                value, ensure_ascii=False, cls=self.encoder, allow_nan=True, separators=(",", ":")
            )
            text = printable(compact)
        return text

    def to_python(self, value: Any) -> Any:
        if self.disabled or not isinstance(value, str):
            return super().to_python(value)
        if not value.strip():
            raise ValidationError(_("Enter the session data as JSON."), code="required")
        converted = parse_edit(value)
        if converted is None:
            raise ValidationError(
                _("null would delete the session: use “Delete” instead."), code="null"
            )
        return forms.fields.JSONString(converted) if isinstance(converted, str) else converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        """What a page with errors shows again: the value, or the text as it was typed."""
        if self.disabled or data is None:
            return super().bound_data(data, initial)
        try:
            value = parse_edit(data)
        except ValidationError:
            return forms.fields.InvalidJSONInput(data)
        if unstorable(value) is not None:  # shown as typed: it may be too deep to indent
            return forms.fields.InvalidJSONInput(data)
        return value


def editable(text: str | None) -> Any:
    """A stored row's data as the edit form starts from it.

    The decoded value when the form could show and take it back; otherwise the stored
    text itself, which the form shows as it is and refuses until it is fixed.
    """
    readable, value = decode_stored(text)
    if readable and value is not None:
        problem = unstorable(value)
        if problem is None or problem.code in ("nul", "surrogate"):
            return value  # shown with the surrogate escaped; saving it is refused
    return forms.fields.InvalidJSONInput(text or "")


def _read_as_the_bot_does(
    serializer: Serializer, migrations: DataMigrations, text: str, row: Session
) -> Any:
    """Stored ``text`` of ``row``'s older version, decoded and upgraded as the engine does
    when it reads the row (:meth:`~botsessions.session.FragmentSession.take`); raises what
    the serializer or a migration raises."""
    if not isinstance(serializer, DataclassSerializer):
        return migrations.upgrade(serializer.loads(text), row.version)
    return serializer.build(migrations.upgrade(serializer.loads_plain(text), row.version))


class SessionDataForm(forms.ModelForm):  # type: ignore[type-arg]  # not subscriptable at runtime
    """Edits only ``data``, validated the way the bot's serializer and the database will
    store it."""

    # A form field, which the form's metaclass moves to base_fields (not BaseForm.data).
    data = PrettyJSONField(label=_("Data"), required=False)  # type: ignore[assignment]
    loaded_revision = forms.IntegerField(
        widget=forms.HiddenInput, min_value=1, max_value=2**63 - 1
    )

    class Meta:
        model = Session
        fields = ("data",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["loaded_revision"].initial = self.instance.revision
            shown = self.fields["data"].prepare_value(self.instance.data)
            lines = shown.count("\n") + 2
            self.fields["data"].widget.attrs.update(
                rows=min(max(lines, 6), 40),
                cols=100,
                spellcheck="false",
                style="font-family: monospace; white-space: pre;",
            )
        self.fields["data"].help_text = _(
            "JSON, as the bot's serializer reads it. Saved only if the bot has not written "
            "this session since this page was loaded; saving bumps the revision, so a bot "
            "still holding the old data fails instead of overwriting your change."
        )

    def serializer(self) -> Serializer:
        fragment = fragment_config(self.instance.bot_id, self.instance.fragment)
        return fragment.serializer if fragment is not None else default_serializer

    def clean_data(self) -> Any:
        value = self.cleaned_data["data"]
        if problem := unstorable(value):
            raise problem
        serializer = self.serializer()
        fragment = fragment_config(self.instance.bot_id, self.instance.fragment)
        migrations = fragment.data_migrations if fragment is not None else None
        try:
            text = json.dumps(value, ensure_ascii=False)
            if migrations is not None and self.instance.version != migrations.latest:
                # Kept at its older version, the data is edited in the shape it is stored
                # in, and checked as the bot will read it: upgraded, then decoded.
                assert fragment is not None
                read = _read_as_the_bot_does(serializer, migrations, text, self.instance)
                serializer.dumps(read)  # and write it back, upgraded
                stored = value
            else:
                stored = json.loads(serializer.dumps(serializer.loads(text)))
            json.dumps(stored, allow_nan=False)
        except Exception as exc:  # a serializer of the project's own may raise anything
            raise ValidationError(
                _("The bot could not store this data: %(error)s"),
                code="serializer",
                params={"error": exc},
            ) from exc
        if problem := unstorable(stored):
            raise problem
        if self.instance.pk is not None and "data" in self.changed_data:
            self.check_database_round_trip(stored)
        return stored

    def check_database_round_trip(self, value: Any) -> None:
        """Refuse ``value`` unless the database gives it back unchanged.

        The database is the judge of what it stores exactly: PostgreSQL keeps ``1e+23``
        as the decimal ``100000000000000000000000`` (another number once read back as
        a float), and MariaDB's JSON check refuses what it cannot parse. The value is
        written over the row in a savepoint, read back and rolled back.
        """
        # The database the row is written to (a replica, where reads go, is no judge).
        using = router.db_for_write(Session, instance=self.instance)
        rows = Session.objects.using(using).filter(pk=self.instance.pk)
        try:
            with transaction.atomic(using=using):
                if not rows.update(data=value):
                    return  # deleted meanwhile: clean() says so
                text = (
                    rows.annotate(text=Cast("data", output_field=TextField()))
                    .values_list("text", flat=True)
                    .get()
                )
                transaction.set_rollback(True, using=using)
        except DatabaseError as exc:
            if database_busy(exc):
                raise _busy() from exc
            raise ValidationError(
                _("The database refused this data: %(error)s"),
                code="database",
                params={"error": exc},
            ) from exc
        readable, back = decode_stored(text)
        difference = first_difference(value, back) if readable else ("$", value, text)
        if difference is not None:
            where, was, became = difference
            raise ValidationError(
                _(
                    "The database would not give this data back as it is: %(where)s would "
                    "read back as %(became)s instead of %(was)s."
                ),
                code="round_trip",
                params={"where": where, "was": _brief(was), "became": _brief(became)},
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        assert cleaned is not None  # ModelForm.clean returns cleaned_data
        loaded = cleaned.get("loaded_revision")
        if self.instance.pk is None or loaded is None:
            return cleaned
        current = (
            Session.objects.filter(pk=self.instance.pk).values_list("revision", flat=True).first()
        )
        if current is None:
            raise ValidationError(_("This session was deleted meanwhile; nothing was saved."))
        if current != loaded:
            raise ValidationError(
                _(
                    "The bot changed this session after you opened it (revision %(loaded)s "
                    "is now %(current)s). Nothing was saved: reload the page and edit again."
                ),
                code="conflict",
                params={"loaded": loaded, "current": current},
            )
        return cleaned


# -- the session admin -----------------------------------------------------------------


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at runtime
    """Browse, search, inspect, edit, reset and delete stored sessions."""

    form = SessionDataForm
    list_display = (
        "bot",
        "fragment_name",
        "key_meaning",
        "data_preview",
        "data_version",
        "expiry",
        "updated_at",
    )
    list_display_links = ("key_meaning",)
    list_filter = (BotFilter, FragmentFilter, ExpiryFilter, VersionFilter)
    search_fields = ("key",)  # shows the search box; search_sessions does the searching
    search_help_text = _(
        "A key (chat:…, user:…), a chat or user id such as -4012345678, or text in the data."
    )
    ordering = ("-updated_at",)
    sortable_by = ("updated_at", "expires_at")  # the indexed columns
    readonly_fields = (
        "bot",
        "fragment_name",
        "key_meaning",
        "data_pretty",
        "data_version",
        "revision",
        "expiry",
        "created_at",
        "updated_at",
    )
    actions = ("reset_to_initial", "delete_selected_sessions")
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice is a scan per choice
    list_per_page = 50
    confirmation_template = "admin/botsessions/session/confirm_action.html"

    # -- permissions ---------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions are created by the bots

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it loads every row; ours works in batches
        return actions

    # -- the list ------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return OnePassChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Session],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> CappedCountPaginator:
        searching = bool(request.GET.get(SEARCH_VAR, "").strip())
        return CappedCountPaginator(
            queryset, per_page, orphans, allow_empty_first_page, one_pass=searching
        )

    @admin.display(description=_("bot"))
    def bot(self, obj: Session) -> str:
        config = session_configs().get(obj.bot_id)
        return f"{config[0]} ({obj.bot_id})" if config is not None else str(obj.bot_id)

    @admin.display(description=_("fragment"))
    def fragment_name(self, obj: Session) -> str:
        return printable_line(obj.fragment) or str(_("(single session)"))

    @admin.display(description=_("key"))
    def key_meaning(self, obj: Session) -> SafeString:
        meaning = describe_key(obj.key, _prefix_of(obj))
        # PTB's state (DjangoPersistence) says what it is: "user_data of user 42".
        meaning = describe_ptb_row(obj.fragment, meaning) or meaning
        # Escaped, like the data: a key holding U+202E could read as another key.
        key = printable_line(obj.key)
        if meaning == obj.key:
            return format_html("<code>{}</code>", key)
        shown = printable_line(meaning)
        return format_html('<code>{}</code><br><span class="quiet">{}</span>', key, shown)

    @admin.display(description=_("data"))
    def data_preview(self, obj: Session) -> SafeString:
        return format_html("<code>{}</code>", shortened(shown_data(_stored_text(obj))))

    @admin.display(description=_("data"))
    def data_pretty(self, obj: Session) -> SafeString:
        text = shown_data(_stored_text(obj), indent=2)
        return format_html('<pre style="margin: 0">{}</pre>', text)

    @admin.display(description=_("version"))
    def data_version(self, obj: Session) -> str | None:
        """``2``, as configured and as the filter and ``showsession`` say, not ``2.000000``."""
        if "version" in (unreadable := _unreadable_bookkeeping(obj)):
            return _unreadable(unreadable["version"])
        return None if obj.version is None else shown_version(obj.version)

    @admin.display(description=_("expires"), ordering="expires_at")
    def expiry(self, obj: Session) -> SafeString:
        if "expires_at" in (unreadable := _unreadable_bookkeeping(obj)):
            return _unreadable(unreadable["expires_at"])
        if obj.expires_at is None:
            return format_html('<span class="quiet">{}</span>', _("never"))
        expired = obj.is_expired
        label = _("expired") if expired else _("active")
        icon = static(f"admin/img/icon-{'no' if expired else 'yes'}.svg")
        when = formats.localize(timezone.localtime(obj.expires_at))
        return format_html('<img src="{}" alt=""> {} · {}', icon, label, when)

    # -- search --------------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Session], search_term: str
    ) -> tuple[QuerySet[Session], bool]:
        if search_words(search_term).capped:
            self.message_user(
                request,
                _(
                    "A search uses its first %(words)s words, and at most %(length)s "
                    "characters of each: the rest was left out."
                )
                % {"words": MAX_SEARCH_WORDS, "length": MAX_SEARCH_WORD_LENGTH},
                messages.WARNING,
            )
        return search_sessions(queryset, search_term), False

    # -- the detail page -----------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Session]:
        """Rows with their data as stored text, decoded by the admin itself.

        Django's JSON field would decode every row of a page as it loads, and one row
        Python cannot read (a number of 5,000 digits, nesting 100,000 deep, written
        before the edit form checked such things, or by other code) would break the
        whole list for everyone.
        """
        stored = Cast("data", output_field=TextField())
        rows: QuerySet[Session] = (
            super().get_queryset(request).defer("data").annotate(stored_data=stored)
        )
        if connections[rows.db].vendor == "sqlite":
            # SQLite keeps whatever a hand edit puts in its version and expiry columns,
            # and Django raises reading such a value: read as text, decoded row by row.
            rows = rows.defer("version", "expires_at").annotate(
                stored_version=Cast("version", output_field=TextField()),
                stored_expiry=Cast("expires_at", output_field=TextField()),
            )
        return rows

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Session | None:
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj.data = editable(_stored_text(obj))
            _unreadable_bookkeeping(obj)
        return obj

    def get_fieldsets(self, request: HttpRequest, obj: Session | None = None) -> list[Any]:
        if self.has_change_permission(request, obj):
            data_fields = ["data", "loaded_revision"]
        else:
            data_fields = ["data_pretty"]
        return [
            (None, {"fields": ["bot", "fragment_name", "key_meaning"]}),
            (_("Data"), {"fields": data_fields}),
            (
                _("Bookkeeping"),
                {"fields": ["data_version", "revision", "expiry", "created_at", "updated_at"]},
            ),
        ]

    def save_model(self, request: HttpRequest, obj: Session, form: Any, change: bool) -> None:
        """Write ``data``, only over the revision the operator was shown.

        The expiry is the one the bot's own write would give (now plus the fragment's
        ``ttl``, or none without one): an expired session kept its old expiry, so the
        bot would have ignored the edit and started over from the initial data.
        """
        if not change or "data" not in form.changed_data:
            return
        loaded = form.cleaned_data["loaded_revision"]
        now = timezone.now()
        fields: dict[str, Any] = {"data": obj.data, "revision": F("revision") + 1}
        # What could not be read is written anew: no version (the form checked the data
        # as unversioned) and no expiry, or the fragment's.
        fields.update(dict.fromkeys(_unreadable_bookkeeping(obj)))
        fragment = fragment_config(obj.bot_id, obj.fragment)
        if fragment is not None:
            fields["expires_at"] = now + fragment.ttl if fragment.ttl is not None else None
        written = Session.objects.filter(pk=obj.pk, revision=loaded).update(
            **fields, updated_at=now
        )
        if not written:
            raise EditConflict
        obj.revision, obj.updated_at = loaded + 1, now
        obj.expires_at = fields.get("expires_at", obj.expires_at)
        if obj.is_expired:  # only when the configuration, and so the ttl, is unknown here
            self.message_user(
                request,
                _(
                    "This session has expired, and its bot's configuration is not known "
                    "here to give it a new expiry: the bot will ignore the edit and start "
                    "over from its initial data."
                ),
                messages.WARNING,
            )

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except EditConflict:
            # Raised inside the view's transaction, so nothing of the save remains.
            self.message_user(
                request,
                _("The bot changed this session while you were saving; nothing was saved."),
                messages.ERROR,
            )
            return HttpResponseRedirect(request.get_full_path())
        except OperationalError as exc:
            if request.method != "POST" or not database_busy(exc):
                raise
            # The save's own write waited too long for the bot's: rolled back too.
            self.message_user(request, _busy().messages[0], messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            # An action this user may not run is refused, not silently ignored.
            requested = {name for name in request.POST.getlist("action") if name}
            if requested - set(self.get_actions(request)):
                raise PermissionDenied
            selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
            if not all(_session_id(value) for value in selected):
                # Django would hand them to pk__in and fail on "abc" or 40 nines.
                self.message_user(
                    request,
                    _("Nothing was done: the selection was not one of this list's."),
                    messages.ERROR,
                )
                return HttpResponseRedirect(request.get_full_path())
        from .admin_storages import has_other_storages

        if has_other_storages():
            url = reverse("admin:botsessions_storages", current_app=self.admin_site.name)
            extra_context = {**(extra_context or {}), "other_storages_url": url}
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_reset"
        reset = path(
            "<path:object_id>/reset/", self.admin_site.admin_view(self.reset_view), name=name
        )
        # Sessions outside the database (Redis): pages of their own, before <object_id>/.
        from .admin_storages import other_storage_urls

        return [*other_storage_urls(self), reset, *super().get_urls()]

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Django looks the row up first, telling a user without permission which ids exist.
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return super().history_view(request, object_id, extra_context)

    def reset_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The detail page's "Reset to initial data" button: confirm, then reset."""
        if not self.has_change_permission(request):
            raise PermissionDenied  # before the lookup: the same answer for any id
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            # Django's own answer for a missing id (not in the stubs).
            not_found: HttpResponse = self._get_obj_does_not_exist_redirect(  # type: ignore[attr-defined]
                request, self.opts, object_id
            )
            return not_found
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        rows = self.get_queryset(request).filter(pk=obj.pk)
        change_url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=[quote(obj.pk)],
            current_app=self.admin_site.name,
        )
        if request.method == "POST" and request.POST.get("post") == "yes":
            self._reset(request, rows)
            if rows.exists():
                return HttpResponseRedirect(change_url)
            return HttpResponseRedirect(self._changelist_url())
        if missing := unknown_fragments(rows):
            self._report_unknown(request, missing)
            return HttpResponseRedirect(change_url)
        return self._confirm(request, rows, "reset", obj=obj, cancel_url=change_url)

    # -- actions -------------------------------------------------------------------

    @admin.action(description=_("Reset selected sessions to initial data"), permissions=["change"])
    def reset_to_initial(
        self, request: HttpRequest, queryset: QuerySet[Session]
    ) -> HttpResponse | None:
        if request.POST.get("post") == "yes":
            self._reset(request, queryset)
            return None
        if missing := unknown_fragments(queryset):
            self._report_unknown(request, missing)
            return None
        return self._confirm(request, queryset, "reset", action="reset_to_initial")

    @admin.action(description=_("Delete selected sessions"), permissions=["delete"])
    def delete_selected_sessions(
        self, request: HttpRequest, queryset: QuerySet[Session]
    ) -> HttpResponse | None:
        if request.POST.get("post") == "yes":
            deleted = delete_sessions(queryset, on_batch=self._history(request))
            self.message_user(
                request,
                ngettext("Deleted %(count)d session.", "Deleted %(count)d sessions.", deleted)
                % {"count": deleted},
                messages.SUCCESS,
            )
            return None
        return self._confirm(request, queryset, "delete", action="delete_selected_sessions")

    def _reset(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        try:
            deleted = str(_("Deleted by a reset: its initial data is None."))
            history = self._history(request, deletion_message=deleted)
            result = reset_sessions(queryset, on_batch=history)
        except UnknownConfiguration as exc:
            self._report_unknown(request, exc.missing)
            return
        except SessionDataError as exc:  # the bot's initial raised, or cannot be stored
            message = _("Nothing was reset: %(error)s")
            self.message_user(request, message % {"error": printable(str(exc))}, messages.ERROR)
            return
        if result.reset or not result.changed:
            self.message_user(
                request,
                ngettext(
                    "Reset %(count)d session to its initial data.",
                    "Reset %(count)d sessions to their initial data.",
                    result.reset,
                )
                % {"count": result.reset},
                messages.SUCCESS,
            )
        if result.deleted:
            self.message_user(
                request,
                ngettext(
                    "Deleted %(count)d session whose initial data is None.",
                    "Deleted %(count)d sessions whose initial data is None.",
                    result.deleted,
                )
                % {"count": result.deleted},
                messages.SUCCESS,
            )
        if result.skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d session was left unchanged: its bot configuration disappeared.",
                    "%(count)d sessions were left unchanged: their bot configuration disappeared.",
                    result.skipped,
                )
                % {"count": result.skipped},
                messages.WARNING,
            )

    def _history(self, request: HttpRequest, *, deletion_message: str = "") -> BatchHook:
        """Write each batch's rows into the admin's history, as Django's own actions do.

        The rows are read as ids and names only (no data, no model instances loaded), so
        a reset of a million rows writes its entries batch by batch, like its changes.
        """

        def log(what: str, rows: QuerySet[Session]) -> None:
            columns = rows.values_list("pk", "bot_id", "fragment", "key")
            heads = [
                Session(pk=pk, bot_id=bot_id, fragment=fragment, key=key)
                for pk, bot_id, fragment, key in columns
            ]
            if what == "reset":
                flag, message = CHANGE, str(_("Reset to its initial data."))
            else:
                flag, message = DELETION, deletion_message
            user = request.user.pk
            assert user is not None  # the admin's views are for logged-in staff only

            def write() -> None:
                LogEntry.objects.log_actions(
                    user_id=user, queryset=heads, action_flag=flag, change_message=message
                )

            if router.db_for_write(LogEntry) == rows.db:
                write()  # in the batch's transaction: kept only with its changes
            else:
                # History on another database: written once the batch's changes are (a
                # failure there is logged by Django; the changes stand, the rest go on).
                transaction.on_commit(write, using=rows.db, robust=True)

        return log

    def _report_unknown(self, request: HttpRequest, missing: list[tuple[int, str]]) -> None:
        self.message_user(
            request,
            _(
                "Nothing was reset: %(what)s. The initial data comes from the bot's "
                "configuration (BOTSESSIONS_BOTS), which this server cannot build."
            )
            % {"what": UnknownConfiguration(missing)},
            messages.ERROR,
        )

    def _confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet[Session],
        verb: str,
        *,
        action: str = "",
        obj: Session | None = None,
        cancel_url: str = "",
    ) -> TemplateResponse:
        """The intermediate page: how many rows, a sample, and what a reset writes."""
        writes: list[tuple[str, str]] = []
        if verb == "reset":
            for bot_id, name in fragment_pairs(queryset):
                fragment = fragment_config(bot_id, name)
                if fragment is None:
                    continue
                try:
                    plan = initial_data(fragment)
                except SessionDataError as exc:  # raised, or cannot be stored
                    shown = printable(str(exc))
                else:
                    shown = "" if plan.deletes else shown_data(json.dumps(plan.data))
                writes.append((f"{self._bot_label(bot_id)} · {name or '-'}", shown))
        count = queryset.count()
        columns = ("pk", "bot_id", "fragment", "key", "updated_at")
        sample = list(queryset.order_by("-updated_at").only(*columns)[:10])
        title = _("Reset sessions to initial data?") if verb == "reset" else _("Delete sessions?")
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "verb": verb,
            "opts": self.opts,
            "object": obj,
            "count": count,
            "sample": [(row, self.key_meaning(row), self.fragment_name(row)) for row in sample],
            "more": max(count - len(sample), 0),
            "writes": writes,
            "action": action,
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": cancel_url,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.confirmation_template, context)

    def _bot_label(self, bot_id: int) -> str:
        config = session_configs().get(bot_id)
        return f"{config[0]} ({bot_id})" if config is not None else str(bot_id)

    def _changelist_url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )


# -- exactly-once records: read-only -------------------------------------------------


@admin.register(ProcessedUpdate)
class ProcessedUpdateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at runtime
    """The exactly-once records, for looking only: the engine writes and prunes them."""

    list_display = ("update_id", "bot_id", "processed_at")
    ordering = ("-processed_at",)
    sortable_by = ("processed_at",)
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return OwnFiltersChangeList  # no filters of its own: no lookups from the URL

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
