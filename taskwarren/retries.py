"""Retry policy: which failures are tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter and a cap.

    The delay before retry ``n`` (1-based) is drawn uniformly from
    ``[min_s, min(max_s, base_s * factor ** (n - 1))]``; jitter spreads a burst of
    failures so the retries do not all land at once.

    Attributes:
        base_s: upper bound of the first retry's delay.
        factor: growth per retry.
        max_s: the cap.
        min_s: never retry sooner than this.
    """

    base_s: float = 2.0
    factor: float = 2.0
    max_s: float = 3600.0
    min_s: float = 1.0

    def delay_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_s, self.base_s * self.factor ** max(0, retry - 1))
        ceiling = max(ceiling, self.min_s)
        return (rng or random).uniform(self.min_s, ceiling)
