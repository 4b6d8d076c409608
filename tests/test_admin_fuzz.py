"""Whatever a staff user types into the admin, it answers without a server error.

Hypothesis types JSON (and not quite JSON) into a session's edit form, puts anything in
the list's filters, paging and sorting parameters and in object URLs, and searches for
anything, on whichever database ``DATABASE_URL`` names. Each answer is a page, a form
error, a redirect or a 4xx; an edit that is saved reads back as it was typed; a search
for text a session holds finds that session.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from botsessions.admin import first_difference, printable
from botsessions.models import Session

from .test_admin import CHANGELIST, change_url, listed_keys, make

pytestmark = pytest.mark.django_db

fuzz_settings = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_keys = itertools.count()

# Text a browser can send: any Unicode but lone surrogates (a form is sent as UTF-8).
typed_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
# Text inside JSON may also hold what a browser cannot send raw: JSON escapes it.
json_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u2028", "🍕", "ß", 'q"\\/']),
)
numbers = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and the infinities included
    st.sampled_from([1e16, 1e23, 1.7976931348623157e308, 5e-324, -0.0, 0.1]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=10,
)


def deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@st.composite
def typed_json(draw: st.DrawFn) -> str:
    """What an operator might type: JSON in any layout, nested deep, or not JSON at all."""
    kind = draw(st.sampled_from(["value", "value", "value", "deep", "digits", "garbage"]))
    if kind == "garbage":
        return draw(typed_text)
    if kind == "digits":  # around the most digits Python reads as an integer (4,300)
        return '{"v": -' + "9" * draw(st.integers(4290, 4310)) + "}"
    value = {"v": draw(json_values)}
    if kind == "deep":
        value = deep(draw(st.integers(25, 40)), value)
    text = json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 2])),
        allow_nan=True,
    )
    return printable(text)  # a lone surrogate can only be sent as its JSON escape


@fuzz_settings
@given(text=typed_json())
def test_any_edit_is_saved_as_typed_or_refused_with_a_form_error(
    admin_client: Client, text: str
) -> None:
    row = make(f"chat:{next(_keys)}", {"pizza_count": 3})

    response = admin_client.post(change_url(row), {"data": text, "loaded_revision": 1})

    event(str(response.status_code))
    stored = Session.objects.get(pk=row.pk)
    if response.status_code == 302:
        expected = json.loads(text)
        assert first_difference(expected, stored.data) is None, (expected, stored.data)
        assert stored.revision == (1 if expected == {"pizza_count": 3} else 2)
    else:
        assert response.status_code == 200
        assert 'class="errorlist' in response.text
        assert (stored.data, stored.revision) == ({"pizza_count": 3}, 1)
    assert admin_client.get(change_url(row)).status_code == 200
    assert admin_client.get(reverse(CHANGELIST), {"q": row.key}).status_code == 200


query_values = st.one_of(
    typed_text,
    st.sampled_from(["NaN", "sNaN", "-Infinity", "1e999999999", "-0", "1_0", "١٢", "none"]),
    st.integers().map(str),
    st.integers(30, 5000).map(lambda digits: "9" * digits),
)
known_names = st.sampled_from(
    ["bot_id", "fragment", "version", "status", "q", "o", "p", "all", "e", "_to_field"]
)
any_name = st.text(
    st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=12
)
query_names = st.integers(0, 4).flatmap(lambda n: any_name if n == 0 else known_names)


@pytest.fixture
def nobody() -> Client:
    """A staff user without permissions."""
    client = Client()
    client.force_login(User.objects.create_user("nobody", is_staff=True))
    return client


@pytest.fixture
def some_rows() -> list[Session]:
    return [
        make("chat:1", {"order": "tea"}),
        make("user:2", {"n": 1}, fragment="user", age=1),
        make("custom-key", {"x": [1, 2]}, bot_id=42, fragment="", age=2),
    ]


@fuzz_settings
@given(params=st.lists(st.tuples(query_names, query_values), max_size=4))
def test_any_list_url_gets_a_page_a_redirect_or_a_4xx(
    admin_client: Client, some_rows: list[Session], params: list[tuple[str, str]]
) -> None:
    response = admin_client.get(f"{reverse(CHANGELIST)}?{urlencode(params)}")
    event(str(response.status_code))
    assert response.status_code in (200, 302, 400), response.status_code
    if response.status_code == 302:  # Django's "invalid lookup" page
        assert response["Location"].endswith("?e=1")


@fuzz_settings
@given(
    object_id=st.sampled_from(["row 0", "row 1", "row 2"])
    | query_values.filter(lambda text: text and "\x00" not in text),
    view=st.sampled_from(["change", "delete", "history", "reset"]),
)
def test_any_object_url_gets_a_page_a_redirect_or_a_4xx(
    admin_client: Client, nobody: Client, some_rows: list[Session], object_id: str, view: str
) -> None:
    """And a staff user without permissions gets the same 403 for every id."""
    if object_id.startswith("row "):
        object_id = str(some_rows[int(object_id[4:])].pk)
    url = f"{reverse(CHANGELIST)}{quote(object_id, safe='')}/{view}/"
    response = admin_client.get(url)
    event(str(response.status_code))
    assert response.status_code in (200, 302, 404), response.status_code
    refused = nobody.get(url).status_code
    assert refused == 403 or (refused == 404 and response.status_code == 404)


searchable_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=40
)


def _searchable(word: str) -> bool:
    """A word a search takes as it is: no spaces, no quotes (they group words)."""
    return not any(char.isspace() or char in "\"'" for char in word)


@fuzz_settings
@given(text=searchable_text, data=st.data())
def test_a_search_for_text_a_session_holds_finds_it(
    admin_client: Client, text: str, data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(text) - 1))
    word = text[start : start + data.draw(st.integers(1, 10))]
    if not _searchable(word):
        word = "".join(char for char in word if _searchable(char)) or "x"
        text += f" {word}"
    row = make(f"chat:{next(_keys)}", {"note": text, "list": [text]})

    response = admin_client.get(reverse(CHANGELIST), {"q": word})

    assert response.status_code == 200
    assert row.key in listed_keys(response), (text, word)
    row.delete()


@fuzz_settings
@given(q=st.one_of(typed_text, st.lists(typed_text, max_size=30).map(" ".join)))
def test_any_search_gets_a_page(admin_client: Client, some_rows: list[Session], q: str) -> None:
    response = admin_client.get(reverse(CHANGELIST), {"q": q})
    assert response.status_code == 200
