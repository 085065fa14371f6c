"""Reconnection delays: capped exponential backoff with full jitter, the one backoff used
everywhere something reconnects (the Python client to the broker, the Redis backplane to Redis).
It imports nothing of the broker, so the client can use it without the server.

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
        """The largest delay attempt ``attempt`` may get, for any ``attempt`` however large (an
        outage of days counts its attempts in the tens of thousands)."""
        # Stop before the power: factor**attempt overflows a float near attempt 1024, and long
        # before that the cap applies anyway.
        if attempt > 64:
            return self.cap
        try:
            return min(self.cap, self.base * self.factor**attempt)
        except OverflowError:  # a factor large enough to overflow within 64 attempts
            return self.cap

    def delay(self, attempt: int) -> float:
        """A delay for attempt ``attempt``: uniform in ``[0, ceiling(attempt)]``."""
        return self.rng.uniform(0.0, self.ceiling(attempt))
