"""The admin's page for sessions outside the database: Redis, and storages of your own.

Those sessions are no rows, so they have no changelist: an operator finds one by its key
or a Telegram id, reads it, resets it to its fragment's initial data or deletes it. The
pages hang under the sessions admin (``…/botsessions/session/storages/``) and follow its
permissions: *view* (or *change*) to find and read, *change* to reset, *delete* to
delete, each checked before anything is looked up, so a user without it gets the same
403 for any session. A session is named by the query string (``bot``, ``fragment``,
``key``); anything typed there that names no session leads back to the search with a
message, never to a server error. Resets and deletes are compare-and-set on the
revision the confirmation page showed (:mod:`botsessions.lookup`), which must be the
session's current one when it can be read: "none" skips the check only for a stored
value that cannot be read.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from .admin import SessionAdmin, _bot_id
from .display import printable, printable_line, shortened, shown_data, shown_version
from .errors import SessionDataError, StorageError
from .keys import describe_key
from .lookup import (
    BadLookup,
    Found,
    FragmentRef,
    SessionChanged,
    check_key,
    configured_fragments,
    delete_session,
    find_sessions,
    fragment_ref,
    read_session,
    reset_session,
)
from .maintenance import initial_data

_REVISION = re.compile(r"\d{1,18}")


def other_storage_urls(model_admin: SessionAdmin) -> list[URLPattern]:
    """The pages' URLs, to put before the sessions admin's own (``<path:object_id>/``)."""
    wrap = model_admin.admin_site.admin_view
    views = StorageViews(model_admin)
    return [
        path("storages/", wrap(views.find), name="botsessions_storages"),
        path("storages/session/", wrap(views.show), name="botsessions_storage_session"),
        path("storages/reset/", wrap(views.reset), name="botsessions_storage_reset"),
        path("storages/delete/", wrap(views.delete), name="botsessions_storage_delete"),
    ]


def has_other_storages() -> bool:
    """Whether some configured fragment keeps its sessions outside the database."""
    return bool(configured_fragments(in_database=False))


class StorageViews:
    """The four pages, with the permissions of the sessions admin they belong to."""

    def __init__(self, model_admin: SessionAdmin) -> None:
        self.model_admin = model_admin

    # -- the pages -------------------------------------------------------------------

    def find(self, request: HttpRequest) -> HttpResponse:
        """The search: a key (with or without its fragment's prefix) or a Telegram id."""
        self._require(request, "view")
        refs = configured_fragments(in_database=False)
        term = request.GET.get("q", "")[:1000]
        found: list[Found] = []
        more = searched = False
        if term.strip():
            searched = True
            try:
                found, more = find_sessions(refs, term)
            except StorageError as exc:
                self._error(request, _("The storage could not be searched: %s") % exc)
        rows = [self._row(request, item) for item in found]
        context = self._context(
            request, _("Sessions in Redis and other storages"), fragments=refs, term=term
        )
        context.update(rows=rows, more=more, searched=searched)
        return self._render(request, "storages.html", context)

    def show(self, request: HttpRequest) -> HttpResponse:
        """One session: its data, escaped and indented, and its bookkeeping."""
        self._require(request, "view")
        looked_up = self._look_up(request)
        if isinstance(looked_up, HttpResponse):
            return looked_up
        found = looked_up
        admin = self.model_admin
        context = self._context(request, printable_line(found.key), session=self._details(found))
        context.update(
            can_reset=admin.has_change_permission(request),
            can_delete=admin.has_delete_permission(request),
            reset_url=self._url("botsessions_storage_reset", found),
            delete_url=self._url("botsessions_storage_delete", found),
        )
        return self._render(request, "storage_session.html", context)

    def reset(self, request: HttpRequest) -> HttpResponse:
        """Confirm, then give the session its fragment's initial data."""
        self._require(request, "change")
        return self._act(request, "reset")

    def delete(self, request: HttpRequest) -> HttpResponse:
        """Confirm, then delete the session."""
        self._require(request, "delete")
        return self._act(request, "delete")

    # -- acting ----------------------------------------------------------------------

    def _act(self, request: HttpRequest, verb: str) -> HttpResponse:
        looked_up = self._look_up(request)
        if isinstance(looked_up, HttpResponse):
            return looked_up
        found = looked_up
        show_url = self._url("botsessions_storage_session", found)
        if request.method == "POST" and request.POST.get("post") == "yes":
            shown = request.POST.get("revision", "")
            if shown != "none" and not _REVISION.fullmatch(shown):
                self._error(request, _("Nothing was done: the form was not one of this page's."))
                return HttpResponseRedirect(show_url)
            revision = None if shown == "none" else int(shown)
            try:
                if revision != found.revision:
                    # The server, not the form, decides when the compare-and-set is
                    # skipped: only for a value that cannot be read now.
                    raise SessionChanged(found.key)
                if verb == "reset":
                    kept = reset_session(found.ref, found.key, revision=revision)
                else:
                    delete_session(found.ref, found.key, revision=revision)
            except SessionChanged:
                self._error(
                    request,
                    _("The bot changed this session after you opened it; nothing was done."),
                )
                return HttpResponseRedirect(show_url)
            except (SessionDataError, StorageError) as exc:
                self._error(request, _("Nothing was done: %s") % exc)
                return HttpResponseRedirect(show_url)
            if verb == "delete" or not kept:
                self.model_admin.message_user(
                    request, _("Deleted session %s.") % printable_line(found.key), messages.SUCCESS
                )
                return HttpResponseRedirect(self._url("botsessions_storages"))
            reset = _("Reset session %s to its initial data.") % printable_line(found.key)
            self.model_admin.message_user(request, reset, messages.SUCCESS)
            return HttpResponseRedirect(show_url)
        writes = ""
        if verb == "reset":
            try:
                plan = initial_data(found.ref.fragment)
            except SessionDataError as exc:  # the bot's initial raised, or cannot be stored
                self._error(request, _("This session cannot be reset: %s") % exc)
                return HttpResponseRedirect(show_url)
            writes = "" if plan.deletes else shown_data(json.dumps(plan.data), indent=2)
        title = (
            _("Reset this session to initial data?")
            if verb == "reset"
            else _("Delete this session?")
        )
        context = self._context(request, title, session=self._details(found))
        context.update(
            verb=verb,
            writes=writes,
            revision="none" if found.revision is None else found.revision,
            cancel_url=show_url,
        )
        return self._render(request, "storage_confirm.html", context)

    # -- looking up what the query string names ----------------------------------------

    def _look_up(self, request: HttpRequest) -> Found | HttpResponse:
        """The session ``?bot=…&fragment=…&key=…`` names, or a way back to the search."""
        bot_id = _bot_id(request.GET.get("bot", ""))
        fragment = request.GET.get("fragment", "")
        key = request.GET.get("key", "")
        back = HttpResponseRedirect(self._url("botsessions_storages"))
        try:
            if bot_id is None:
                raise BadLookup(_("no bot is named"))
            ref = fragment_ref(bot_id, fragment[:100], configured_fragments(in_database=False))
            found = read_session(ref, check_key(key))
        except BadLookup as exc:
            self._error(request, _("No such session: %s.") % exc)
            return back
        except StorageError as exc:
            self._error(request, _("The storage could not be read: %s") % exc)
            return back
        if found is None:
            self._error(
                request,
                _("No session %(key)s in %(where)s.")
                % {
                    "key": printable_line(key),
                    "where": ref.label,
                },
            )
            return back
        return found

    # -- what the templates get --------------------------------------------------------

    def _row(self, request: HttpRequest, found: Found) -> dict[str, Any]:
        details = self._details(found)
        preview = re.sub(r"\s+", " ", details["data"])  # the indented JSON on one line
        return {
            **details,
            "preview": shortened(preview),
            "url": self._url("botsessions_storage_session", found),
        }

    def _details(self, found: Found) -> dict[str, Any]:
        record = found.record
        meaning = describe_key(found.key, found.ref.fragment.prefix)
        details: dict[str, Any] = {
            "where": found.ref.label,
            "storage": repr(found.ref.storage),
            "key": printable_line(found.key),
            "meaning": "" if meaning == found.key else printable_line(meaning),
            "problem": found.problem,
            "data": "",
            "revision": None,
            "version": None,
            "expiry": _("never"),
        }
        if record is not None:
            details["data"] = shown_data(record.data, indent=2)
            details["revision"] = record.revision
            if record.version is not None:
                details["version"] = shown_version(record.version)
            if record.expires_at is not None:
                state = _("expired") if found.expired else _("active")
                when = formats.localize(timezone.localtime(record.expires_at))
                details["expiry"] = f"{state} · {when}"
        return details

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        admin = self.model_admin
        return {
            **admin.admin_site.each_context(request),
            "title": title,
            "opts": admin.opts,
            "find_url": self._url("botsessions_storages"),
            **extra,
        }

    def _render(
        self, request: HttpRequest, template: str, context: dict[str, Any]
    ) -> TemplateResponse:
        request.current_app = self.model_admin.admin_site.name
        return TemplateResponse(request, f"admin/botsessions/session/{template}", context)

    def _url(self, name: str, found: Found | None = None) -> str:
        url = reverse(f"admin:{name}", current_app=self.model_admin.admin_site.name)
        if found is None:
            return url
        ref: FragmentRef = found.ref
        query = {"bot": ref.bot_id, "fragment": ref.name or "-", "key": found.key}
        return f"{url}?{urlencode(query)}"

    def _require(self, request: HttpRequest, permission: str) -> None:
        """Refuse before anything is looked up: the same 403 for every session."""
        admin = self.model_admin
        allowed = {
            "view": admin.has_view_or_change_permission,
            "change": admin.has_change_permission,
            "delete": admin.has_delete_permission,
        }[permission](request)
        if not allowed:
            raise PermissionDenied

    def _error(self, request: HttpRequest, message: str) -> None:
        self.model_admin.message_user(request, printable(message), messages.ERROR)
