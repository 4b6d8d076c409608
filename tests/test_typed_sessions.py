"""Typed sessions: dataclass data on every storage, one call for both modes, the typed
context the PTB way, and the typed example bot."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import pytest
from telegram import Update
from telegram.ext import CallbackContext, ContextTypes, TypeHandler

from botsessions import (
    ConfigurationError,
    DataclassSerializer,
    Fragment,
    Lazy,
    SessionContext,
    SessionDataError,
    Sessions,
    per_user,
)
from botsessions.outcome import Outcome

from .updates import ALICE, BOB, message

BOT = 123456
pytestmark = pytest.mark.django_db


@dataclass
class Address:
    city: str = ""


@dataclass
class Profile:
    visits: int = 0
    tags: list[str] = field(default_factory=list)
    home: Address | None = None
    places: dict[str, Address] = field(default_factory=dict)


@dataclass
class Node:
    children: list[Node] = field(default_factory=list)


def every_update(callback: Any) -> TypeHandler[Any, Any]:
    return TypeHandler(Update, callback)


def test_dataclass_data_round_trips_and_only_changes_are_written(make_bot, probe):
    seen: list[Profile] = []

    async def handler(update: Update, context: SessionContext[Profile]) -> None:
        profile = context.session
        seen.append(profile)
        text = update.effective_message.text  # type: ignore[union-attr]
        if text == "visit":
            profile.visits += 1
        elif text == "move":
            profile.home = Address("Lisbon")
            profile.places["work"] = Address("Porto")
            profile.tags.append("moved")

    sessions = Sessions(
        initial=Profile, storage=probe.storage, serializer=DataclassSerializer(Profile)
    )
    bot = make_bot(sessions, [every_update(handler)])
    assert bot.process(message("visit")) == Outcome.COMMITTED
    assert bot.process(message("look")) == Outcome.UNCHANGED  # read, unchanged: no write
    assert probe.counts().writes == 1
    assert bot.process(message("move")) == Outcome.COMMITTED  # nested changes are changes
    assert bot.process(message("look")) == Outcome.UNCHANGED
    assert probe.counts().writes == 2
    assert seen[-1] == Profile(1, ["moved"], Address("Lisbon"), {"work": Address("Porto")})
    assert all(type(p) is Profile for p in seen)
    stored = json.loads(probe.stored_text(BOT, "", f"chat:{ALICE}"))
    assert stored == {
        "visits": 1,
        "tags": ["moved"],
        "home": {"city": "Lisbon"},
        "places": {"work": {"city": "Porto"}},
    }


def test_dataclass_serializer_refuses_what_would_not_come_back():
    serializer = DataclassSerializer(Profile)
    with pytest.raises(SessionDataError, match="must be a Profile"):
        serializer.dumps({"visits": 1})
    with pytest.raises(SessionDataError):
        serializer.dumps(Profile(tags=("a",)))  # type: ignore[arg-type]  # a tuple
    with pytest.raises(TypeError):  # stored by a newer class: refused, not dropped
        serializer.loads('{"visits": 1, "renamed": 2}')
    assert serializer.loads('{"visits": 2}') == Profile(visits=2)  # new fields: defaults
    with pytest.raises(ConfigurationError):
        DataclassSerializer(dict)


def refused_when_written(make_bot: Any, probe: Any, cls: type, change: Any) -> str:
    """The error of a handler whose change to a ``cls`` session is refused when written:
    the handler failed, and nothing was stored."""
    sessions = Sessions(storage=probe.storage, initial=cls, serializer=DataclassSerializer(cls))
    bot = make_bot(sessions, [every_update(change)])
    assert bot.process(message("x")) == Outcome.HANDLER_FAILED
    assert probe.stored_text(BOT, "", f"chat:{ALICE}") is None
    return str(bot.errors[0])


def test_a_dataclass_whose_field_types_do_not_resolve_is_never_written(make_bot, probe):
    """Defined in a function under ``from __future__ import annotations``, its field
    types cannot be resolved when the data is read: refused when written (the handler
    fails and is told why), not stored to fail every later update."""

    @dataclass
    class Item:
        name: str

    @dataclass
    class Basket:
        items: list[Item] = field(default_factory=list)

    async def add(update: Any, context: Any) -> None:
        context.session.items.append(Item("cake"))

    assert "could not be read back" in refused_when_written(make_bot, probe, Basket, add)


@dataclass
class Cat:
    name: str


@dataclass
class Dog:
    name: str


@dataclass
class Shelter:
    queue: Sequence[Cat] = field(default_factory=list)
    by_name: Mapping[str, Cat] = field(default_factory=dict)


@dataclass
class MixedShelter:
    pets: list[Cat | Dog] = field(default_factory=list)


def test_dataclasses_in_sequence_and_mapping_fields_come_back_as_themselves(make_bot, probe):
    async def adopt(update: Any, context: Any) -> None:
        context.session.queue = [*context.session.queue, Cat("Tom")]
        context.session.by_name = {**context.session.by_name, "Tom": Cat("Tom")}

    seen: list[Any] = []

    async def look(update: Any, context: Any) -> None:
        seen.append(context.session)

    sessions = Sessions(
        storage=probe.storage, initial=Shelter, serializer=DataclassSerializer(Shelter)
    )
    assert make_bot(sessions, [every_update(adopt)]).process(message("x")) == "committed"
    make_bot(sessions, [every_update(look)]).process(message("y"))
    assert seen == [Shelter([Cat("Tom")], {"Tom": Cat("Tom")})]
    assert type(seen[0].queue[0]) is Cat and type(seen[0].by_name["Tom"]) is Cat


def test_a_dataclass_that_would_come_back_as_a_dict_is_never_written(make_bot, probe):
    async def take_in(update: Any, context: Any) -> None:
        context.session.pets.append(Dog("Rex"))

    error = refused_when_written(make_bot, probe, MixedShelter, take_in)
    assert "MixedShelter.pets is typed" in error and "Dog" in error
    assert "would come back as a dict" in error


T = TypeVar("T")


@dataclass
class Box(Generic[T]):
    value: T


@dataclass
class Shop:
    EMPTY: ClassVar[Cat] = Cat("none")  # not a field: never stored
    sizes: Box[int] = field(default_factory=lambda: Box(0))
    pets: list[Cat] = field(default_factory=list)


@dataclass
class CatBox:
    box: Box[Cat] = field(default_factory=lambda: Box(Cat("Tom")))


def test_class_variables_are_no_fields_and_a_generic_dataclass_comes_back(make_bot, probe):
    async def grow(update: Any, context: Any) -> None:
        context.session.sizes = Box(context.session.sizes.value + 1)

    seen: list[Any] = []

    async def look(update: Any, context: Any) -> None:
        seen.append(context.session)

    sessions = Sessions(storage=probe.storage, initial=Shop, serializer=DataclassSerializer(Shop))
    assert make_bot(sessions, [every_update(grow)]).process(message("x")) == "committed"
    make_bot(sessions, [every_update(look)]).process(message("y"))
    assert seen == [Shop(Box(1), [])] and type(seen[0].sizes) is Box


def test_a_dataclass_given_to_a_generic_one_is_never_written(make_bot, probe):
    async def rebox(update: Any, context: Any) -> None:
        context.session.box = Box(Cat("Kit"))

    assert "CatBox.box is typed" in refused_when_written(make_bot, probe, CatBox, rebox)


def test_a_dataclass_naming_itself_is_written_and_read(make_bot, probe):
    async def grow(update: Any, context: Any) -> None:
        context.session.children.append(Node())

    sessions = Sessions(storage=probe.storage, initial=Node, serializer=DataclassSerializer(Node))
    bot = make_bot(sessions, [every_update(grow)])
    assert [bot.process(message("x")) for _ in "ab"] == [Outcome.COMMITTED] * 2
    assert (
        probe.stored_text(BOT, "", f"chat:{ALICE}")
        == '{"children":[{"children":[]},{"children":[]}]}'
    )


@pytest.mark.parametrize("lazy", [False, True], ids=["strict", "lazy"])
def test_session_data_reads_a_single_session_in_either_mode(make_bot, probe, lazy):
    async def count(update: Update, context: SessionContext[Any]) -> None:
        data = await context.session_data()
        data["n"] += 1
        assert await context.session_data() is data  # one read, the same object

    sessions = Sessions(initial=lambda: {"n": 0}, storage=probe.storage, lazy=lazy)
    bot = make_bot(sessions, [every_update(count)])
    bot.process(message("a"))
    bot.process(message("b"))
    assert json.loads(probe.stored_text(BOT, "", f"chat:{ALICE}")) == {"n": 2}
    assert probe.counts().reads == 2


@pytest.mark.parametrize("lazy", [False, True], ids=["strict", "lazy"])
def test_session_data_reads_a_fragment_by_name_or_by_its_fragment(make_bot, probe, lazy):
    visits = Fragment(
        initial=Profile,
        serializer=DataclassSerializer(Profile),
        lazy=lazy,
        storage=probe.storage,
    )
    found: list[Any] = []

    async def reusable(update: Update, context: SessionContext[Any]) -> None:
        by_fragment = await context.session_data(visits)
        by_fragment.visits += 1
        found.append(by_fragment is await context.session_data("visits"))
        found.append(await context.session_data("chat"))

    sessions = Sessions.multi(
        visits=visits,
        chat=Fragment(initial=lambda: {"pizza_count": 0}, storage=probe.storage),
    )
    bot = make_bot(sessions, [every_update(reusable)])
    bot.process(message("a"))
    assert bot.errors == []
    assert found == [True, {"pizza_count": 0}]

    async def look(update: Update, context: SessionContext[Any]) -> None:
        found.append(await context.session_data(visits))

    make_bot(sessions, [every_update(look)]).process(message("b"))
    assert found[-1] == Profile(visits=1)


def test_session_data_names_what_is_wrong(make_bot):
    configured = Fragment(initial=dict)
    elsewhere = Fragment(initial=dict)
    errors: list[str] = []

    async def handler(update: Update, context: SessionContext[Any]) -> None:
        for target in ("menu", elsewhere):
            try:
                await context.session_data(target)
            except ConfigurationError as exc:
                errors.append(str(exc))

    bot = make_bot(Sessions.multi(chat=configured), [every_update(handler)])
    bot.process(message("a"))
    assert errors == [
        "no session fragment named 'menu'; configured: chat",
        "that Fragment is not one of this application's sessions",
    ]


def test_del_deletes_a_session_and_a_fragment(make_bot, probe):
    async def handler(update: Update, context: SessionContext[Any]) -> None:
        if update.effective_message.text == "forget":  # type: ignore[union-attr]
            del context.session.chat
        else:
            context.session.chat["n"] = 1

    sessions = Sessions.multi(chat=Fragment(initial=dict, storage=probe.storage))
    bot = make_bot(sessions, [every_update(handler)])
    bot.process(message("set"))
    assert probe.stored_text(BOT, "chat", f"chat:{ALICE}") is not None
    bot.process(message("forget"))
    assert probe.stored_text(BOT, "chat", f"chat:{ALICE}") is None

    async def forget_all(update: Update, context: SessionContext[Any]) -> None:
        del context.session

    single = Sessions(initial=lambda: {"n": 1}, storage=probe.storage, key=per_user)
    bot = make_bot(single, [every_update(forget_all)])
    bot.process(message("x", user_id=BOB))
    assert probe.stored_text(BOT, "", f"user:{BOB}") is None


D = TypeVar("D")


def test_a_parameterised_context_is_a_class_ptb_accepts():
    typed = SessionContext[Profile]
    assert typed is SessionContext[Profile]
    assert issubclass(typed, SessionContext) and issubclass(typed, CallbackContext)
    assert ContextTypes(context=typed).context is typed
    assert SessionContext[Lazy[Profile]] is not typed

    class Custom(SessionContext[D], Generic[D]):  # open type variables: a plain alias
        pass

    assert issubclass(Custom[Profile], Custom)
    assert Custom[Profile] is Custom[Profile]


def test_the_typed_example_bot_runs(make_bot, probe, api, monkeypatch):
    from botproject import typed_bot

    # The example's fragments, on the storage under test.
    fragments = {
        name: dataclasses.replace(fragment, storage=probe.storage)
        for name, fragment in typed_bot.sessions.fragments.items()
    }
    monkeypatch.setattr(typed_bot, "basket", fragments["basket"])  # what /basket names
    sessions = Sessions.multi(**fragments)
    bot = make_bot(
        sessions,
        typed_bot.handlers(),
        configure=lambda b: b.context_types(ContextTypes(context=typed_bot.Context)),
    )
    assert isinstance(bot.application.context_types.context(bot.application), typed_bot.Context)
    for text in ("🍕", "🍕", "/hunger", "/add cake", "/basket", "/reset", "/hunger"):
        bot.process(message(text))
    assert bot.errors == []
    assert api.sent_texts() == [
        "Your hunger level is 2!",
        "1 in your basket.",
        "cake",
        "Session reset.",
        "Your hunger level is 0!",
    ]
    user = json.loads(probe.stored_text(BOT, "user", f"user:{ALICE}"))
    assert user == {"messages": 2, "purchases": 0}
    basket = json.loads(probe.stored_text(BOT, "basket", f"user:{ALICE}"))
    assert basket == {"items": ["cake"]}


@dataclass
class OldCard:
    name: str = ""


@dataclass
class Card:
    first_name: str = ""
    stamps: int = 0


def test_migrations_upgrade_dataclass_data_as_stored_json(make_bot, probe):
    """A renamed field: the old JSON cannot build the new class, so the migrations get the
    JSON and the class is built from what they return."""
    seen: list[Card] = []

    async def old(update: Update, context: SessionContext[OldCard]) -> None:
        context.session.name = "Alice"

    async def new(update: Update, context: SessionContext[Card]) -> None:
        context.session.stamps += 1
        seen.append(context.session)

    def rename(data: dict[str, Any]) -> dict[str, Any]:
        return {"first_name": data.pop("name"), **data}

    before = Sessions(
        initial=OldCard, storage=probe.storage, serializer=DataclassSerializer(OldCard)
    )
    assert make_bot(before, [every_update(old)]).process(message("hi")) == Outcome.COMMITTED
    after = Sessions(
        initial=Card,
        storage=probe.storage,
        serializer=DataclassSerializer(Card),
        migrations={1: rename},
    )
    assert make_bot(after, [every_update(new)]).process(message("hi")) == Outcome.COMMITTED
    assert seen == [Card("Alice", 1)]
    stored = json.loads(probe.stored_text(BOT, "", f"chat:{ALICE}"))
    assert stored == {"first_name": "Alice", "stamps": 1}

    broken = Sessions(
        initial=Card,
        storage=probe.storage,
        serializer=DataclassSerializer(Card),
        migrations={1: rename, 2: lambda data: {**data, "unknown": 1}},
    )
    outcome = make_bot(broken, [every_update(new)]).process(message("hi"))
    assert outcome == Outcome.BAD_STORED_DATA
    assert json.loads(probe.stored_text(BOT, "", f"chat:{ALICE}")) == stored  # left as it was


@dataclass
class Tally:
    items: list[str] = field(default_factory=list)
    total: int = field(default=0, init=False)


@dataclass(frozen=True)
class Stamp:
    at: str = ""
    seen: bool = field(default=False, init=False)


def test_fields_not_taken_by_init_come_back_as_stored():
    tally = Tally(["a"])
    tally.total = 3
    serializer = DataclassSerializer(Tally)
    assert serializer.loads(serializer.dumps(tally)) == tally
    assert serializer.loads(serializer.dumps(tally)).total == 3
    stamp = Stamp("noon")
    object.__setattr__(stamp, "seen", True)
    frozen = DataclassSerializer(Stamp)
    assert frozen.loads(frozen.dumps(stamp)).seen is True
    with pytest.raises(TypeError, match="has no field renamed"):
        serializer.loads('{"items": [], "renamed": 1}')
