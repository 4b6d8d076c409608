"""The type checker catches a misspelt session field in a handler of the typed example.

``.ci/run`` checks that ``botproject/typed_bot.py`` passes ``mypy --strict``; this test
checks the other half: the same bot with a wrong field name fails it, at that line. In
the same run, the README's typed examples, copied as printed, pass it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "botproject" / "typed_bot.py"
README = ROOT / "README.md"

# Each misspelling of the example, and what mypy says about it.
TYPOS = {
    'context.session.chat["pizza_count"] += 1': (
        'context.session.chat["pizza_cuont"] += 1',
        'TypedDict "ChatData" has no key "pizza_cuont"',
    ),
    "context.session.user.messages += 1": (
        "context.session.user.mesages += 1",
        '"UserData" has no attribute "mesages"',
    ),
    "items = (await context.session_data(basket)).items": (
        "items = (await context.session_data(basket)).itmes",
        '"Basket" has no attribute "itmes"',
    ),
}


def test_a_wrong_field_name_fails_mypy(tmp_path: Path) -> None:
    source = EXAMPLE.read_text()
    for right, (wrong, _) in TYPOS.items():
        assert source.count(right) == 1, right
        source = source.replace(right, wrong)
    copy = tmp_path / "typo_bot.py"
    copy.write_text(source)
    readme = tmp_path / "readme_typed.py"
    readme.write_text(readme_typed_examples())
    # The project's configuration and cache: the package is checked once, not per run.
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml"]
    result = subprocess.run(
        [*command, str(copy), str(readme)],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "readme_typed.py" not in result.stdout, result.stdout
    # Only the copy's errors: the package's own are .ci/run's business. (mypy may name
    # the copy by the path it had in an earlier run: its cache knows the module.)
    pattern = re.compile(r"^\S*typo_bot\.py:(\d+): error: (.*)$", re.MULTILINE)
    found = {(int(line), text) for line, text in pattern.findall(result.stdout)}
    lines = source.splitlines()
    expected = [(lines.index(next(x for x in lines if w in x)) + 1, m) for w, m in TYPOS.values()]
    assert len(found) == len(expected), result.stdout
    for line, message in expected:
        assert any(n == line and message in text for n, text in found), result.stdout


def readme_typed_examples() -> str:
    """The README's typed bot and the reusable handlers that follow it, as one module."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    typed = [block for block in blocks if "SessionContext[BotSession]" in block]
    handlers = [block for block in blocks if "def basket_handlers" in block]
    assert len(typed) == 1 and len(handlers) == 1
    return typed[0] + "\n\n" + handlers[0]
