"""Reconnection delays: capped exponential backoff with full jitter.

"Full jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*, 2015): the n-th delay is
drawn uniformly from ``[0, min(cap, base * factor**n)]``. Of the schemes compared there it spreads
a crowd of clients best, which is what matters when a broker restart drops them all at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnection attempt ``n`` (0 for the first)."""

    #: Upper bound of the first delay, in seconds.
    base: float = 0.1
    #: Largest delay, in seconds.
    cap: float = 10.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.factor < 1:
            raise ValueError("Backoff needs base >= 0, cap >= 0 and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` may get."""
        # min() before the power would overflow: factor**attempt grows without bound.
        if attempt > 64:
            return self.cap
        return min(self.cap, self.base * self.factor**attempt)

    def delay(self, attempt: int) -> float:
        """A delay for attempt ``attempt``: uniform in ``[0, ceiling(attempt)]``."""
        return self.rng.uniform(0.0, self.ceiling(attempt))
