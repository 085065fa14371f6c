"""``Histogram``: bucket counts kept in a list, for the hot path.

prometheus-client's ``Histogram`` takes a lock and walks its buckets on every ``observe``. The
broker observes from its event loop only, so a list of counts and one ``bisect`` do; the buckets
become a ``HistogramMetricFamily`` only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import HistogramMetricFamily

#: Seconds: from half a millisecond to ten seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive) and their sum. Not
    thread-safe: observe from one thread (the event loop)."""

    __slots__ = ("bounds", "countdown", "counts", "every", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS, *, every: int = 1) -> None:
        self.bounds = tuple(bounds)
        #: One count per bound, plus the last for values above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        #: For a hot path that measures one event in ``every``: the caller decrements
        #: ``countdown`` per event and, once it is 0 or less, observes the next event it can
        #: measure and resets it to ``every``. The first such event is measured.
        self.every = every
        self.countdown = 1

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count of observations <= le)`` per bucket, ``+Inf`` last, as Prometheus has
        them."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        family.add_metric(list(labels), self.cumulative(), sum_value=self.total)
