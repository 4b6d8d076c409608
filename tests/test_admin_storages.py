"""The admin's pages for sessions outside the database: find, show, reset, delete in Redis.

The bot "cache" (id 555555) keeps its ``menu`` fragment (per chat, prefix ``m:``, with a
TTL) and its ``draft`` fragment (per user, initial data ``None``) in Redis, under a
prefix of the test's own, and its ``user`` fragment in the database. These tests need a
Redis server (``REDIS_URL``, default the local one); without one they are skipped. The
bot "other" keeps its sessions in the test database "elsewhere", also found here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from telegram.ext import Application, ApplicationBuilder

from botsessions import Fragment, Sessions, per_user, use_sessions

from .redis_support import URL, forget, new_prefix, require_redis
from .test_admin import staff

pytestmark = pytest.mark.django_db

CACHE_ID = 555555
CHAT = -4012345678
USER = 111
FIND = "admin:botsessions_storages"

_prefix: dict[str, Any] = {"value": "", "url": URL, "client": False, "initial_fails": False}


def menu_initial() -> dict[str, str]:
    if _prefix["initial_fails"]:
        raise RuntimeError("the menu service is down")
    return {"step": "start"}


def build_cache_application() -> Application:  # type: ignore[type-arg]
    from redis.asyncio import Redis

    from botsessions.storage.redis import RedisStorage

    if _prefix["client"]:  # a client of the bot's own, as client= takes it
        client = Redis.from_url(_prefix["url"], decode_responses=True)
        redis = RedisStorage(client=client, prefix=_prefix["value"])
    else:
        redis = RedisStorage(url=_prefix["url"], prefix=_prefix["value"])
    sessions = Sessions.multi(
        menu=Fragment(
            initial=menu_initial,
            storage=redis,
            prefix="m:",
            ttl=timedelta(hours=1),
        ),
        draft=Fragment(storage=redis, key=per_user),
        user=Fragment(initial=lambda: {"messages": 0}, key=per_user),
    )
    return use_sessions(ApplicationBuilder().token(f"{CACHE_ID}:cache-token"), sessions).build()


@pytest.fixture
def prefix(settings: Any) -> Iterator[str]:
    require_redis()
    _prefix["value"] = prefix = new_prefix()
    _prefix["url"] = URL
    _prefix["client"] = False
    _prefix["initial_fails"] = False
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "cache": {"APPLICATION": "tests.test_admin_storages.build_cache_application"},
    }
    yield prefix
    forget(prefix)


def name(prefix: str, fragment: str, key: str) -> str:
    return f"{prefix}{{{CACHE_ID}}}:s:{fragment}:{key}"


def store(fragment: str, key: str, data: Any, revision: int = 1) -> None:
    """Write a session in the storage's format (revision|version|expiry|data)."""
    import redis

    client = redis.Redis.from_url(URL)
    client.set(name(_prefix["value"], fragment, key), f"{revision}|||{json.dumps(data)}")
    client.close()


def stored(raw: Any, prefix: str, fragment: str, key: str) -> tuple[int, Any] | None:
    value = raw.get(name(prefix, fragment, key))
    if value is None:
        return None
    revision, _version, _expiry, data = value.split("|", 3)
    return int(revision), json.loads(data)


def page(view: str, fragment: str = "menu", key: str = f"m:chat:{CHAT}", **extra: str) -> str:
    query = {"bot": str(CACHE_ID), "fragment": fragment, "key": key, **extra}
    return f"{reverse(f'admin:botsessions_storage_{view}')}?{urlencode(query)}"


def notes(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# -- finding ------------------------------------------------------------------------------


def test_the_sessions_list_links_to_the_page_when_a_bot_keeps_sessions_elsewhere(
    admin_client: Client, prefix: str, settings: Any
) -> None:
    listing = reverse("admin:botsessions_session_changelist")
    assert reverse(FIND) in admin_client.get(listing).text
    settings.BOTSESSIONS_BOTS = {"default": settings.BOTSESSIONS_BOTS["default"]}
    assert reverse(FIND) not in admin_client.get(listing).text
    assert "No configured bot keeps sessions" in admin_client.get(reverse(FIND)).text


def test_find_by_key_with_or_without_the_fragments_prefix(
    admin_client: Client, prefix: str
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    store("menu", "m:chat:1", {"step": "other"})
    for term in (f"m:chat:{CHAT}", f"chat:{CHAT}"):
        response = admin_client.get(reverse(FIND), {"q": term})
        assert response.status_code == 200
        assert html.escape(page("session")) in response.text
        assert f"chat {CHAT}" in response.text  # what the key means
        assert "m:chat:1<" not in response.text
    assert "cache (555555) · menu" in response.text
    assert "No session found." in admin_client.get(reverse(FIND), {"q": "chat:2"}).text


def test_find_by_telegram_id(admin_client: Client, prefix: str) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    store("menu", f"m:chat:{CHAT}:user:{USER}", {"step": "mine"})
    store("menu", f"m:chat:{CHAT}9", {"step": "another chat"})
    store("draft", f"user:{USER}", {"text": "hello"})

    chat = admin_client.get(reverse(FIND), {"q": str(CHAT)}).text
    assert f"<code>m:chat:{CHAT}</code>" in chat
    assert f"<code>m:chat:{CHAT}:user:{USER}</code>" in chat
    assert f"<code>m:chat:{CHAT}9</code>" not in chat
    user = admin_client.get(reverse(FIND), {"q": str(USER)}).text
    assert f"<code>user:{USER}</code>" in user and "cache (555555) · draft" in user


@pytest.mark.parametrize(
    "term", ["", "   ", "\x00", "\ud800", "x" * 5000, "*", "[a-", "\\", "<script>", "9" * 40]
)
def test_any_search_is_answered(admin_client: Client, prefix: str, term: str) -> None:
    store("menu", "m:*", {"step": "star"})
    query = urlencode({"q": term}, encoding="utf-8", errors="surrogatepass")
    response = admin_client.get(f"{reverse(FIND)}?{query}")
    assert response.status_code == 200
    assert "<script>" not in response.text.split("</head>")[1].replace("<script src", "")


# -- showing ------------------------------------------------------------------------------


def test_show_escapes_the_data_and_says_its_bookkeeping(admin_client: Client, prefix: str) -> None:
    store("menu", f"m:chat:{CHAT}", {"note": "<script>alert(1)</script>", "n": 1}, revision=7)
    response = admin_client.get(page("session"))
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert "&quot;n&quot;: 1" in response.text  # indented JSON
    assert ">7<" in response.text  # the revision
    assert f"chat {CHAT}" in response.text
    assert "Reset to initial data" in response.text and "Delete" in response.text


def test_show_escapes_bidi_and_control_characters_and_says_the_version_as_configured(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    key = "m:chat:1\u202egnp.exe"
    raw.set(name(prefix, "menu", key), '3|2.000000||{"note": "a\u202eb\u001b[31m"}')
    response = admin_client.get(page("session", key=key))
    assert "\u202e" not in response.text and "\x1b" not in response.text
    assert "m:chat:1\\u202egnp.exe" in response.text
    assert "a\\u202eb\\u001b[31m" in response.text
    assert '<div class="readonly">2</div>' in response.text


def test_a_stored_value_that_cannot_be_read_is_shown_as_such_and_can_be_deleted(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    raw.hset(name(prefix, "menu", "m:chat:5"), "step", "x")
    response = admin_client.get(page("session", key="m:chat:5"))
    assert "The stored value cannot be read" in response.text
    assert "m:chat:5" in admin_client.get(reverse(FIND), {"q": "5"}).text
    confirm = admin_client.get(page("delete", key="m:chat:5"))
    assert 'name="revision" value="none"' in confirm.text
    admin_client.post(page("delete", key="m:chat:5"), {"post": "yes", "revision": "none"})
    assert raw.exists(name(prefix, "menu", "m:chat:5")) == 0


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"bot": "abc", "fragment": "menu", "key": "m:chat:1"},
        {"bot": "9" * 5000, "fragment": "menu", "key": "m:chat:1"},
        {"bot": str(CACHE_ID), "fragment": "\x00", "key": "m:chat:1"},
        {"bot": str(CACHE_ID), "fragment": "user", "key": "user:1"},  # in the database
        {"bot": "123456", "fragment": "chat", "key": "chat:1"},  # a database-only bot
        {"bot": str(CACHE_ID), "fragment": "menu", "key": "\ud800"},
        {"bot": str(CACHE_ID), "fragment": "menu", "key": "k" * 300},
        {"bot": str(CACHE_ID), "fragment": "menu", "key": "<b>absent</b>"},
    ],
)
@pytest.mark.parametrize("view", ["session", "reset", "delete"])
def test_what_names_no_session_leads_back_to_the_search(
    admin_client: Client, prefix: str, query: dict[str, str], view: str
) -> None:
    query_string = urlencode(query, encoding="utf-8", errors="surrogatepass")
    url = f"{reverse(f'admin:botsessions_storage_{view}')}?{query_string}"
    for response in (admin_client.get(url), admin_client.post(url, {"post": "yes"})):
        assert response.status_code == 302
        assert response.url == reverse(FIND)
    followed = admin_client.get(url, follow=True)
    assert "No such session" in followed.text or "No session" in followed.text
    assert "<b>absent</b>" not in followed.text


# -- resetting and deleting ----------------------------------------------------------------


def test_reset_confirms_then_writes_the_initial_data_over_the_shown_revision(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=4)
    confirm = admin_client.get(page("reset"))
    assert confirm.status_code == 200
    assert (
        "What is written" in confirm.text and "&quot;step&quot;: &quot;start&quot;" in confirm.text
    )
    assert 'name="revision" value="4"' in confirm.text
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (4, {"step": "pay"})

    response = admin_client.post(page("reset"), {"post": "yes", "revision": "4"})
    assert response.status_code == 302 and response.url == page("session")
    assert notes(response) == [f"Reset session m:chat:{CHAT} to its initial data."]
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (5, {"step": "start"})
    assert 0 < raw.ttl(name(prefix, "menu", f"m:chat:{CHAT}")) <= 3600  # the fragment's TTL


def test_a_reset_never_overwrites_what_the_bot_wrote_meanwhile(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=4)
    admin_client.get(page("reset"))
    store("menu", f"m:chat:{CHAT}", {"step": "paid"}, revision=5)  # the bot, meanwhile
    response = admin_client.post(page("reset"), {"post": "yes", "revision": "4"})
    assert notes(response) == [
        "The bot changed this session after you opened it; nothing was done."
    ]
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (5, {"step": "paid"})
    response = admin_client.post(page("delete"), {"post": "yes", "revision": "4"})
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (5, {"step": "paid"})


def test_resetting_a_fragment_whose_initial_data_is_none_deletes_it(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    store("draft", f"user:{USER}", {"text": "hello"})
    confirm = admin_client.get(page("reset", fragment="draft", key=f"user:{USER}"))
    assert "the session is deleted" in confirm.text
    admin_client.post(
        page("reset", fragment="draft", key=f"user:{USER}"), {"post": "yes", "revision": "1"}
    )
    assert raw.exists(name(prefix, "draft", f"user:{USER}")) == 0


def test_an_initial_that_raises_is_a_message_and_resets_nothing(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=4)
    _prefix["initial_fails"] = True
    error = "initial data could not be made: RuntimeError: the menu service is down"

    confirm = admin_client.get(page("reset"))
    done = admin_client.post(page("reset"), {"post": "yes", "revision": "4"})

    for response in (confirm, done):
        assert response.status_code == 302 and response.url == page("session")
    assert any("This session cannot be reset" in n and error in n for n in notes(confirm))
    assert any("Nothing was done" in n and error in n for n in notes(done))
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (4, {"step": "pay"})


def test_delete_confirms_then_deletes(admin_client: Client, prefix: str, raw: Any) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    assert "This deletes the session." in admin_client.get(page("delete")).text
    assert raw.exists(name(prefix, "menu", f"m:chat:{CHAT}")) == 1
    response = admin_client.post(page("delete"), {"post": "yes", "revision": "1"})
    assert response.url == reverse(FIND)
    assert notes(response) == [f"Deleted session m:chat:{CHAT}."]
    assert raw.exists(name(prefix, "menu", f"m:chat:{CHAT}")) == 0


@pytest.mark.parametrize("revision", ["", "x", "-1", "1" * 40, "\x00", "1.5"])
def test_a_revision_that_is_not_the_pages_changes_nothing(
    admin_client: Client, prefix: str, raw: Any, revision: str
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    for view in ("reset", "delete"):
        response = admin_client.post(page(view), {"post": "yes", "revision": revision})
        assert response.status_code == 302
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (1, {"step": "pay"})


def test_redis_going_away_is_a_message_not_an_error(admin_client: Client, prefix: str) -> None:
    from botsessions import bots

    _prefix["url"] = "redis://127.0.0.1:1/0"
    bots._forget_session_configs()
    response = admin_client.get(reverse(FIND), {"q": "chat:1"}, follow=True)
    assert response.status_code == 200 and "could not be searched" in response.text
    response = admin_client.get(page("session"), follow=True)
    assert response.status_code == 200 and "could not be read" in response.text


def test_a_storage_given_its_client_is_found_shown_reset_and_deleted(
    admin_client: Client, prefix: str, raw: Any
) -> None:
    """client=: each page's lookups run on a loop of their own, on a client of their own."""
    from botsessions import bots

    _prefix["client"] = True
    bots._forget_session_configs()
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=2)
    for _ in range(2):  # the second page's loop is another one
        found = admin_client.get(reverse(FIND), {"q": str(CHAT)})
        assert found.status_code == 200 and f"<code>m:chat:{CHAT}</code>" in found.text
        assert admin_client.get(page("session")).status_code == 200
    response = admin_client.post(page("reset"), {"post": "yes", "revision": "2"})
    assert notes(response) == [f"Reset session m:chat:{CHAT} to its initial data."]
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (3, {"step": "start"})
    admin_client.post(page("delete"), {"post": "yes", "revision": "3"})
    assert raw.exists(name(prefix, "menu", f"m:chat:{CHAT}")) == 0


def test_any_failure_of_the_storage_is_a_message_not_an_error(
    admin_client: Client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only StorageError: a client failing otherwise (a loop error) reads the same."""
    from botsessions.storage.redis import RedisStorage

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Event loop is closed")

    monkeypatch.setattr(RedisStorage, "read_many", broken)
    monkeypatch.setattr(RedisStorage, "keys_under", broken)
    response = admin_client.get(reverse(FIND), {"q": str(CHAT)}, follow=True)
    assert response.status_code == 200 and "could not be searched" in response.text
    response = admin_client.get(page("session"), follow=True)
    assert response.status_code == 200 and "could not be read" in response.text
    assert "Event loop is closed" in response.text


@pytest.mark.parametrize("view", ["reset", "delete"])
def test_the_server_decides_whether_a_revision_is_needed(
    admin_client: Client, prefix: str, raw: Any, view: str
) -> None:
    """A readable session needs its revision: a crafted "none" skips no compare-and-set."""
    conflict = ["The bot changed this session after you opened it; nothing was done."]
    store("menu", f"m:chat:{CHAT}", {"step": "pay"}, revision=4)
    for revision in ("none", "3"):
        response = admin_client.post(page(view), {"post": "yes", "revision": revision})
        assert response.status_code == 302 and notes(response)[-1:] == conflict
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (4, {"step": "pay"})
    # The other way round: a value that cannot be read is acted on only with "none".
    raw.delete(name(prefix, "menu", f"m:chat:{CHAT}"))
    raw.hset(name(prefix, "menu", f"m:chat:{CHAT}"), "step", "x")
    response = admin_client.post(page(view), {"post": "yes", "revision": "4"})
    assert notes(response)[-1:] == conflict
    assert raw.type(name(prefix, "menu", f"m:chat:{CHAT}")) == "hash"


# -- permissions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codenames",
    [
        (),
        ("view_session",),
        ("change_session",),
        ("delete_session",),
        ("view_session", "delete_session"),
    ],
)
def test_permissions_are_the_database_sessions_and_say_nothing_of_what_exists(
    prefix: str, raw: Any, codenames: tuple[str, ...]
) -> None:
    store("menu", f"m:chat:{CHAT}", {"step": "pay"})
    user = staff(*codenames)
    may_view = bool({"view_session", "change_session"} & set(codenames))
    rights = {
        "session": may_view,
        "reset": "change_session" in codenames,
        "delete": "delete_session" in codenames,
    }
    assert user.get(reverse(FIND), {"q": str(CHAT)}).status_code == (200 if may_view else 403)
    for view, allowed in rights.items():
        for key in (f"m:chat:{CHAT}", "m:chat:absent", "\x00"):
            response = user.get(page(view, key=key))
            if not allowed:
                assert response.status_code == 403, (view, key)
                assert user.post(page(view, key=key), {"post": "yes"}).status_code == 403
            else:
                assert response.status_code == (200 if key == f"m:chat:{CHAT}" else 302)
    shown = user.get(page("session"))
    if may_view:
        assert ("Reset to initial data" in shown.text) == rights["reset"]
        assert ("botsessions-delete" in shown.text) == rights["delete"]
    assert stored(raw, prefix, "menu", f"m:chat:{CHAT}") == (1, {"step": "pay"})


OTHER_DB_ID = 565656


def build_elsewhere_application() -> Application:  # type: ignore[type-arg]
    from botsessions.storage.db import DatabaseStorage

    sessions = Sessions(initial=dict, storage=DatabaseStorage(using="elsewhere"))
    token = f"{OTHER_DB_ID}:elsewhere-token"
    return use_sessions(ApplicationBuilder().token(token), sessions).build()


@pytest.mark.django_db(databases=["default", "elsewhere"])
def test_sessions_a_bot_keeps_in_another_database_are_on_the_page(
    admin_client: Client, settings: Any
) -> None:
    """The session list shows the database the admin reads; another one's are found here."""
    from botsessions.models import Session

    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "other": {"APPLICATION": "tests.test_admin_storages.build_elsewhere_application"},
    }
    Session.objects.using("elsewhere").create(
        bot_id=OTHER_DB_ID, fragment="", key="chat:77", data={"order": "cake"}
    )
    listing = admin_client.get(reverse("admin:botsessions_session_changelist")).text
    assert reverse(FIND) in listing and "chat:77" not in listing
    for term in ("77", "chat:77"):
        found = admin_client.get(reverse(FIND), {"q": term}).text
        assert "chat:77" in found, term
    shown = admin_client.get(
        f"{reverse('admin:botsessions_storage_session')}?"
        + urlencode({"bot": str(OTHER_DB_ID), "fragment": "", "key": "chat:77"})
    ).text
    assert "cake" in shown


def test_a_replica_the_list_reads_is_the_database_the_bots_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A primary/replica router: the sessions written to the primary are the list's."""
    from django.db import router

    from botsessions.admin_storages import has_other_storages
    from botsessions.models import Session

    reads = router.db_for_read

    def replica(model: Any, **hints: Any) -> str | None:
        return "replica" if model is Session else reads(model, **hints)

    monkeypatch.setattr(router, "db_for_read", replica)
    assert not has_other_storages()
