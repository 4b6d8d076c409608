"""The README's example bot works as printed, and keeps its counters across a restart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import telegram.ext

from botsessions.models import Session
from botsessions.runner import BotRunner

from .updates import ALICE, message

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.django_db


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return blocks[0]


def build_from_readme(api: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the README's code as printed, with its bot pointed at the fake Bot API."""

    class LocalBuilder(telegram.ext.ApplicationBuilder):  # type: ignore[type-arg]
        def __init__(self) -> None:
            super().__init__()
            self.base_url(api.base_url)

    monkeypatch.setattr(telegram.ext, "ApplicationBuilder", LocalBuilder)
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    return namespace["build_application"]()


def test_the_readme_bot_counts_and_survives_a_restart(api, monkeypatch):
    first = BotRunner(build_from_readme(api, monkeypatch))
    first.process(first.decode(message("🍕 please")))
    first.process(first.decode(message("more 🍕")))
    first.shutdown()

    second = BotRunner(build_from_readme(api, monkeypatch))  # a new process, as far as it knows
    second.process(second.decode(message("/hunger")))
    second.shutdown()
    assert api.sent_texts()[-1] == "Your hunger level is 2!"
    row = Session.objects.get(key=f"chat:{ALICE}")
    assert row.data == {"pizza_count": 2}
