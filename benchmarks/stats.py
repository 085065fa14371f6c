"""Latency percentiles over the microsecond samples the subscribers recorded."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    """Publish-to-receipt latency of the publications that arrived, in milliseconds."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    #: Publications owed but never received.
    missing: int = 0
    #: p99 counting each missing publication as never arriving: None when it falls among them.
    p99_incl_lost_ms: float | None = None


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of already sorted values (``fraction`` in 0..1)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(latencies_us: Sequence[int], missing: int = 0) -> LatencySummary:
    """Percentiles of what arrived, plus a p99 that counts ``missing`` as infinitely late."""
    if not latencies_us:
        return LatencySummary(0, None, None, None, None, None, missing)
    ordered = sorted(latencies_us)
    rank = max(1, math.ceil(0.99 * (len(ordered) + missing)))
    return LatencySummary(
        count=len(ordered),
        p50_ms=percentile(ordered, 0.50) / 1000,
        p90_ms=percentile(ordered, 0.90) / 1000,
        p99_ms=percentile(ordered, 0.99) / 1000,
        max_ms=ordered[-1] / 1000,
        mean_ms=sum(ordered) / len(ordered) / 1000,
        missing=missing,
        p99_incl_lost_ms=ordered[rank - 1] / 1000 if rank <= len(ordered) else None,
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
