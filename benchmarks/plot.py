"""The suite's figure: one PNG with four panels, drawn with matplotlib's Agg backend.

1. Fan-out: p99 latency against offered deliveries per second, one line per target (a failed
   step is marked with an x), with the 100 ms limit.
2. Server CPU per delivery (µs) per target: at the common rate and at its highest sustained rate.
3. Idle connections: server RSS per connection (KiB), with the 16 KiB target.
4. 10,000 connections: p99 per target, with the 250 ms target.

matplotlib is not a dependency of the broker: when it is missing, ``draw`` returns None
(``pip install matplotlib``). It is imported with ``importlib`` so that type-checking the
benchmarks does not need it installed; the axes are therefore typed ``Any``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from benchmarks.fanout import P99_LIMIT_MS, failure
from benchmarks.goals import (
    C10K_P99_LIMIT_MS,
    IDLE_LIMIT_KIB,
    SuiteResults,
    common_rate,
    cpu_at,
)

_COLORS = {
    "naive": "#9e9e9e",
    "node-ws": "#4caf50",
    "broker-chat": "#1f77b4",
    "broker-v1-json": "#ff7f0e",
    "broker-v1-msgpack": "#d62728",
    "broker-v1": "#ff7f0e",
}


def _color(target: str) -> str:
    return _COLORS.get(target, "#7f7f7f")


def draw(results: SuiteResults, path: Path, title: str) -> Path | None:
    """Draw the figure to ``path``; None when matplotlib is not installed."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
    figure, axes = plt.subplots(2, 2, figsize=(14, 10))
    (fanout, cpu), (idle, c10k) = axes
    _fanout(results, fanout)
    _cpu(results, cpu)
    _bars(
        idle,
        [(r.target, r.per_connection_kib) for r in results.idle if r.ok],
        "KiB of server RSS per idle connection",
        IDLE_LIMIT_KIB,
        f"target {IDLE_LIMIT_KIB:g} KiB",
    )
    _bars(
        c10k,
        [
            (r.target, r.latency.p99_ms if r.latency else None)
            for r in results.c10k
            if r.ok and r.latency is not None
        ],
        f"{results.settings.get('c10k_connections', 10_000):,} connections: p99 ms",
        C10K_P99_LIMIT_MS,
        f"target {C10K_P99_LIMIT_MS:g} ms",
    )
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _fanout(results: SuiteResults, ax: Any) -> None:
    for series in results.fanout:
        # One point per rate (a repeated step: the passing run), in rate order.
        chosen = [series.at_rate(rate) for rate in sorted({s.params.rate for s in series.steps})]
        points = [
            (step.offered_per_s, step.latency.p99_ms, failure(step) is None)
            for step in chosen
            if step is not None
            and step.ok
            and step.latency is not None
            and step.latency.p99_ms is not None
        ]
        if not points:
            continue
        xs = [x for x, _, _ in points]
        ys = [max(y, 0.1) for _, y, _ in points]
        ax.plot(xs, ys, marker="o", color=_color(series.target), label=series.target)
        for x, y, passed in points:
            if not passed:
                ax.plot([x], [max(y, 0.1)], marker="x", markersize=12, color="black")
    ax.axhline(P99_LIMIT_MS, color="red", linestyle="--", linewidth=1, label="100 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered deliveries/s (publications/s x subscribers)")
    ax.set_ylabel("p99 latency, ms (x: step failed)")
    ax.set_title("Fan-out, one channel: p99 vs offered rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _cpu(results: SuiteResults, ax: Any) -> None:
    rate = common_rate(results.fanout)
    names = [series.target for series in results.fanout]
    at_common = [cpu_at(series, rate) or 0.0 for series in results.fanout]
    at_best = [
        (series.sustained.server_cpu_ms_per_1k or 0.0) if series.sustained else 0.0
        for series in results.fanout
    ]
    positions = list(range(len(names)))
    width = 0.38
    ax.bar(
        [p - width / 2 for p in positions],
        at_common,
        width,
        color=[_color(n) for n in names],
        label=f"at {rate:g} pub/s (common)" if rate else "at the common rate",
    )
    ax.bar(
        [p + width / 2 for p in positions],
        at_best,
        width,
        color=[_color(n) for n in names],
        alpha=0.5,
        hatch="//",
        label="at its highest sustained rate",
    )
    for p, value in zip(positions, at_common, strict=True):
        ax.annotate(f"{value:.1f}", (p - width / 2, value), ha="center", va="bottom", fontsize=8)
    for p, value in zip(positions, at_best, strict=True):
        ax.annotate(f"{value:.1f}", (p + width / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, names, rotation=15)
    ax.set_ylabel("server CPU µs per delivery (= ms per 1,000)")
    ax.set_title("Fan-out: server CPU per delivery")
    ax.legend(fontsize=8)


def _bars(
    ax: Any, values: list[tuple[str, float | None]], ylabel: str, limit: float, label: str
) -> None:
    shown = [(name, value) for name, value in values if value is not None]
    if not shown:
        ax.set_title(f"{ylabel}: not measured")
        ax.axis("off")
        return
    names = [name for name, _ in shown]
    heights = [value for _, value in shown]
    ax.bar(names, heights, color=[_color(n) for n in names])
    for index, value in enumerate(heights):
        ax.annotate(f"{value:.1f}", (index, value), ha="center", va="bottom", fontsize=8)
    ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=label)
    ax.set_ylabel(ylabel)
    ax.set_title(ylabel)
    ax.tick_params(axis="x", rotation=15)
    ax.legend(fontsize=8)
