"""What one suite run measured, and the four performance goals judged from it.

``SuiteResults`` holds every scenario's results. ``common_rate`` picks the fan-out rate at which
targets are compared; ``judge`` turns the results into the four ``Verdict``s (met, not met, or
not measured when a figure is missing); ``peer_ratio`` divides a broker figure by a peer's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.connrate import ConnRateResult
from benchmarks.fanout import FanoutSeries, failure
from benchmarks.fmt import fmt_ratio
from benchmarks.idle import IdleResult
from benchmarks.population_report import Figures
from benchmarks.scenarios import ScenarioResult
from benchmarks.stats import ratio

CHAT = "broker-chat"
V1_JSON = "broker-v1-json"
NAIVE = "naive"
NODE = "node-ws"

IDLE_LIMIT_KIB = 16.0
C10K_P99_LIMIT_MS = 250.0


@dataclasses.dataclass
class SuiteResults:
    """Everything one run of the suite produced."""

    fanout: list[FanoutSeries] = dataclasses.field(default_factory=list)
    channels: list[ScenarioResult] = dataclasses.field(default_factory=list)
    stalled: list[ScenarioResult] = dataclasses.field(default_factory=list)
    idle: list[IdleResult] = dataclasses.field(default_factory=list)
    connect_rate: list[ConnRateResult] = dataclasses.field(default_factory=list)
    c10k: list[ScenarioResult] = dataclasses.field(default_factory=list)
    #: The 19,000- and 100,000-connection scenarios (``population_report.Figures``).
    population: list[Figures] = dataclasses.field(default_factory=list)
    #: Lines for the reader: skipped peers, scenarios that do not apply, raised limits.
    notes: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def series(self, target: str) -> FanoutSeries | None:
        return next((series for series in self.fanout if series.target == target), None)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One of the performance goals (docs/performance.md)."""

    number: int
    goal: str
    #: None: not measured in this run (a target was missing or failed).
    met: bool | None
    measured: str

    @property
    def label(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]


def common_rate(fanout: Sequence[FanoutSeries]) -> float | None:
    """The highest rate every target sustained; else the lowest rate every target ran."""
    ran = [series for series in fanout if series.steps]
    if not ran:
        return None
    passed = [
        {step.params.rate for step in series.steps if failure(step) is None} for series in ran
    ]
    shared = set.intersection(*passed)
    if shared:
        return max(shared)
    everywhere = set.intersection(*({step.params.rate for step in s.steps} for s in ran))
    return min(everywhere) if everywhere else None


def cpu_at(series: FanoutSeries | None, rate: float | None) -> float | None:
    """Server CPU per 1,000 deliveries (ms) of ``series`` at ``rate``."""
    if series is None or rate is None:
        return None
    step = series.at_rate(rate)
    return step.server_cpu_ms_per_1k if step is not None and step.ok else None


def sustained_deliveries(series: FanoutSeries | None) -> float | None:
    step = series.sustained if series is not None else None
    return step.offered_per_s if step is not None else None


def peer_ratio(
    results: Sequence[Any], target: str, peer: str, figure: Callable[[Any], float | None]
) -> float | None:
    """``figure(target's result) / figure(peer's result)`` among ``results`` (by ``.target``)."""
    mine = next((r for r in results if r.target == target and r.ok), None)
    theirs = next((r for r in results if r.target == peer and r.ok), None)
    if mine is None or theirs is None:
        return None
    return ratio(figure(mine), figure(theirs))


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.1f}{unit}"


def judge(results: SuiteResults) -> list[Verdict]:
    """The four performance goals, each met, not met, or not measured."""
    return [_cpu_target(results), _rate_target(results), _idle_target(results), _c10k(results)]


def _cpu_target(results: SuiteResults) -> Verdict:
    goal = "/ws/chat: server CPU per delivery <= 0.5x the tutorial design's and <= 1.0x Node ws's"
    rate = common_rate(results.fanout)
    chat = cpu_at(results.series(CHAT), rate)
    naive = cpu_at(results.series(NAIVE), rate)
    node = cpu_at(results.series(NODE), rate)
    vs_naive, vs_node = ratio(chat, naive), ratio(chat, node)
    if rate is None or vs_naive is None:
        return Verdict(1, goal, None, "fan-out of broker-chat and naive not both measured")
    deliveries = rate * _subscribers(results)
    measured = (
        f"at {rate:g} publications/s ({deliveries:,.0f} deliveries/s): broker-chat"
        f" {_num(chat)} ms/1k, naive {_num(naive)}, node-ws {_num(node)};"
        f" {fmt_ratio(vs_naive)} naive, {fmt_ratio(vs_node)} node-ws"
    )
    met = vs_naive <= 0.5 and (vs_node is None or vs_node <= 1.0)
    if vs_node is None:
        measured += " (Node ws not measured: judged on the naive ratio only)"
    return Verdict(1, goal, met, measured)


def _subscribers(results: SuiteResults) -> int:
    return int(results.settings.get("subscribers", 100))


def _rate_target(results: SuiteResults) -> Verdict:
    goal = (
        "/v1/ws JSON: highest rate with p99 < 100 ms and no loss >= 5x the tutorial design's;"
        " CPU per delivery at that rate <= 0.25x the tutorial design's"
    )
    v1_series, naive_series = results.series(V1_JSON), results.series(NAIVE)
    v1_best = v1_series.sustained if v1_series else None
    naive_best = naive_series.sustained if naive_series else None
    if v1_series is None or naive_series is None or naive_best is None:
        return Verdict(2, goal, None, "no sustained fan-out rate for both broker-v1-json and naive")
    v1_rate = v1_best.offered_per_s if v1_best else 0.0
    rate_ratio = v1_rate / naive_best.offered_per_s
    cpu_ratio = ratio(
        v1_best.server_cpu_ms_per_1k if v1_best else None, naive_best.server_cpu_ms_per_1k
    )
    open_ended = v1_series.stop_reason.startswith("every rate")
    measured = (
        f"broker-v1-json sustained {'>= ' if open_ended else ''}{v1_rate:,.0f} deliveries/s,"
        f" naive {naive_best.offered_per_s:,.0f}: {rate_ratio:.2f}x;"
        f" CPU per delivery there {_num(v1_best.server_cpu_ms_per_1k if v1_best else None)}"
        f" ms/1k vs naive's {_num(naive_best.server_cpu_ms_per_1k)} ms/1k at its own highest"
        f" sustained rate: {fmt_ratio(cpu_ratio)}"
    )
    met = rate_ratio >= 5.0 and cpu_ratio is not None and cpu_ratio <= 0.25
    return Verdict(2, goal, met, measured)


def _idle_target(results: SuiteResults) -> Verdict:
    goal = f"idle connections: <= {IDLE_LIMIT_KIB:g} KiB of server RSS per connection"
    broker = [r for r in results.idle if r.ok and r.target.startswith("broker")]
    peers = [r for r in results.idle if r.ok and not r.target.startswith("broker")]
    if not broker:
        return Verdict(3, goal, None, "no broker target measured")
    figures = ", ".join(
        f"{r.target} {_num(r.per_connection_kib, ' KiB')}" for r in [*broker, *peers]
    )
    worst = max(r.per_connection_kib or 0.0 for r in broker)
    connections = max(r.connected for r in broker)
    measured = f"{connections:,} connections: {figures}"
    return Verdict(3, goal, worst <= IDLE_LIMIT_KIB, measured)


def _c10k(results: SuiteResults) -> Verdict:
    goal = (
        f"10,000 connections on one process, one broadcast per second: p99 <"
        f" {C10K_P99_LIMIT_MS:g} ms, no loss"
    )
    broker = [r for r in results.c10k if r.target.startswith("broker")]
    if not broker:
        return Verdict(4, goal, None, "no broker target measured")
    parts = []
    met: bool | None = True
    for result in broker:
        if not result.ok:
            error = " ".join((result.error or "").split())
            parts.append(f"{result.target} failed: {error[:120]}")
            met = False
            continue
        p99 = result.latency.p99_ms if result.latency else None
        parts.append(
            f"{result.target}: {result.subscribers:,} connected, p99 {_num(p99, ' ms')},"
            f" lost {result.lost}"
        )
        passed = p99 is not None and p99 < C10K_P99_LIMIT_MS and result.lost == 0
        if met is not False:
            met = met and passed
    if met is not False and min(r.subscribers for r in broker) < 10_000:
        met = None  # a smaller population (--quick) says nothing about 10,000
        parts.append("fewer than 10,000 connections: not a measurement of the target")
    return Verdict(4, goal, met, "; ".join(parts))
