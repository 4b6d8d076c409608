"""The sessions admin: every page, filter, search, action and permission rule.

Bots: the tests' settings configure "default" (the demo bot, id 123456, fragments chat
and user); ``more_bots`` adds "shop" (a single session with migrations, a TTL and a
serializer that refuses passwords) and "notes" (a fragment whose initial data is None,
one whose initial is async and one whose initial the serializer refuses), so that every
branch of a reset has a real bot; ``broken_bot`` adds "broken", whose initials raise (one
sync, one async) or whose serializer does.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.exceptions import ImproperlyConfigured
from django.db import DataError, OperationalError, connection, router, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from telegram.ext import Application, ApplicationBuilder

from botsessions import (
    DataclassSerializer,
    Fragment,
    JSONSerializer,
    Sessions,
    bots,
    maintenance,
    per_user,
    use_sessions,
)
from botsessions import admin as session_admin
from botsessions.errors import SessionConflict, SessionDataError
from botsessions.models import ProcessedUpdate, Session
from botsessions.storage.base import StorageKey, StoredSession, Write
from botsessions.storage.db import DatabaseStorage

pytestmark = pytest.mark.django_db

BOT_ID = 123456
SHOP_ID = 654321
NOTES_ID = 777777
CART_ID = 888888
CHAT = -4012345678

CHANGELIST = "admin:botsessions_session_changelist"


# -- bots the admin can find ------------------------------------------------------------


class NoPasswordsSerializer(JSONSerializer):
    """A fragment serializer stricter than JSON: the admin must apply it to edits."""

    def dumps(self, value: Any) -> str:
        if isinstance(value, dict) and "password" in value:
            raise SessionDataError("passwords are not kept in sessions")
        return super().dumps(value)


def build_shop_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions(
        initial=lambda: {"cart": []},
        migrations={1: lambda data: data, 2: lambda data: data},
        ttl=timedelta(hours=1),
        serializer=NoPasswordsSerializer(),
    )
    return use_sessions(ApplicationBuilder().token(f"{SHOP_ID}:shop-token"), sessions).build()


@dataclass
class Cart:
    count: int = 0  # "n" before version 2


def build_cart_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions(
        initial=Cart,
        serializer=DataclassSerializer(Cart),
        migrations={1: lambda data: data, 2: lambda data: {"count": data["n"]}},
    )
    return use_sessions(ApplicationBuilder().token(f"{CART_ID}:cart-token"), sessions).build()


async def fresh_prefs() -> dict[str, str]:
    return {"lang": "en"}


def build_notes_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions.multi(
        draft=Fragment(),
        prefs=Fragment(initial=fresh_prefs),
        legacy=Fragment(initial=lambda: {"span": (1, 2)}),  # a tuple: JSON would change it
    )
    return use_sessions(ApplicationBuilder().token(f"{NOTES_ID}:notes-token"), sessions).build()


def build_unavailable_application() -> Application:  # type: ignore[type-arg]
    raise ImproperlyConfigured("no token in this environment")


@pytest.fixture
def more_bots(settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "shop": {"APPLICATION": "tests.test_admin.build_shop_application"},
        "notes": {"APPLICATION": "tests.test_admin.build_notes_application"},
    }


# -- helpers ------------------------------------------------------------------------------


def make(
    key: str = f"chat:{CHAT}",
    data: Any = None,
    *,
    bot_id: int = BOT_ID,
    fragment: str = "chat",
    age: int = 0,
    **fields: Any,
) -> Session:
    """A stored session, ``age`` minutes old."""
    when = timezone.now() - timedelta(minutes=age)
    return Session.objects.create(
        bot_id=bot_id,
        fragment=fragment,
        key=key,
        data={"pizza_count": 3} if data is None else data,
        created_at=when,
        updated_at=when,
        **fields,
    )


def staff(*codenames: str) -> Client:
    """A logged-in staff client holding exactly these botsessions permissions."""
    user = User.objects.create_user(f"staff-{'-'.join(codenames)}", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="botsessions", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def change_url(obj: Session) -> str:
    return reverse("admin:botsessions_session_change", args=[obj.pk])


def reset_url(obj: Session) -> str:
    return reverse("admin:botsessions_session_reset", args=[obj.pk])


def notes(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def listed_keys(response: Any) -> list[str]:
    """The keys on a changelist page, in display order."""
    return re.findall(
        r'<th class="field-key_meaning"><a [^>]*><code>([^<]*)</code>', response.text
    )


def selected_choices(response: Any) -> list[str]:
    """The choice each filter of a changelist shows as selected."""
    return re.findall(r'<li class="selected">\s*<a href="[^"]*">([^<]*)</a>', response.text)


def action(name: str, *rows: Session, confirm: bool = False, across: bool = False) -> dict:
    data: dict[str, Any] = {
        "action": name,
        "_selected_action": [row.pk for row in rows],
        "select_across": "1" if across else "0",
    }
    if confirm:
        data["post"] = "yes"
    else:
        data["index"] = "0"
    return data


def engine_write(key: str, text: str, *, bot_id: int = BOT_ID, fragment: str = "chat") -> None:
    """Store a row the way the bot does (raw SQL, JSON text as the serializer wrote it)."""
    DatabaseStorage().commit_sync(
        [Write(StorageKey(bot_id, fragment, key), StoredSession(data=text), 0)], None
    )


# -- the list ---------------------------------------------------------------------------


def test_list_shows_bot_fragment_meaning_preview_version_and_expiry(admin_client: Client) -> None:
    make(f"chat:{CHAT}", {"pizza_count": 3})
    make(f"chat:{CHAT}:user:111", {"messages": 1}, fragment="user", version=Decimal("2"))
    make(f"chat:{CHAT}:topic:7", {"x": 1})
    make("user:111", {"messages": 5}, fragment="user", expires_at=timezone.now() - timedelta(1))
    make("custom-key", {"long": "y" * 200}, bot_id=42, fragment="")
    make("user:222", {"messages": 0}, fragment="user", expires_at=timezone.now() + timedelta(1))

    response = admin_client.get(reverse(CHANGELIST))

    assert response.status_code == 200
    page = response.text
    assert "default (123456)" in page
    assert f"chat {CHAT}" in page
    assert f"user 111 in chat {CHAT}" in page
    assert f"topic 7 of chat {CHAT}" in page
    assert "(single session)" in page
    assert ">42<" in page  # an unknown bot shows its id
    assert "{&quot;pizza_count&quot;: 3}" in page
    assert "y" * 200 not in page and "yyyy…" in page  # previews are cut short
    assert '<td class="field-data_version">2</td>' in page  # as configured, not 2.000000
    assert "2.000000" not in page
    assert "expired ·" in page and "active ·" in page and "never" in page
    assert 'href="/admin/botsessions/session/add/"' not in page


def test_list_is_ordered_by_last_update_newest_first(admin_client: Client) -> None:
    make("chat:1", age=30)
    make("chat:2", age=10)
    make("chat:3", age=20)

    response = admin_client.get(reverse(CHANGELIST))

    assert listed_keys(response) == ["chat:2", "chat:3", "chat:1"]


def test_list_never_counts_the_whole_table(admin_client: Client) -> None:
    for n in range(5):
        make(f"chat:{n}")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(CHANGELIST), {"_facets": "1"})

    assert response.status_code == 200
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert counts, "the paginator counts (boundedly)"
    assert all("LIMIT" in sql.upper() for sql in counts), counts
    assert len(queries) <= 10  # no query per row
    assert "Show counts" not in response.text  # facets would count once per filter choice


def test_a_search_scans_the_table_once_per_page_load(
    admin_client: Client, searchable: None
) -> None:
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse(CHANGELIST), {"q": "margherita"})

    assert listed_keys(response) == [f"chat:{CHAT}"]
    searching = [q["sql"].upper() for q in queries if "MARGHERITA" in q["sql"].upper()]
    assert len(searching) == 2, searching
    ids_pass, page_read = searching
    assert "LIMIT 10001" in ids_pass and "COUNT(" not in ids_pass
    assert " IN (" in page_read  # the page is read by primary key


def test_searched_pages_read_by_id_keep_their_order(admin_client: Client) -> None:
    for n in range(120):
        make(f"chat:{n}", age=n)
    make("user:1", fragment="user")

    pages = [
        listed_keys(admin_client.get(reverse(CHANGELIST), {"q": "chat", "p": p}))
        for p in (1, 2, 3)
    ]
    everything = listed_keys(admin_client.get(reverse(CHANGELIST), {"q": "chat", "all": ""}))

    assert [len(page) for page in pages] == [50, 50, 20]
    assert pages[0] + pages[1] + pages[2] == [f"chat:{n}" for n in range(120)] == everything


def test_a_big_filtered_list_says_more_than_the_cap(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_admin.CappedCountPaginator, "count_limit", 5)
    for n in range(8):
        make(f"chat:{n}")

    response = admin_client.get(reverse(CHANGELIST), {"bot_id": BOT_ID})

    assert "more than 5 sessions" in response.text
    assert "Select all matching sessions" in response.text
    assert "Select all 6" not in response.text


def test_a_big_unfiltered_list_shows_the_database_estimate(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_admin.CappedCountPaginator, "count_limit", 5)
    monkeypatch.setattr(session_admin, "estimated_row_count", lambda queryset: 1_000_000)
    for n in range(8):
        make(f"chat:{n}")

    response = admin_client.get(reverse(CHANGELIST))

    assert "about 1000000 sessions" in response.text


def test_the_estimate_comes_from_the_database_catalogue() -> None:
    for n in range(30):
        make(f"chat:{n}")
    rows = Session.objects.all()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Session._meta.db_table}")
        assert session_admin.estimated_row_count(rows) == 30
    elif connection.vendor == "mysql":
        estimate = session_admin.estimated_row_count(rows)
        assert estimate is None or estimate >= 0
    else:
        assert session_admin.estimated_row_count(rows) is None


# -- search -------------------------------------------------------------------------------


@pytest.fixture
def searchable() -> None:
    make(f"chat:{CHAT}", {"order": "Margherita, extra basil"}, age=1)
    make(f"chat:{CHAT}:user:111", {"messages": 4}, fragment="user", age=2)
    make(f"chat:{CHAT}:topic:7", {"topic": "deliveries"}, age=3)
    make(f"chat:{CHAT}9", {"order": "none"}, age=4)  # another chat, a longer id
    make("user:111", {"name": "Ann"}, fragment="user", age=5)
    make("chat:-100777", {"note": 'she said "hurry"'}, age=6)
    make("chat:-100888", {"name": "Jürgen"}, age=7)  # stored by the ORM
    engine_write("chat:-100999", json.dumps({"name": "Jürgen B."}, ensure_ascii=False))


def search(client: Client, term: str) -> list[str]:
    return sorted(listed_keys(client.get(reverse(CHANGELIST), {"q": term})))


def test_search_by_exact_chat_id_finds_the_chat_and_its_user_and_topic_keys(
    admin_client: Client, searchable: None
) -> None:
    assert search(admin_client, str(CHAT)) == sorted(
        [f"chat:{CHAT}", f"chat:{CHAT}:topic:7", f"chat:{CHAT}:user:111"]
    )


def test_search_by_user_id_finds_the_user_everywhere(
    admin_client: Client, searchable: None
) -> None:
    assert search(admin_client, "111") == sorted([f"chat:{CHAT}:user:111", "user:111"])


def test_search_by_key_text(admin_client: Client, searchable: None) -> None:
    assert search(admin_client, "topic:7") == [f"chat:{CHAT}:topic:7"]
    assert search(admin_client, "TOPIC:7") == [f"chat:{CHAT}:topic:7"]
    assert search(admin_client, f"chat:{CHAT}") == sorted(
        [f"chat:{CHAT}", f"chat:{CHAT}:topic:7", f"chat:{CHAT}:user:111"]
    )


def test_search_inside_the_data_ignores_case(admin_client: Client, searchable: None) -> None:
    assert search(admin_client, "MARGHERITA") == [f"chat:{CHAT}"]
    assert search(admin_client, "deliver") == [f"chat:{CHAT}:topic:7"]


def test_search_finds_quotes_and_accents_however_the_json_was_written(
    admin_client: Client, searchable: None
) -> None:
    assert search(admin_client, '"she said \\"hurry\\""') == ["chat:-100777"]
    assert search(admin_client, "hurry") == ["chat:-100777"]
    assert search(admin_client, "Jürgen") == ["chat:-100888", "chat:-100999"]


def test_every_search_word_must_match(admin_client: Client, searchable: None) -> None:
    assert search(admin_client, f"{CHAT} basil") == [f"chat:{CHAT}"]
    assert search(admin_client, "nothing-like-this") == []


# -- filters ------------------------------------------------------------------------------


def test_bot_filter_lists_configured_bots_and_filters(
    admin_client: Client, more_bots: None
) -> None:
    make("chat:1")
    make("chat:2", bot_id=SHOP_ID, fragment="")

    page = admin_client.get(reverse(CHANGELIST)).text
    assert "default (123456)" in page and "shop (654321)" in page and "notes (777777)" in page

    response = admin_client.get(reverse(CHANGELIST), {"bot_id": SHOP_ID})
    assert listed_keys(response) == ["chat:2"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("bot_id", "abc"),
        ("bot_id", "9" * 20),  # beyond 64 bits
        ("bot_id", "9" * 5000),  # beyond what Python converts from text
        ("version", "NaN"),
        ("version", "sNaN"),
        ("version", "Infinity"),
        ("version", "-Infinity"),
        ("version", "1e999999999"),
        ("version", "1.1234567"),  # more decimals than the column
        ("version", "123456789012345"),  # more digits than the column
        ("fragment", "a\x00b"),  # PostgreSQL takes no NUL in a query
        ("fragment", "f" * 65),  # longer than the column
        ("status", "soon"),
    ],
)
def test_filter_values_that_cannot_be_used_are_ignored(
    admin_client: Client, name: str, value: str
) -> None:
    make("chat:1", version=Decimal(1))
    make("chat:2", age=1, fragment="user")

    response = admin_client.get(reverse(CHANGELIST), {name: value})

    assert response.status_code == 200
    assert listed_keys(response) == ["chat:1", "chat:2"]
    assert selected_choices(response) == ["All"] * 4


def test_fragment_filter(admin_client: Client, more_bots: None) -> None:
    make("chat:1", fragment="chat")
    make("user:1", fragment="user")
    make("chat:2", fragment="", bot_id=SHOP_ID)

    page = admin_client.get(reverse(CHANGELIST)).text
    for name in ("chat", "user", "draft", "prefs", "(single session)"):
        assert f"{name}</a>" in page

    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"fragment": "user"})) == ["user:1"]
    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"fragment": "-"})) == ["chat:2"]


def test_status_filter_separates_active_from_expired(admin_client: Client) -> None:
    now = timezone.now()
    make("chat:1", expires_at=now - timedelta(minutes=1))
    make("chat:2", expires_at=now + timedelta(minutes=1), age=1)
    make("chat:3", age=2)

    active = listed_keys(admin_client.get(reverse(CHANGELIST), {"status": "active"}))
    expired = listed_keys(admin_client.get(reverse(CHANGELIST), {"status": "expired"}))

    assert active == ["chat:2", "chat:3"]
    assert expired == ["chat:1"]


def test_version_filter_offers_the_configured_versions(
    admin_client: Client, more_bots: None
) -> None:
    make("chat:1", bot_id=SHOP_ID, fragment="", version=Decimal(1))
    make("chat:2", bot_id=SHOP_ID, fragment="", version=Decimal(2))
    make("chat:3")

    page = admin_client.get(reverse(CHANGELIST)).text
    assert "?version=1" in page and "?version=2" in page and "?version=none" in page

    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"version": "2"})) == ["chat:2"]
    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"version": "none"})) == ["chat:3"]


# -- the detail page ----------------------------------------------------------------------


def test_detail_shows_indented_json_and_read_only_bookkeeping(admin_client: Client) -> None:
    row = make(data={"order": {"size": "L", "toppings": ["basil"]}}, version=Decimal("1.5"))

    page = admin_client.get(change_url(row)).text

    assert "  &quot;order&quot;: {\n    &quot;size&quot;: &quot;L&quot;" in page
    assert f'name="loaded_revision" value="{row.revision}"' in page
    for name in ("data_version", "revision", "created_at", "updated_at", "bot", "key_meaning"):
        assert '<div class="readonly">' in page and f"field-{name}" in page
    for name in ("bot_id", "fragment", "key", "version", "revision", "updated_at"):
        assert f'name="{name}"' not in page
    assert "Reset to initial data" in page


def test_data_is_escaped_everywhere(admin_client: Client) -> None:
    evil = "<script>alert('x')</script>"
    row = make("chat:<b>1</b>", {"note": evil})
    viewer = staff("view_session")

    pages = [
        admin_client.get(reverse(CHANGELIST)).text,
        admin_client.get(change_url(row)).text,
        viewer.get(change_url(row)).text,
        admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row)).text,
    ]

    for page in pages:
        assert evil not in page and "<b>1</b>" not in page
        assert "chat:&lt;b&gt;1&lt;/b&gt;" in page
    for page in pages[:3]:
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_editing_the_data_bumps_revision_and_updated_at(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3}, age=60, version=Decimal(1))
    before = Session.objects.get(pk=row.pk)

    response = admin_client.post(
        change_url(row),
        {
            "data": '{"pizza_count": 0, "note": "refunded"}',
            "loaded_revision": row.revision,
            # read-only fields are ignored even when posted
            "key": "chat:hijacked",
            "bot_id": 1,
            "revision": 99,
            "version": "9",
        },
    )

    assert response.status_code == 302
    after = Session.objects.get(pk=row.pk)
    assert after.data == {"pizza_count": 0, "note": "refunded"}
    assert after.revision == before.revision + 1
    assert after.updated_at > before.updated_at
    assert (after.key, after.bot_id, after.version) == (before.key, BOT_ID, Decimal(1))
    assert after.created_at == before.created_at


def test_saving_unchanged_data_writes_nothing(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})

    admin_client.post(
        change_url(row), {"data": '{\n  "pizza_count": 3\n}', "loaded_revision": row.revision}
    )

    assert Session.objects.get(pk=row.pk).revision == row.revision


def test_empty_containers_are_valid_data(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})

    admin_client.post(change_url(row), {"data": "{}", "loaded_revision": row.revision})

    assert Session.objects.get(pk=row.pk).data == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", "Enter a valid JSON"),
        ("", "Enter the session data as JSON"),
        ("null", "use “Delete” instead"),
        ('{"x": NaN}', "NaN, Infinity and numbers too large for a float are not JSON"),
    ],
)
def test_invalid_data_is_a_form_error_and_saves_nothing(
    admin_client: Client, text: str, error: str
) -> None:
    row = make(data={"pizza_count": 3})

    response = admin_client.post(change_url(row), {"data": text, "loaded_revision": row.revision})

    assert response.status_code == 200
    assert error in response.text
    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"pizza_count": 3}, row.revision)


def test_edits_are_checked_by_the_fragments_own_serializer(
    admin_client: Client, more_bots: None
) -> None:
    row = make("chat:1", {"cart": []}, bot_id=SHOP_ID, fragment="")

    refused = admin_client.post(
        change_url(row), {"data": '{"password": "hunter2"}', "loaded_revision": row.revision}
    )
    accepted = admin_client.post(
        change_url(row), {"data": '{"cart": ["tea"]}', "loaded_revision": row.revision}
    )

    assert "passwords are not kept in sessions" in refused.text
    assert accepted.status_code == 302
    assert Session.objects.get(pk=row.pk).data == {"cart": ["tea"]}


@pytest.mark.parametrize(
    ("typed", "accepted"),
    [('{"n": 5}', True), ('{"count": 5}', False)],
    ids=["stored-shape", "newest-shape"],
)
def test_an_edit_of_an_older_version_is_checked_as_the_bot_will_read_it(
    admin_client: Client, settings: Any, typed: str, accepted: bool
) -> None:
    """The row keeps its version, so the bot upgrades the edit as it reads it: the data
    is edited in the shape it is stored in, and the newest shape (which the migration
    to version 2 cannot take) is refused rather than stored for the bot to refuse."""
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "cart": {"APPLICATION": "tests.test_admin.build_cart_application"},
    }
    row = make("chat:1", {"n": 3}, bot_id=CART_ID, fragment="", version=Decimal(1))
    answer = admin_client.post(change_url(row), {"data": typed, "loaded_revision": row.revision})
    row.refresh_from_db()
    if accepted:
        assert answer.status_code == 302
        assert (row.data, row.version) == ({"n": 5}, Decimal(1))
    else:
        assert "The bot could not store this data" in answer.text
        assert row.data == {"n": 3}


def test_a_bot_write_after_the_page_loaded_wins_and_the_edit_is_refused(
    admin_client: Client,
) -> None:
    row = make(data={"pizza_count": 3})
    loaded = admin_client.get(change_url(row)).context["adminform"].form["loaded_revision"]
    Session.objects.filter(pk=row.pk).update(data={"pizza_count": 4}, revision=row.revision + 1)

    response = admin_client.post(
        change_url(row), {"data": '{"pizza_count": 0}', "loaded_revision": loaded.value()}
    )

    assert response.status_code == 200
    assert "The bot changed this session after you opened it" in response.text
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 4}


def test_a_bot_write_racing_the_save_itself_rolls_the_save_back(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})

    def bot_writes_first(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE") and "revision" in sql:
            execute(
                f"UPDATE {Session._meta.db_table} SET revision = revision + 1 WHERE id = %s",
                [row.pk],
                many,
                context,
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(bot_writes_first):
        response = admin_client.post(
            change_url(row), {"data": '{"pizza_count": 0}', "loaded_revision": row.revision}
        )

    assert response.status_code == 302 and response["Location"] == change_url(row)
    assert any("nothing was saved" in note for note in notes(response))
    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"pizza_count": 3}, row.revision)


def test_an_admin_edit_makes_a_stale_bot_write_fail(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})
    bot_read = row.revision

    admin_client.post(change_url(row), {"data": '{"pizza_count": 0}', "loaded_revision": bot_read})
    stale = StoredSession(data='{"pizza_count":4}', revision=bot_read + 1)

    with pytest.raises(SessionConflict):
        DatabaseStorage().commit_sync(
            [Write(StorageKey(BOT_ID, "chat", row.key), stale, bot_read)], None
        )
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 0}


def test_sessions_cannot_be_added_by_hand(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:botsessions_session_add")).status_code == 403


# -- reset and delete -------------------------------------------------------------------


def test_reset_action_asks_first_then_writes_the_initial_data(admin_client: Client) -> None:
    chat = make(f"chat:{CHAT}", {"pizza_count": 9})
    user = make("user:111", {"messages": 40}, fragment="user")
    other = make("chat:5", {"pizza_count": 2})

    confirm = admin_client.post(reverse(CHANGELIST), action("reset_to_initial", chat, user))

    assert confirm.status_code == 200
    assert "Reset sessions to initial data?" in confirm.text
    assert "This gives 2 sessions their bot" in confirm.text
    assert "{&quot;pizza_count&quot;: 0}" in confirm.text
    assert "{&quot;messages&quot;: 0}" in confirm.text
    assert f'name="_selected_action" value="{chat.pk}"' in confirm.text
    assert Session.objects.get(pk=chat.pk).data == {"pizza_count": 9}

    done = admin_client.post(
        reverse(CHANGELIST), action("reset_to_initial", chat, user, confirm=True)
    )

    assert done.status_code == 302
    assert notes(done) == ["Reset 2 sessions to their initial data."]
    assert Session.objects.get(pk=chat.pk).data == {"pizza_count": 0}
    assert Session.objects.get(pk=user.pk).data == {"messages": 0}
    assert Session.objects.get(pk=chat.pk).revision == chat.revision + 1
    assert Session.objects.get(pk=other.pk).data == {"pizza_count": 2}


def test_reset_stamps_the_latest_version_and_a_fresh_expiry(
    admin_client: Client, more_bots: None
) -> None:
    row = make("chat:1", {"cart": ["x"]}, bot_id=SHOP_ID, fragment="", version=Decimal(1))

    admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row, confirm=True))

    stored = Session.objects.get(pk=row.pk)
    assert stored.data == {"cart": []}
    assert stored.version == Decimal(2)
    assert stored.expires_at is not None
    assert timedelta(minutes=59) < stored.expires_at - timezone.now() <= timedelta(hours=1)


def test_reset_of_a_fragment_with_no_initial_data_deletes_it(
    admin_client: Client, more_bots: None
) -> None:
    draft = make("chat:1", {"text": "half a note"}, bot_id=NOTES_ID, fragment="draft")
    prefs = make("chat:1", {"lang": "de"}, bot_id=NOTES_ID, fragment="prefs")

    confirm = admin_client.post(reverse(CHANGELIST), action("reset_to_initial", draft, prefs))
    assert "the session is deleted" in confirm.text

    done = admin_client.post(
        reverse(CHANGELIST), action("reset_to_initial", draft, prefs, confirm=True)
    )

    assert not Session.objects.filter(pk=draft.pk).exists()
    assert Session.objects.get(pk=prefs.pk).data == {"lang": "en"}  # from an async initial
    assert sorted(notes(done)) == [
        "Deleted 1 session whose initial data is None.",
        "Reset 1 session to its initial data.",
    ]


def test_reset_to_initial_data_the_serializer_refuses_changes_nothing(
    admin_client: Client, more_bots: None
) -> None:
    chat = make("chat:1", {"pizza_count": 9})
    legacy = make("chat:1", {"span": [0, 0]}, bot_id=NOTES_ID, fragment="legacy")

    confirm = admin_client.post(reverse(CHANGELIST), action("reset_to_initial", chat, legacy))
    assert "cannot be stored" in confirm.text

    done = admin_client.post(
        reverse(CHANGELIST), action("reset_to_initial", chat, legacy, confirm=True)
    )

    assert any("Nothing was reset" in note for note in notes(done))
    assert Session.objects.get(pk=chat.pk).data == {"pizza_count": 9}
    assert Session.objects.get(pk=legacy.pk).data == {"span": [0, 0]}


def test_reset_of_an_unknown_bot_changes_nothing(admin_client: Client) -> None:
    known = make("chat:1", {"pizza_count": 9})
    unknown = make("chat:2", {"x": 1}, bot_id=999)

    for confirm in (False, True):
        response = admin_client.post(
            reverse(CHANGELIST), action("reset_to_initial", known, unknown, confirm=confirm)
        )
        assert response.status_code == 302
        assert any("Nothing was reset" in note and "bot 999" in note for note in notes(response))

    assert Session.objects.get(pk=known.pk).data == {"pizza_count": 9}
    assert Session.objects.get(pk=unknown.pk).data == {"x": 1}


def test_reset_across_all_pages_follows_the_filters(admin_client: Client) -> None:
    rows = [make(f"chat:{n}", {"pizza_count": 5}) for n in range(60)]  # more than a page
    user = make("user:1", {"messages": 5}, fragment="user")
    query = "?fragment=chat"

    confirm = admin_client.post(
        reverse(CHANGELIST) + query, action("reset_to_initial", *rows[:50], across=True)
    )
    assert "This gives 60 sessions" in confirm.text
    assert 'name="select_across" value="1"' in confirm.text

    admin_client.post(
        reverse(CHANGELIST) + query,
        action("reset_to_initial", *rows[:50], across=True, confirm=True),
    )

    assert all(
        data == {"pizza_count": 0}
        for data in Session.objects.filter(fragment="chat").values_list("data", flat=True)
    )
    assert Session.objects.get(pk=user.pk).data == {"messages": 5}


def test_delete_action_asks_first_then_deletes(admin_client: Client) -> None:
    doomed = [make(f"chat:{n}") for n in range(3)]
    kept = make("chat:9")

    confirm = admin_client.post(reverse(CHANGELIST), action("delete_selected_sessions", *doomed))
    assert confirm.status_code == 200
    assert "This deletes 3 sessions" in confirm.text
    assert Session.objects.count() == 4

    done = admin_client.post(
        reverse(CHANGELIST), action("delete_selected_sessions", *doomed, confirm=True)
    )

    assert notes(done) == ["Deleted 3 sessions."]
    assert list(Session.objects.values_list("pk", flat=True)) == [kept.pk]


def test_djangos_row_loading_delete_action_is_replaced(admin_client: Client) -> None:
    make()
    page = admin_client.get(reverse(CHANGELIST)).text
    assert 'value="delete_selected_sessions"' in page
    assert 'value="reset_to_initial"' in page
    assert 'value="delete_selected"' not in page


def test_reset_button_on_the_detail_page(admin_client: Client) -> None:
    row = make(data={"pizza_count": 9})

    page = admin_client.get(change_url(row)).text
    assert f'href="{reset_url(row)}"' in page

    confirm = admin_client.get(reset_url(row))
    assert confirm.status_code == 200
    assert "This gives 1 session its bot" in confirm.text
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 9}

    done = admin_client.post(reset_url(row), {"post": "yes"})

    assert done.status_code == 302 and done["Location"] == change_url(row)
    assert notes(done) == ["Reset 1 session to its initial data."]
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 0}


def test_reset_button_of_an_unknown_bot_reports_and_changes_nothing(admin_client: Client) -> None:
    row = make(data={"x": 1}, bot_id=999)

    for response in (
        admin_client.get(reset_url(row)),
        admin_client.post(reset_url(row), {"post": "yes"}),
    ):
        assert response.status_code == 302
        assert any("Nothing was reset" in note for note in notes(response))

    assert Session.objects.get(pk=row.pk).data == {"x": 1}


def test_reset_button_that_deletes_returns_to_the_list(
    admin_client: Client, more_bots: None
) -> None:
    row = make("chat:1", {"text": "x"}, bot_id=NOTES_ID, fragment="draft")

    done = admin_client.post(reset_url(row), {"post": "yes"})

    assert done["Location"] == reverse(CHANGELIST)
    assert not Session.objects.filter(pk=row.pk).exists()


def test_delete_button_on_the_detail_page_asks_first(admin_client: Client) -> None:
    row = make()
    delete = reverse("admin:botsessions_session_delete", args=[row.pk])

    assert f'href="{delete}"' in admin_client.get(change_url(row)).text
    assert "Are you sure" in admin_client.get(delete).text
    admin_client.post(delete, {"post": "yes"})

    assert not Session.objects.exists()


# -- permissions ----------------------------------------------------------------------------


def test_a_view_only_user_can_browse_but_not_act() -> None:
    row = make(data={"pizza_count": 9})
    viewer = staff("view_session")

    listing = viewer.get(reverse(CHANGELIST))
    detail = viewer.get(change_url(row))

    assert listing.status_code == 200 and f"chat:{CHAT}" in listing.text
    assert 'name="action"' not in listing.text
    assert detail.status_code == 200
    assert "&quot;pizza_count&quot;: 9" in detail.text and "<textarea" not in detail.text
    assert "Reset to initial data" not in detail.text
    assert 'class="deletelink"' not in detail.text

    refused = [
        viewer.post(reverse(CHANGELIST), action("reset_to_initial", row)),
        viewer.post(reverse(CHANGELIST), action("reset_to_initial", row, confirm=True)),
        viewer.post(reverse(CHANGELIST), action("delete_selected_sessions", row, confirm=True)),
        viewer.post(reverse(CHANGELIST), action("delete_selected", row, confirm=True)),
        viewer.post(change_url(row), {"data": "{}", "loaded_revision": row.revision}),
        viewer.get(reset_url(row)),
        viewer.post(reset_url(row), {"post": "yes"}),
        viewer.post(reverse("admin:botsessions_session_delete", args=[row.pk]), {"post": "yes"}),
    ]

    assert [response.status_code for response in refused] == [403] * len(refused)
    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"pizza_count": 9}, row.revision)


def test_reset_needs_change_permission_and_delete_needs_delete_permission() -> None:
    row = make(data={"pizza_count": 9})
    changer = staff("view_session", "change_session")
    deleter = staff("view_session", "delete_session")

    changer_page = changer.get(reverse(CHANGELIST)).text
    deleter_page = deleter.get(reverse(CHANGELIST)).text
    assert 'value="reset_to_initial"' in changer_page
    assert 'value="delete_selected_sessions"' not in changer_page
    assert 'value="delete_selected_sessions"' in deleter_page
    assert 'value="reset_to_initial"' not in deleter_page
    assert "Reset to initial data" not in deleter.get(change_url(row)).text
    assert deleter.get(reset_url(row)).status_code == 403

    assert (
        changer.post(
            reverse(CHANGELIST), action("delete_selected_sessions", row, confirm=True)
        ).status_code
        == 403
    )
    assert (
        deleter.post(
            reverse(CHANGELIST), action("reset_to_initial", row, confirm=True)
        ).status_code
        == 403
    )
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 9}

    changer.post(reverse(CHANGELIST), action("reset_to_initial", row, confirm=True))
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 0}
    deleter.post(reverse(CHANGELIST), action("delete_selected_sessions", row, confirm=True))
    assert not Session.objects.exists()


# -- batches ------------------------------------------------------------------------------


@pytest.fixture
def many_rows() -> int:
    now = timezone.now()
    rows = [
        Session(
            bot_id=BOT_ID,
            fragment="chat" if n % 3 else "user",
            key=f"chat:{n}",
            data={"pizza_count": n},
            updated_at=now,
            created_at=now,
        )
        for n in range(3000)
    ]
    Session.objects.bulk_create(rows, batch_size=500)
    return len(rows)


class RowCounter:
    """Counts model instances built from query results: a batch job should build none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built = 0
        original = Session.from_db.__func__  # type: ignore[attr-defined]

        def from_db(cls: type[Session], *args: Any) -> Session:
            self.built += 1
            return original(cls, *args)

        monkeypatch.setattr(Session, "from_db", classmethod(from_db))


def row_reads(queries: CaptureQueriesContext) -> list[str]:
    table = Session._meta.db_table
    return [
        q["sql"]
        for q in queries
        if q["sql"].upper().startswith("SELECT")
        and table in q["sql"]
        and "DISTINCT" not in q["sql"]
    ]


def test_bulk_reset_works_in_batches(
    many_rows: int, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BOTSESSIONS_ADMIN_BATCH_SIZE = 250
    counter = RowCounter(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        result = maintenance.reset_sessions(Session.objects.all())

    assert (result.reset, result.deleted, result.skipped) == (many_rows, 0, 0)
    assert counter.built == 0
    reads = row_reads(queries)
    assert 12 <= len(reads) <= 13
    assert all("LIMIT 250" in sql.upper() for sql in reads), reads
    writes = [q["sql"] for q in queries if q["sql"].upper().startswith("UPDATE")]
    assert len(writes) == 24  # one per fragment per batch
    assert set(Session.objects.filter(fragment="chat").values_list("revision", flat=True)) == {2}
    assert not Session.objects.filter(fragment="user").exclude(data={"messages": 0}).exists()


def test_bulk_delete_works_in_batches(
    many_rows: int, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BOTSESSIONS_ADMIN_BATCH_SIZE = 400
    counter = RowCounter(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        deleted = maintenance.delete_sessions(Session.objects.filter(fragment="chat"))

    assert deleted == 2000
    assert counter.built == 0
    assert all("LIMIT 400" in sql.upper() for sql in row_reads(queries))
    deletes = [q["sql"] for q in queries if q["sql"].upper().startswith("DELETE")]
    assert len(deletes) == 5
    assert Session.objects.count() == 1000


def test_admin_actions_across_thousands_of_rows_use_the_batches(
    admin_client: Client, many_rows: int, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BOTSESSIONS_ADMIN_BATCH_SIZE = 300
    page = list(Session.objects.order_by("-updated_at", "-pk")[:50])
    counter = RowCounter(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        reset = admin_client.post(
            reverse(CHANGELIST), action("reset_to_initial", *page, across=True, confirm=True)
        )
        deleted = admin_client.post(
            reverse(CHANGELIST) + "?fragment=user",
            action("delete_selected_sessions", *page, across=True, confirm=True),
        )

    assert notes(reset) == [f"Reset {many_rows} sessions to their initial data."]
    assert notes(deleted)[-1] == "Deleted 1000 sessions."
    assert counter.built <= 2 * 50  # the changelist pages themselves, nothing more
    assert sum("LIMIT 300" in sql.upper() for sql in row_reads(queries)) >= 10 + 4
    assert Session.objects.count() == 2000


def test_maintenance_refuses_unknown_configuration_before_changing_anything() -> None:
    make("chat:1", {"pizza_count": 9})
    make("chat:2", {"x": 1}, bot_id=999, fragment="cart")

    with pytest.raises(maintenance.UnknownConfiguration, match="bot 999 / fragment 'cart'"):
        maintenance.reset_sessions(Session.objects.all())

    assert Session.objects.get(key="chat:1").data == {"pizza_count": 9}
    skipped = maintenance.reset_sessions(Session.objects.all(), check_configuration=False)
    assert (skipped.reset, skipped.skipped, skipped.skipped_fragments) == (1, 1, {(999, "cart")})


# -- the query plan ---------------------------------------------------------------------------


def _updated_at_index() -> str:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Session._meta.db_table)
    return next(
        name
        for name, info in constraints.items()
        if info["index"] and info["columns"] == ["updated_at"]
    )


def _fill(rows: int) -> None:
    """``rows`` sessions, one second apart; MariaDB's sequence engine makes a lot quickly."""
    if connection.vendor == "mysql":
        q = connection.ops.quote_name
        columns = ", ".join(
            q(name)
            for name in (
                "bot_id",
                "fragment",
                "key",
                "data",
                "revision",
                "created_at",
                "updated_at",
            )
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {q(Session._meta.db_table)} ({columns}) "
                f"SELECT %s, 'chat', CONCAT('chat:', seq), CONCAT('{{\"n\":', seq, '}}'), 1, "
                f"UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) - INTERVAL seq SECOND FROM seq_1_to_{rows}",
                [BOT_ID],
            )
        return
    now = timezone.now()
    Session.objects.bulk_create(
        (
            Session(
                bot_id=BOT_ID,
                fragment="chat",
                key=f"chat:{n}",
                data={"n": n},
                updated_at=now - timedelta(seconds=n),
                created_at=now,
            )
            for n in range(rows)
        ),
        batch_size=5000,
    )


@pytest.mark.django_db(transaction=True)  # MySQL's ANALYZE TABLE commits
def test_the_list_query_walks_the_updated_at_index(admin_client: Client, rf: Any) -> None:
    # With fresh statistics MariaDB takes the index from about 10,000 rows on; below that
    # a full scan and filesort is cheaper, and it rightly says so.
    rows = 20_000 if connection.vendor == "mysql" else 5_000
    _fill(rows)
    table = connection.ops.quote_name(Session._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {table}")
        elif connection.vendor == "mysql":
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
        elif connection.vendor == "sqlite":
            cursor.execute("ANALYZE")
    request = rf.get(reverse(CHANGELIST))
    request.user = User.objects.get(username="admin")
    changelist = admin.site._registry[Session].get_changelist_instance(request)

    plan = changelist.result_list.explain()
    index = _updated_at_index()
    print(f"\n{connection.vendor}, {rows} rows, plan of the changelist page:\n{plan}")

    if connection.vendor == "sqlite":
        assert f"SCAN {Session._meta.db_table} USING INDEX {index}" in plan
        assert "TEMP B-TREE" not in plan.upper()
    elif connection.vendor == "postgresql":
        assert f"Index Scan Backward using {index}" in plan
        assert "Seq Scan" not in plan
    elif connection.vendor == "mysql":
        assert index in plan and "filesort" not in plan
    else:
        pytest.skip(f"no query-plan expectation for {connection.vendor}")


# -- the read-only exactly-once records --------------------------------------------------------


def test_processed_updates_are_view_only(admin_client: Client) -> None:
    record = ProcessedUpdate.objects.create(bot_id=BOT_ID, update_id=4711)
    change = reverse("admin:botsessions_processedupdate_change", args=[record.pk])

    listing = admin_client.get(reverse("admin:botsessions_processedupdate_changelist"))
    detail = admin_client.get(change)

    assert listing.status_code == 200 and "4711" in listing.text
    assert 'name="action"' not in listing.text
    assert detail.status_code == 200 and 'name="_save"' not in detail.text
    assert admin_client.get(reverse("admin:botsessions_processedupdate_add")).status_code == 403
    assert admin_client.post(change, {"update_id": 1}).status_code == 403
    delete = reverse("admin:botsessions_processedupdate_delete", args=[record.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert ProcessedUpdate.objects.get().update_id == 4711


# -- finding a bot's configuration ------------------------------------------------------------


def test_sessions_for_bot_id_builds_each_bot_once(
    more_bots: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = bots.build_application

    def counting(alias: str) -> Any:
        built.append(alias)
        return original(alias)

    monkeypatch.setattr(bots, "build_application", counting)

    assert bots.sessions_for_bot_id(BOT_ID).fragments.keys() == {"chat", "user"}
    assert bots.sessions_for_bot_id(SHOP_ID).fragments.keys() == {""}
    assert bots.sessions_for_bot_id(1) is None
    assert sorted(built) == ["default", "notes", "shop"]


def test_a_bot_that_cannot_be_built_here_is_unknown(settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "elsewhere": {"APPLICATION": "tests.test_admin.build_unavailable_application"},
        "missing": {"APPLICATION": "tests.no_such_module.build"},
    }

    assert bots.sessions_for_bot_id(BOT_ID) is not None
    assert set(bots.session_configs()) == {BOT_ID}


def test_changing_the_settings_forgets_the_bots(settings: Any) -> None:
    assert bots.sessions_for_bot_id(BOT_ID) is not None
    settings.BOTSESSIONS_BOTS = {}
    assert bots.sessions_for_bot_id(BOT_ID) is None


# -- keys: exact in the table, found whatever their case, described with their prefix ---

PREFIXED_ID = 888888


def build_prefixed_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions(prefix="pizza:")
    return use_sessions(
        ApplicationBuilder().token(f"{PREFIXED_ID}:prefixed-token"), sessions
    ).build()


def test_keys_differing_only_by_case_or_trailing_spaces_are_different_rows() -> None:
    """Migration 0002 gives MySQL/MariaDB an exact collation; the others are exact."""
    for key in ("pizza:Margherita", "pizza:margherita", "pizza:margherita "):
        make(key)
    assert Session.objects.count() == 3
    assert Session.objects.get(key="pizza:margherita").key == "pizza:margherita"
    assert Session.objects.filter(key="pizza:margherita ").count() == 1


def test_search_ignores_case_even_where_keys_compare_exactly(admin_client: Client) -> None:
    for key in ("pizza:Margherita", "pizza:margherita", "pizza:margherita "):
        make(key)
    every = sorted(["pizza:Margherita", "pizza:margherita", "pizza:margherita "])
    assert search(admin_client, "PIZZA:MARGHERITA") == every
    assert search(admin_client, "margherita") == every


def test_search_by_chat_id_finds_business_and_guest_keys_of_it(admin_client: Client) -> None:
    make(f"business:wLq9Tr2V:chat:{CHAT}")
    make(f"guest:chat:{CHAT}:user:111")
    make(f"guest:chat:{CHAT}9")
    assert search(admin_client, str(CHAT)) == sorted(
        [f"business:wLq9Tr2V:chat:{CHAT}", f"guest:chat:{CHAT}:user:111"]
    )
    assert search(admin_client, "WLQ9TR2V") == [f"business:wLq9Tr2V:chat:{CHAT}"]


def test_the_list_describes_business_guest_and_prefixed_keys(
    admin_client: Client, settings: Any
) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "prefixed": {"APPLICATION": "tests.test_admin.build_prefixed_application"},
    }
    make(f"business:wLq9Tr2V:chat:{CHAT}")
    make(f"guest:chat:{CHAT}:user:111")
    make(f"pizza:chat:{CHAT}:topic:7", bot_id=PREFIXED_ID, fragment="")
    page = admin_client.get(reverse(CHANGELIST)).text
    assert f"business chat {CHAT} via connection wLq9Tr2V" in page
    assert f"user 111 in guest chat {CHAT}" in page
    assert f"topic 7 of chat {CHAT}" in page


HYPHENATED_ID = 878787


def build_hyphenated_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions.multi(
        chat=Fragment(prefix="session-"), user=Fragment(prefix="session-", key=per_user)
    )
    return use_sessions(
        ApplicationBuilder().token(f"{HYPHENATED_ID}:hyphenated-token"), sessions
    ).build()


def test_search_by_id_finds_keys_whose_prefix_ends_without_a_colon(
    admin_client: Client, settings: Any
) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "hyphenated": {"APPLICATION": "tests.test_admin.build_hyphenated_application"},
    }
    make(f"session-chat:{CHAT}", bot_id=HYPHENATED_ID, fragment="chat")
    make("session-user:111", bot_id=HYPHENATED_ID, fragment="user")
    make(f"other-chat:{CHAT}")  # no configured fragment has this prefix
    assert search(admin_client, str(CHAT)) == [f"session-chat:{CHAT}"]
    assert search(admin_client, "111") == ["session-user:111"]


# -- whatever a staff user types, no 500 -----------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"a": "\\ud800"}', "lone surrogate (\\ud800)"),
        ('{"\\udfff": 1}', "lone surrogate (\\udfff)"),
        ('{"a": "x\\u0000y"}', "NUL character"),
        ('{"a": ' + "9" * 5000 + "}", "more than 4,300 digits"),
        ('{"a": 1e400}', "NaN, Infinity and numbers too large for a float"),
        (nested(100_000), "nested more than 31 levels deep"),
        (nested(32), "nested more than 31 levels deep"),
        ('{"a": "' + "x" * (1024 * 1024) + '"}', "larger than 1,048,576 bytes"),
        ('{"a": "' + "é" * (512 * 1024) + '"}', "larger than 1,048,576 bytes"),
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "nul",
        "5000-digits",
        "float-overflow",
        "100000-deep",
        "32-deep",
        "over-1-MiB",
        "over-1-MiB-in-UTF-8",
    ],
)
def test_data_no_database_stores_is_a_form_error(
    admin_client: Client, text: str, error: str
) -> None:
    row = make(data={"pizza_count": 3})

    response = admin_client.post(change_url(row), {"data": text, "loaded_revision": row.revision})

    assert response.status_code == 200
    assert error in response.text
    assert "errornote" in response.text
    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"pizza_count": 3}, row.revision)
    assert admin_client.get(reverse(CHANGELIST)).status_code == 200
    assert admin_client.get(change_url(row)).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        json.loads(nested(31)),
        {"n": int("9" * 4300), "m": -(2**63), "f": 1e15, "tiny": 5e-324, "g": -2.5e-300},
        {"text": '🍕 \t\n\u2028 \\ " é ß', "": [None, True, False, 0, -0.0, 1.5]},
    ],
    ids=["31-deep", "numbers", "text"],
)
def test_data_every_database_gives_back_is_saved(admin_client: Client, value: Any) -> None:
    row = make(data={"pizza_count": 3})

    response = admin_client.post(
        change_url(row), {"data": json.dumps(value), "loaded_revision": row.revision}
    )

    assert response.status_code == 302, response.text
    stored = Session.objects.get(pk=row.pk)
    assert stored.data == value and stored.revision == row.revision + 1
    assert admin_client.get(change_url(row)).status_code == 200


def test_a_float_the_database_would_change_is_refused_there(admin_client: Client) -> None:
    """PostgreSQL keeps a JSON number as a decimal: 1e+23 comes back as the integer
    100000000000000000000000, which is not the float 1e23. Elsewhere it is stored as
    written."""
    row = make(data={"pizza_count": 3})

    response = admin_client.post(
        change_url(row), {"data": '{"big": 1e23}', "loaded_revision": row.revision}
    )

    if connection.vendor == "postgresql":
        assert response.status_code == 200
        assert (
            "$.big would read back as 100000000000000000000000 instead of 1e+23" in response.text
        )
        assert Session.objects.get(pk=row.pk).data == {"pizza_count": 3}
    else:
        assert response.status_code == 302
        assert Session.objects.get(pk=row.pk).data == {"big": 1e23}


def test_a_form_error_shows_the_text_as_typed(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})
    typed = '{"a": ' + "7" * 5000 + "}"

    response = admin_client.post(change_url(row), {"data": typed, "loaded_revision": row.revision})

    assert html.escape(typed) in response.text


# Rows the admin's edit form refuses, as other code may have stored them (or as this
# admin stored them before it checked). Each database keeps a different subset.
STORED_BEFORE = {
    "surrogate": '{"a": "\\ud800 and \\udfff"}',
    "5000-digits": '{"a": ' + "9" * 5000 + "}",
    "deep": nested(5000),
    "32-deep": nested(32),
    "nul": '{"a": "x\\u0000y"}',
}


def store_raw(key: str, text: str) -> bool:
    """Store JSON text as it is, if this database takes it at all."""
    try:
        with transaction.atomic():
            engine_write(key, text)
    except Exception:
        return False
    return True


def test_every_page_shows_rows_no_longer_accepted(admin_client: Client) -> None:
    stored = {
        name: store_raw(f"chat:{n}", text) for n, (name, text) in enumerate(STORED_BEFORE.items())
    }
    rows = {row.key: row for row in Session.objects.only("pk", "key")}
    viewer = staff("view_session")

    listing = admin_client.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert len(listed_keys(listing)) == sum(stored.values())
    assert viewer.get(reverse(CHANGELIST)).status_code == 200
    for n, name in enumerate(STORED_BEFORE):
        if not stored[name]:
            continue
        row = rows[f"chat:{n}"]
        for client in (admin_client, viewer):
            page = client.get(change_url(row))
            assert page.status_code == 200, name
        assert admin_client.get(reset_url(row)).status_code == 200
        assert (
            admin_client.get(
                reverse("admin:botsessions_session_delete", args=[row.pk])
            ).status_code
            == 200
        )
        assert (
            admin_client.get(
                reverse("admin:botsessions_session_history", args=[row.pk])
            ).status_code
            == 200
        )
    if stored["surrogate"]:  # SQLite keeps the escape
        page = admin_client.get(change_url(rows["chat:0"])).text
        assert "\\ud800 and \\udfff" in page
    if stored["5000-digits"]:  # shown as stored, and saving it as it is is refused
        row = rows["chat:1"]
        assert "9" * 5000 in admin_client.get(change_url(row)).text
        saved = admin_client.post(
            change_url(row), {"data": STORED_BEFORE["5000-digits"], "loaded_revision": 1}
        )
        assert "more than 4,300 digits" in saved.text


def test_a_row_shown_as_stored_can_be_fixed(admin_client: Client) -> None:
    assert store_raw("chat:1", '{"a": ' + "9" * 5000 + "}")
    row = Session.objects.only("pk").get()

    response = admin_client.post(change_url(row), {"data": '{"a": 9}', "loaded_revision": 1})

    assert response.status_code == 302
    assert Session.objects.get(pk=row.pk).data == {"a": 9}


def searches(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "botsessions_session" in q["sql"]]


def test_a_search_of_a_thousand_numbers_uses_ten_and_says_so(admin_client: Client) -> None:
    make(f"chat:{CHAT}", {"n": 1})
    numbers = " ".join(str(CHAT) for _ in range(1000))

    with CaptureQueriesContext(connection) as thousand:
        response = admin_client.get(reverse(CHANGELIST), {"q": numbers})
    with CaptureQueriesContext(connection) as ten:
        admin_client.get(reverse(CHANGELIST), {"q": " ".join(numbers.split()[:10])})

    assert response.status_code == 200
    assert searches(thousand) == searches(ten)  # the same statements: no slower
    assert listed_keys(response) == [f"chat:{CHAT}"]
    assert "A search uses its first 10 words" in response.text


def test_words_past_the_tenth_are_left_out(admin_client: Client) -> None:
    make("chat:1", {"text": "one two three four five six seven eight nine ten"})
    words = "one two three four five six seven eight nine ten eleven"
    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"q": words})) == ["chat:1"]
    assert listed_keys(admin_client.get(reverse(CHANGELIST), {"q": words[4:]})) == []


def test_a_search_word_is_cut_to_the_length_of_a_key(admin_client: Client) -> None:
    make("chat:1", {"text": "x" * 300})
    response = admin_client.get(reverse(CHANGELIST), {"q": "x" * 100_000})
    assert listed_keys(response) == ["chat:1"]
    assert "at most 255 characters of each" in response.text


def test_a_search_with_a_nul_character_is_refused_by_django(admin_client: Client) -> None:
    make("chat:1", {"text": "ab"})
    response = admin_client.get(reverse(CHANGELIST), {"q": "a\x00b"})
    assert response.status_code == 200
    assert "Null characters are not allowed" in response.text


OBJECT_VIEWS = ["change", "delete", "history", "reset"]


@pytest.mark.parametrize("view", OBJECT_VIEWS)
@pytest.mark.parametrize("codenames", [(), ("view_session",)], ids=["no-permission", "view-only"])
def test_a_user_without_permission_learns_nothing_of_which_ids_exist(
    view: str, codenames: tuple[str, ...]
) -> None:
    row = make()
    user = staff(*codenames)
    may_view = "view_session" in codenames and view in ("change", "history")
    for object_id in (row.pk, row.pk + 1000, "nope", "9" * 30):
        url = reverse(f"admin:botsessions_session_{view}", args=[object_id])
        response = user.get(url)
        if may_view and str(object_id) == str(row.pk):
            assert response.status_code == 200
        elif may_view:  # a viewer may learn that a row is gone, as Django tells them
            assert response.status_code == 302
        else:
            assert response.status_code == 403, (url, response.status_code)
        if view in ("delete", "reset"):
            assert user.post(url, {"post": "yes"}).status_code == 403
    assert Session.objects.filter(pk=row.pk).exists()


# -- edits keep a session alive -------------------------------------------------------------


def test_an_edit_of_an_expired_session_gives_it_the_fragments_ttl_again(
    admin_client: Client, more_bots: None
) -> None:
    row = make("chat:1", {"cart": []}, bot_id=SHOP_ID, fragment="")
    Session.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(minutes=5))

    response = admin_client.post(
        change_url(row), {"data": '{"cart": ["tea"]}', "loaded_revision": row.revision}
    )

    assert response.status_code == 302
    stored = Session.objects.get(pk=row.pk)
    assert stored.data == {"cart": ["tea"]} and not stored.is_expired  # the bot reads it
    assert stored.expires_at is not None
    assert timedelta(minutes=59) < stored.expires_at - timezone.now() <= timedelta(hours=1)


def test_an_edit_gives_the_expiry_the_bots_write_would(admin_client: Client) -> None:
    row = make("chat:1", {"pizza_count": 3}, expires_at=timezone.now() - timedelta(days=1))

    admin_client.post(change_url(row), {"data": '{"pizza_count": 4}', "loaded_revision": 1})

    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.expires_at) == ({"pizza_count": 4}, None)  # no ttl: none


def test_an_edit_of_an_expired_session_of_an_unknown_bot_says_the_bot_will_ignore_it(
    admin_client: Client,
) -> None:
    expired = timezone.now() - timedelta(days=1)
    row = make("chat:1", {"x": 1}, bot_id=999, expires_at=expired)

    response = admin_client.post(change_url(row), {"data": '{"x": 2}', "loaded_revision": 1})

    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.expires_at) == ({"x": 2}, expired)
    assert any("the bot will ignore the edit" in note for note in notes(response))


# -- an initial that fails -------------------------------------------------------------------

BROKEN_ID = 313131


def failing_initial() -> dict[str, Any]:
    raise RuntimeError("the menu service is down")


async def failing_async_initial() -> dict[str, Any]:
    raise KeyError("lang")


class ExplodingSerializer(JSONSerializer):
    """A serializer of a project's own that fails with an error of its own."""

    def dumps(self, value: Any) -> str:
        raise LookupError("no codec for sessions")


def build_broken_application() -> Application:  # type: ignore[type-arg]
    sessions = Sessions.multi(
        menu=Fragment(initial=failing_initial),
        prefs=Fragment(initial=failing_async_initial),
        codec=Fragment(initial=lambda: {"n": 0}, serializer=ExplodingSerializer()),
    )
    return use_sessions(ApplicationBuilder().token(f"{BROKEN_ID}:broken-token"), sessions).build()


@pytest.fixture
def broken_bot(settings: Any) -> None:
    settings.BOTSESSIONS_BOTS = {
        **settings.BOTSESSIONS_BOTS,
        "broken": {"APPLICATION": "tests.test_admin.build_broken_application"},
    }


@pytest.mark.parametrize(
    ("fragment", "error"),
    [
        ("menu", "could not be made: RuntimeError: the menu service is down"),
        ("prefs", "could not be made: KeyError: &#x27;lang&#x27;"),
        ("codec", "cannot be stored: LookupError: no codec for sessions"),
    ],
)
def test_an_initial_that_fails_is_a_message_and_resets_nothing(
    admin_client: Client, broken_bot: None, fragment: str, error: str
) -> None:
    row = make("chat:1", {"n": 5}, bot_id=BROKEN_ID, fragment=fragment)
    other = make("chat:2", {"pizza_count": 9})

    button = admin_client.get(reset_url(row))
    button_post = admin_client.post(reset_url(row), {"post": "yes"}, follow=True)
    confirm = admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row, other))
    done = admin_client.post(
        reverse(CHANGELIST), action("reset_to_initial", row, other, confirm=True), follow=True
    )

    assert button.status_code == 200 and error in button.text
    assert confirm.status_code == 200 and error in confirm.text
    for response in (button_post, done):
        assert response.status_code == 200
        assert "Nothing was reset: the bot&#x27;s initial data" in response.text
        assert error in response.text
    assert Session.objects.get(pk=row.pk).data == {"n": 5}
    assert Session.objects.get(pk=other.pk).data == {"pizza_count": 9}


def test_maintenance_reports_a_failing_initial_as_session_data_error(broken_bot: None) -> None:
    make("chat:1", {"n": 5}, bot_id=BROKEN_ID, fragment="menu")

    with pytest.raises(SessionDataError, match="initial data could not be made: RuntimeError"):
        maintenance.reset_sessions(Session.objects.all())


# -- the list takes only its own filters ----------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "key__regex=(",
        "fragment__regex=[",
        "created_at__year=99999999999",
        "data__contains=x",
        "key=a%00b",
        "data__icontains=%00",
        "key=chat:1",  # a lookup the database would run: still not this list's filter
        "revision__gt=0",
        "bot_id__in=1,2",
    ],
)
def test_lookups_other_than_the_filters_fall_back_to_the_plain_list(
    admin_client: Client, query: str
) -> None:
    make("chat:1")

    response = admin_client.get(f"{reverse(CHANGELIST)}?{query}")

    assert response.status_code == 302
    assert response["Location"] == f"{reverse(CHANGELIST)}?e=1"


def test_the_exactly_once_records_take_no_lookups_either(admin_client: Client) -> None:
    url = reverse("admin:botsessions_processedupdate_changelist")
    for query in ("update_id__regex=(", "processed_at__year=99999999999", "bot_id=1"):
        response = admin_client.get(f"{url}?{query}")
        assert response.status_code == 302 and response["Location"] == f"{url}?e=1"


def test_the_filters_search_sorting_and_paging_still_work_together(admin_client: Client) -> None:
    make("chat:1", {"pizza_count": 3}, version=Decimal(2))
    make("user:1", {"messages": 1}, fragment="user")

    query = {"bot_id": BOT_ID, "fragment": "chat", "status": "active", "version": "2"}
    response = admin_client.get(reverse(CHANGELIST), {**query, "q": "pizza", "o": "1", "p": "1"})

    assert response.status_code == 200
    assert listed_keys(response) == ["chat:1"]


# -- tampered selections ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "9" * 40, "-1", "0", "1.5", "", " 1", "١"])
@pytest.mark.parametrize("name", ["reset_to_initial", "delete_selected_sessions"])
@pytest.mark.parametrize("confirm", [False, True], ids=["asking", "confirmed"])
def test_a_selection_that_is_not_ids_changes_nothing(
    admin_client: Client, value: str, name: str, confirm: bool
) -> None:
    row = make("chat:1", {"pizza_count": 9})
    data = action(name, row, confirm=confirm)
    data["_selected_action"] = [row.pk, value]

    response = admin_client.post(reverse(CHANGELIST), data)

    assert response.status_code == 302
    assert notes(response) == ["Nothing was done: the selection was not one of this list's."]
    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"pizza_count": 9}, row.revision)


def test_a_selection_of_ids_no_row_has_does_nothing(admin_client: Client) -> None:
    row = make("chat:1", {"pizza_count": 9})
    data = action("delete_selected_sessions", row, confirm=True)
    data["_selected_action"] = [str(2**63 - 1)]

    response = admin_client.post(reverse(CHANGELIST), data)

    assert response.status_code == 302
    assert notes(response) == ["Deleted 0 sessions."]
    assert Session.objects.filter(pk=row.pk).exists()


# -- the admin's history ---------------------------------------------------------------------


def history(row: Session) -> list[tuple[int, str, str]]:
    entries = LogEntry.objects.filter(object_id=str(row.pk)).order_by("pk")
    return [(e.action_flag, e.object_repr, e.get_change_message()) for e in entries]


def test_resets_and_deletes_are_in_the_history(admin_client: Client, more_bots: None) -> None:
    chat = make("chat:1", {"pizza_count": 9})
    button = make("chat:2", {"pizza_count": 9})
    draft = make("chat:1", {"text": "x"}, bot_id=NOTES_ID, fragment="draft")  # initial None
    doomed = make("chat:3", {"pizza_count": 1})

    admin_client.post(reverse(CHANGELIST), action("reset_to_initial", chat, draft, confirm=True))
    admin_client.post(reset_url(button), {"post": "yes"})
    delete = action("delete_selected_sessions", doomed, confirm=True)
    admin_client.post(reverse(CHANGELIST), delete)

    assert history(chat) == [(CHANGE, "chat · chat 1", "Reset to its initial data.")]
    assert history(button) == [(CHANGE, "chat · chat 2", "Reset to its initial data.")]
    assert history(draft) == [
        (DELETION, "draft · chat 1", "Deleted by a reset: its initial data is None.")
    ]
    assert history(doomed) == [(DELETION, "chat · chat 3", "")]  # as Django's own delete
    page = admin_client.get(reverse("admin:botsessions_session_history", args=[chat.pk]))
    assert "Reset to its initial data." in page.text


def test_history_on_another_database_is_written_once_the_batch_commits(
    admin_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A router that keeps the admin's history elsewhere: no entry for a batch whose
    changes could still roll back."""
    row = make("chat:1", {"pizza_count": 9})
    routed = router.db_for_write

    def history_elsewhere(model: Any, **hints: Any) -> str | None:
        return "elsewhere" if model is LogEntry else routed(model, **hints)

    monkeypatch.setattr(router, "db_for_write", history_elsewhere)
    with django_capture_on_commit_callbacks() as written_on_commit:
        admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row, confirm=True))
    assert history(row) == []
    monkeypatch.undo()
    for write in written_on_commit:
        write()
    assert history(row) == [(CHANGE, "chat · chat 1", "Reset to its initial data.")]


def test_a_history_that_cannot_be_written_leaves_the_reset_done_and_answers(
    admin_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    row = make("chat:1", {"pizza_count": 9})
    routed = router.db_for_write

    def history_elsewhere(model: Any, **hints: Any) -> str | None:
        return "elsewhere" if model is LogEntry else routed(model, **hints)

    def locked(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(router, "db_for_write", history_elsewhere)
    monkeypatch.setattr(LogEntry.objects, "log_actions", locked)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse(CHANGELIST), action("reset_to_initial", row, confirm=True)
        )
    assert response.status_code == 302
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 0}
    assert "database is locked" in caplog.text


def test_a_reset_that_changes_nothing_writes_no_history(admin_client: Client) -> None:
    row = make("chat:1", {"x": 1}, bot_id=999)

    admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row, confirm=True))

    assert history(row) == []


# -- what could pass for something else is escaped -------------------------------------------


def test_bidi_and_control_characters_are_escaped_in_every_page(admin_client: Client) -> None:
    row = make("chat:1\u202egnp.exe", {"name": "a\u202eb", "esc": "\x1b[31m", "c1": "\x9b"})

    listed = admin_client.get(reverse(CHANGELIST)).text
    confirm = admin_client.post(reverse(CHANGELIST), action("reset_to_initial", row)).text
    detail = admin_client.get(change_url(row)).text

    for page in (listed, confirm):
        assert "\u202e" not in page and "\x1b" not in page and "\x9b" not in page
    checkboxes = re.findall(r'<input type="checkbox" name="_selected_action"[^>]*>', listed)
    assert checkboxes == [
        f'<input type="checkbox" name="_selected_action" value="{row.pk}" class="action-select"'
        ' aria-label="Select this object for an action - chat · chat:1\\u202egnp.exe">'
    ]  # the label escaped, and as Django's own: never checked
    for page in (listed, confirm, detail):
        assert "<code>chat:1\\u202egnp.exe</code>" in page
    for page in (listed, detail):
        assert "a\\u202eb" in page and "\\u001b[31m" in page and "\\u009b" in page
    # The page's title and breadcrumbs are the model's own str(), which is not the admin's.
    assert "\x1b" not in detail and "\x9b" not in detail


def test_an_edit_is_judged_by_the_database_it_is_written_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A primary/replica router: the round trip of an edit runs where the row is written
    (in the change form's transaction), never on the replica its reads go to."""
    row = make(data={"pizza_count": 3})
    reads = router.db_for_read

    def replica(model: Any, **hints: Any) -> str | None:
        return "replica" if model is Session else reads(model, **hints)

    monkeypatch.setattr(router, "db_for_read", replica)  # an alias that is not there
    form = session_admin.SessionDataForm(instance=row)
    form.check_database_round_trip({"pizza_count": 4})  # no error: the same data back
    monkeypatch.undo()
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 3}  # rolled back


def test_an_edit_shown_with_escapes_saves_the_same_data(admin_client: Client) -> None:
    row = make("chat:1", {"name": "a\u202eb"})
    form = admin_client.get(change_url(row)).context["adminform"].form

    text = form["data"].value()  # as the textarea shows it
    assert "\u202e" not in text and "\\u202e" in text
    admin_client.post(change_url(row), {"data": text, "loaded_revision": row.revision})

    stored = Session.objects.get(pk=row.pk)
    assert (stored.data, stored.revision) == ({"name": "a\u202eb"}, row.revision)  # unchanged


def test_data_that_fits_the_limit_is_shown_in_a_form_that_can_be_saved(
    admin_client: Client,
) -> None:
    """Indented, these 230 kB of nested lists would be 2 MB, over the 1 MiB an edit takes."""
    data = {
        "history": json.loads(nested(20).replace("[]", json.dumps(list(range(40_000))))),
        "ok": 0,
    }
    row = make("chat:1", data)
    form = admin_client.get(change_url(row)).context["adminform"].form

    text = form["data"].value()
    response = admin_client.post(
        change_url(row),
        {"data": text.replace('"ok":0', '"ok":1'), "loaded_revision": row.revision},
    )

    assert response.status_code == 302, response.text
    assert Session.objects.get(pk=row.pk).data == {**data, "ok": 1}


def test_a_textarea_sent_back_with_crlf_line_ends_is_measured_as_shown(
    admin_client: Client,
) -> None:
    """Shown indented, 92,000 numbers are just under 1 MiB; a browser sends the lines back
    ending in CR LF, 92,000 bytes more, which are no data."""
    data = {"n": list(range(92_000)), "ok": 0}
    row = make("chat:1", data)
    text = admin_client.get(change_url(row)).context["adminform"].form["data"].value()
    assert "\n" in text and len(text.encode()) < 1024 * 1024 < len(text.encode()) + 92_000

    posted = text.replace("\n", "\r\n").replace('"ok": 0', '"ok": 1')
    response = admin_client.post(change_url(row), {"data": posted, "loaded_revision": 1})

    assert response.status_code == 302, response.text
    assert Session.objects.get(pk=row.pk).data == {**data, "ok": 1}


# -- a busy database -------------------------------------------------------------------------


def edit_failing(
    client: Client, row: Session, error: Exception, data: str, loaded_revision: int
) -> Any:
    """Post an edit of ``row`` whose UPDATE statements fail with ``error``."""

    def failing(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE"):
            raise error
        return execute(sql, params, many, context)

    with connection.execute_wrapper(failing):
        return client.post(change_url(row), {"data": data, "loaded_revision": loaded_revision})


def test_an_edit_while_the_database_is_busy_says_so(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})
    error = OperationalError("database is locked")
    response = edit_failing(admin_client, row, error, '{"pizza_count": 0}', row.revision)

    assert response.status_code == 200
    assert "The database is busy" in response.text and "Try again" in response.text
    assert "refused this data" not in response.text
    assert "pizza_count&quot;: 0" in response.text  # what was typed is kept
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 3}


def test_a_busy_database_at_the_save_itself_is_a_message(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = make(data={"pizza_count": 3})
    monkeypatch.setattr(
        session_admin.SessionDataForm, "check_database_round_trip", lambda self, value: None
    )

    error = OperationalError("canceling statement due to lock timeout")
    response = edit_failing(admin_client, row, error, '{"pizza_count": 0}', row.revision)

    assert response.status_code == 302 and response["Location"] == change_url(row)
    assert any("The database is busy" in note for note in notes(response))
    assert Session.objects.get(pk=row.pk).data == {"pizza_count": 3}


def test_a_database_error_that_is_not_busy_still_blames_the_data(admin_client: Client) -> None:
    row = make(data={"pizza_count": 3})

    error = DataError("invalid input syntax for type json")
    response = edit_failing(admin_client, row, error, "{}", 1)

    assert "The database refused this data: invalid input syntax" in response.text


# -- search beyond ASCII ---------------------------------------------------------------------


def test_search_ignores_the_case_of_letters_beyond_ascii(
    admin_client: Client, searchable: None
) -> None:
    assert search(admin_client, "JÜRGEN") == ["chat:-100888", "chat:-100999"]
    assert search(admin_client, "jürgen") == ["chat:-100888", "chat:-100999"]
    found = search(admin_client, "Ü")
    if connection.vendor == "mysql":  # its collation ignores accents too: "u" matches
        assert {"chat:-100888", "chat:-100999"} <= set(found)
    else:
        assert found == ["chat:-100888", "chat:-100999"]


def test_a_sessions_name_in_titles_and_messages_escapes_bidi_and_control_characters():
    """The page title, breadcrumbs and "changed successfully" show the row's name."""
    name = str(Session(bot_id=1, fragment="menu\u202e", key="topic:\u202egpj.exe"))
    assert "\u202e" not in name and name.count("\\u202e") == 2


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("version", "'abc'"),
        ("version", "'NaN'"),
        ("version", "1e300"),
        ("expires_at", "'2026-13-45 00:00:00'"),
        ("expires_at", "'soon'"),
    ],
)
def test_every_page_shows_a_row_whose_bookkeeping_a_hand_edit_made_unreadable(
    admin_client: Client, column: str, text: str
) -> None:
    """SQLite keeps any value in any column: the row is shown with what it holds, and
    saving an edit gives it bookkeeping the bot can read."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("only SQLite keeps text in a numeric or datetime column")
    row = make("chat:500", {"pizza_count": 3})
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE botsessions_session SET {column} = {text} WHERE id = %s", [row.pk])
    viewer = staff("view_session")
    pages = [
        reverse(CHANGELIST),
        f"{reverse(CHANGELIST)}?q=500",
        change_url(row),
        reset_url(row),
        reverse("admin:botsessions_session_delete", args=[row.pk]),
        reverse("admin:botsessions_session_history", args=[row.pk]),
    ]
    for url in pages:
        assert admin_client.get(url).status_code == 200, url
    listing = viewer.get(reverse(CHANGELIST))
    assert listing.status_code == 200 and "unreadable" in listing.text
    assert viewer.get(change_url(row)).status_code == 200

    response = admin_client.post(
        change_url(row), {"data": '{"pizza_count": 4}', "loaded_revision": row.revision}
    )

    assert response.status_code == 302, response.text
    stored = Session.objects.get(pk=row.pk)  # readable again
    assert (stored.data, stored.version, stored.expires_at) == ({"pizza_count": 4}, None, None)
