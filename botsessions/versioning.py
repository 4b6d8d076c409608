"""Versioned data migrations: upgrade stored session data as the bot evolves.

Versions are plain numbers ordered numerically (1 < 2 < 10 < 10.1 < 11); data at
version ``v`` runs every migration above ``v`` in order, each exactly once. Data
without a version runs all of them. Data newer than the newest known migration was
written by a newer release of the bot: it is refused rather than relabelled.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

from .errors import ConfigurationError, MigrationError

Migration = Callable[[Any], Any]


class DataMigrations:
    """An ordered set of ``version → function`` steps for one session fragment."""

    def __init__(self, steps: Mapping[int | float | str | Decimal, Migration]) -> None:
        if not steps:
            raise ConfigurationError("migrations must name at least one version")
        ordered: list[tuple[Decimal, Migration]] = []
        for version, step in steps.items():
            number = _as_version(version)
            if not callable(step):
                raise ConfigurationError(f"migration {version!r} is not callable")
            ordered.append((number, step))
        ordered.sort(key=lambda pair: pair[0])
        for (a, _), (b, _) in itertools.pairwise(ordered):
            if a == b:
                raise ConfigurationError(f"migration version {a} is given twice")
        self._steps = ordered

    @property
    def latest(self) -> Decimal:
        """The version every write is stamped with."""
        return self._steps[-1][0]

    @property
    def versions(self) -> list[Decimal]:
        return [version for version, _ in self._steps]

    def upgrade(self, data: Any, version: Decimal | None) -> Any:
        """Bring ``data`` stored at ``version`` up to :attr:`latest`."""
        if version is not None and version > self.latest:
            raise MigrationError(
                f"stored data is at version {version}, newer than the newest known "
                f"migration {self.latest}; refusing to downgrade it"
            )
        for step_version, step in self._steps:
            if version is None or step_version > version:
                try:
                    data = step(data)
                except Exception as exc:
                    raise MigrationError(
                        f"migration to version {step_version} failed: {exc!r}"
                    ) from exc
                if data is None:  # most likely a step that changed the data but forgot `return`
                    raise MigrationError(
                        f"migration to version {step_version} returned None, not the data"
                    )
        return data


def _as_version(value: object) -> Decimal:
    """Read a version exactly: 10.1 must stay 10.1, not 10.0999…"""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ConfigurationError(f"migration version {value!r} is not a number")
    try:
        number = Decimal(str(value))
    except ArithmeticError as exc:
        raise ConfigurationError(f"migration version {value!r} is not a number") from exc
    number += 0  # -0 is 0, written as "0"
    if not number.is_finite() or number < 0:
        raise ConfigurationError(f"migration version {value!r} must be a finite number >= 0")
    # What the version column keeps (numeric(20, 6)): a finer version would be stored
    # rounded, and its step would run again on every update; a larger one not at all.
    # SQLite keeps a decimal number in a float: 15 significant digits come back as they
    # were written, more may not.
    digits = len(number.normalize().as_tuple().digits)
    if (
        number >= VERSION_LIMIT
        or number != number.quantize(VERSION_STEP, ROUND_DOWN)
        or digits > _VERSION_DIGITS
    ):
        raise ConfigurationError(
            f"migration version {value!r} does not fit what is stored: "
            "below 10**14, with at most 6 decimal places and 15 digits in all"
        )
    return number


VERSION_LIMIT = Decimal(10) ** 14
"""The version column (``numeric(20, 6)``) keeps versions below this, and in steps of:"""
VERSION_STEP = Decimal("0.000001")
_VERSION_DIGITS = 15
