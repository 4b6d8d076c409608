"""The admin: find a chat's session, read it, fix it, reset it or delete it.

Built for the operator answering "the bot forgot my order" on a table of millions of
rows: the list never counts the whole table, orders by the indexed ``updated_at``,
and its filters take their choices from the bots' configuration instead of scanning
for distinct values. Edits and resets bump ``revision`` so that a bot holding older
data fails its compare-and-set rather than overwriting the operator's change.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import SEARCH_VAR, ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections
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

from .bots import session_configs, sessions_for_bot_id
from .errors import SessionDataError
from .keys import describe_key
from .maintenance import (
    UnknownConfiguration,
    delete_sessions,
    fragment_config,
    fragment_pairs,
    initial_data,
    reset_sessions,
    unknown_fragments,
)
from .models import ProcessedUpdate, Session
from .serializers import Serializer, default_serializer

PREVIEW_LENGTH = 80
SINGLE_FRAGMENT = "-"  # the filter's value for the unnamed fragment of a single session


# -- counting without counting everything ---------------------------------------------


class CappedCountPaginator(Paginator):
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
        rows = self.object_list
        if self.one_pass:
            self.matched_ids = list(rows.values_list("pk", flat=True)[: self.count_limit + 1])
            found = len(self.matched_ids)
        else:
            found = rows.order_by()[: self.count_limit + 1].count()
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
        return self._get_page(self.rows_with_ids(first, first + self.per_page), number, self)

    def rows_with_ids(self, start: int, stop: int) -> QuerySet[Any]:
        """Matched rows ``start:stop``, read by primary key (the filters stay as a check)."""
        assert self.matched_ids is not None
        return self.object_list.filter(pk__in=self.matched_ids[start:stop])


class OnePassChangeList(ChangeList):
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


# -- filters whose choices come from configuration -------------------------------------


def _known_fragments() -> list[str]:
    names = {name for _, sessions in session_configs().values() for name in sessions.fragments}
    return sorted(names)


class BotFilter(admin.SimpleListFilter):
    """The configured bots, by alias; no ``SELECT DISTINCT`` over the table."""

    title = _("bot")
    parameter_name = "bot_id"

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
        if value is None:
            return queryset
        try:
            return queryset.filter(bot_id=int(value))
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from exc


class FragmentFilter(admin.SimpleListFilter):
    """The fragments the configured bots define."""

    title = _("fragment")
    parameter_name = "fragment"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
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


class VersionFilter(admin.SimpleListFilter):
    """No version, or one of the versions the configured migrations know."""

    title = _("version")
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        versions: set[Decimal] = set()
        for _alias, sessions in session_configs().values():
            for fragment in sessions.fragments.values():
                if fragment.data_migrations is not None:
                    versions.update(fragment.data_migrations.versions)
        choices = [("none", str(_("no version")))]
        choices += [(_plain(v), _plain(v)) for v in sorted(versions)]
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
        try:
            return queryset.filter(version=Decimal(value))
        except InvalidOperation as exc:
            raise IncorrectLookupParameters(exc) from exc


class ExpiryFilter(admin.SimpleListFilter):
    """Active sessions (no expiry, or not yet) versus expired ones the bot would ignore."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", str(_("active"))), ("expired", str(_("expired")))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> QuerySet[Session]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


def _prefix_of(obj: Session) -> str:
    """The configured prefix of a row's fragment, so prefixed built-in keys read as such."""
    sessions = sessions_for_bot_id(obj.bot_id)
    fragment = None if sessions is None else sessions.fragments.get(obj.fragment)
    return "" if fragment is None else fragment.prefix


def _plain(version: Decimal) -> str:
    """``2.000000`` as ``2``, for labels and URLs."""
    return format(version.normalize(), "f")


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


def _key_condition(term: str) -> Q:
    """How a search word matches keys.

    The precise part-by-part test comes after one plain substring test, which alone
    rejects almost every row of a big table; that keeps a scan close to one ``LIKE``
    per row instead of eight.
    """
    if _TELEGRAM_ID.fullmatch(term):
        parts = _key_segment(f"chat:{term}") | _key_segment(f"user:{term}")
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
    """
    condition = Q()
    variants = {term, json.dumps(term)[1:-1], json.dumps(term, ensure_ascii=False)[1:-1]}
    for variant in sorted(variants):
        condition |= Q(data_text__icontains=variant)
    return _key_condition(term) | condition


def search_sessions(queryset: QuerySet[Session], search_term: str) -> QuerySet[Session]:
    """Every word must match (as in Django's search); quotes keep words together."""
    words = []
    for bit in smart_split(search_term):
        if len(bit) > 1 and bit[0] in "\"'" and bit[-1] == bit[0]:
            bit = unescape_string_literal(bit)
        if bit:
            words.append(bit)
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


class PrettyJSONField(forms.JSONField):
    """A JSON form field that shows its value indented, one key per line."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValidationError(_("Enter the session data as JSON."), code="required")
        converted = super().to_python(value)
        if converted is None:
            raise ValidationError(
                _("null would delete the session: use “Delete” instead."), code="null"
            )
        return converted


class SessionDataForm(forms.ModelForm):
    """Edits only ``data``, validated the way the bot's serializer will read it."""

    data = PrettyJSONField(label=_("Data"), required=False)
    loaded_revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1)

    class Meta:
        model = Session
        fields = ("data",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["loaded_revision"].initial = self.instance.revision
            lines = json.dumps(self.instance.data, indent=2).count("\n") + 2
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
        serializer = self.serializer()
        try:
            decoded = serializer.loads(json.dumps(value, ensure_ascii=False))
            stored = json.loads(serializer.dumps(decoded))
            json.dumps(stored, allow_nan=False)
        except (ValueError, TypeError) as exc:
            raise ValidationError(
                _("The bot could not store this data: %(error)s"),
                code="serializer",
                params={"error": exc},
            ) from exc
        return stored

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
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
class SessionAdmin(admin.ModelAdmin):
    """Browse, search, inspect, edit, reset and delete stored sessions."""

    form = SessionDataForm
    list_display = (
        "bot",
        "fragment_name",
        "key_meaning",
        "data_preview",
        "version",
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
        "version",
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
        return obj.fragment or str(_("(single session)"))

    @admin.display(description=_("key"))
    def key_meaning(self, obj: Session) -> SafeString:
        meaning = describe_key(obj.key, _prefix_of(obj))
        if meaning == obj.key:
            return format_html("<code>{}</code>", obj.key)
        return format_html('<code>{}</code><br><span class="quiet">{}</span>', obj.key, meaning)

    @admin.display(description=_("data"))
    def data_preview(self, obj: Session) -> SafeString:
        text = json.dumps(obj.data, ensure_ascii=False)
        if len(text) > PREVIEW_LENGTH:
            text = text[: PREVIEW_LENGTH - 1] + "…"
        return format_html("<code>{}</code>", text)

    @admin.display(description=_("data"))
    def data_pretty(self, obj: Session) -> SafeString:
        text = json.dumps(obj.data, indent=2, ensure_ascii=False)
        return format_html('<pre style="margin: 0">{}</pre>', text)

    @admin.display(description=_("expires"), ordering="expires_at")
    def expiry(self, obj: Session) -> SafeString:
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
        return search_sessions(queryset, search_term), False

    # -- the detail page -----------------------------------------------------------

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
                {"fields": ["version", "revision", "expiry", "created_at", "updated_at"]},
            ),
        ]

    def save_model(self, request: HttpRequest, obj: Session, form: Any, change: bool) -> None:
        """Write only ``data``, and only over the revision the operator was shown."""
        if not change or "data" not in form.changed_data:
            return
        loaded = form.cleaned_data["loaded_revision"]
        now = timezone.now()
        written = Session.objects.filter(pk=obj.pk, revision=loaded).update(
            data=obj.data, revision=F("revision") + 1, updated_at=now
        )
        if not written:
            raise EditConflict
        obj.revision, obj.updated_at = loaded + 1, now

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

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            # An action this user may not run is refused, not silently ignored.
            requested = {name for name in request.POST.getlist("action") if name}
            if requested - set(self.get_actions(request)):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_reset"
        reset = path(
            "<path:object_id>/reset/", self.admin_site.admin_view(self.reset_view), name=name
        )
        return [reset, *super().get_urls()]

    def reset_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The detail page's "Reset to initial data" button: confirm, then reset."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
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
            deleted = delete_sessions(queryset)
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
            result = reset_sessions(queryset)
        except UnknownConfiguration as exc:
            self._report_unknown(request, exc.missing)
            return
        except SessionDataError as exc:
            message = _("Nothing was reset: the bot's initial data cannot be stored: %(error)s")
            self.message_user(request, message % {"error": exc}, messages.ERROR)
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
                except SessionDataError as exc:
                    shown = str(_("cannot be stored: %(error)s") % {"error": exc})
                else:
                    shown = "" if plan.deletes else json.dumps(plan.data, ensure_ascii=False)
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
class ProcessedUpdateAdmin(admin.ModelAdmin):
    """The exactly-once records, for looking only: the engine writes and prunes them."""

    list_display = ("update_id", "bot_id", "processed_at")
    ordering = ("-processed_at",)
    sortable_by = ("processed_at",)
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
