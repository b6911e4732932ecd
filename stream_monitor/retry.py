"""Retry policy as an object: exponential backoff with jitter (redis-py's ``backoff.py`` shape)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (0-based), in seconds.

    ``initial · multiplier^attempt``, spread uniformly by ``±jitter`` (a fraction) so many
    clients do not retry in lockstep, and capped at ``maximum`` with the jitter included
    (at the cap the spread is all below it).
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff {self}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        # min() before the power would overflow for a large attempt count; the cap is applied last.
        base = min(self.maximum, self.initial * self.multiplier ** min(max(attempt, 0), 64))
        u = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.maximum, base * (1.0 + u)))
