"""Growing, jittered pauses between tries: runbot's retries and Redis's lock waits."""

from __future__ import annotations

import random
from dataclasses import dataclass

_jitter = random.Random()


@dataclass(frozen=True)
class Backoff:
    """Pauses between tries of something another process holds up, or an outage.

    Each pause is drawn from the upper half of a ceiling that doubles from ``first`` up
    to ``cap``: it grows, and processes that keep meeting on the same session do not
    retry in step.
    """

    first: float
    cap: float

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The pause after ``failures`` failed tries in a row (1 after the first)."""
        ceiling = min(self.cap, self.first * 2.0 ** min(max(failures, 1) - 1, 60))
        return (rng or _jitter).uniform(ceiling / 2, ceiling)
