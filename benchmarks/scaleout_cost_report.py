"""The scaling-cost benchmark's records and report (``benchmarks.scaleout_cost`` measures).

Per step: the broker's CPU per delivery and Redis's per publication, each less its idle CPU; per
configuration (backend, channel count) and W the median over the rounds and its ratio to W = 1's;
and a capacity table extrapolated from the medians: Redis's cost per publication as ``a + b x W``
(each process subscribed adds one pub/sub copy), publications/s and deliveries/s one Redis core
and one broker core make, and how many broker processes one Redis core feeds.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from benchmarks.fmt import fmt_ms
from benchmarks.scaleout_plan import Step

#: W of the extrapolated capacity rows.
CAPACITY_W = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a step runs on: ``single`` (one redis-server) or ``cluster``, and its channels."""

    backend: str
    channels: int

    @property
    def name(self) -> str:
        return f"{self.backend}, {self.channels} channel{'s' if self.channels > 1 else ''}"


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """One master over one step: CPU seconds (its ``INFO cpu``), its idle CPU in cores, and the
    publish script runs (``EVALSHA``) and their microseconds."""

    port: int
    cpu_s: float
    idle: float
    calls: int
    script_us: float


@dataclasses.dataclass(frozen=True)
class Cost:
    setup: Setup
    workers: int
    round: int
    step: Step | None
    error: str | None = None
    #: CPU in cores with the broker up, linked to Redis and idle (health round trips, timers):
    #: subtracted, so that the costs are those of the load.
    broker_idle: float = 0.0
    #: Seconds the Redis counters cover (the whole step: connecting and draining included).
    redis_seconds: float = 0.0
    nodes: tuple[NodeCost, ...] = ()

    @property
    def redis_idle(self) -> float:
        return sum(node.idle for node in self.nodes)

    @property
    def script_calls(self) -> int:
        return sum(node.calls for node in self.nodes)

    @property
    def broker_us_per_delivery(self) -> float | None:
        step = self.step
        if step is None or not step.delivered or step.failure is not None:
            return None
        busy = max(0.0, step.server_cpu - self.broker_idle)
        return busy * step.window_s * 1e6 / step.delivered

    def _busy(self, node: NodeCost) -> float:
        return max(0.0, node.cpu_s - node.idle * self.redis_seconds)

    @property
    def redis_us_per_publication(self) -> float | None:
        """Redis's CPU (every master's ``INFO cpu``, microsecond-precise) over the step, less
        its idle CPU, per publication."""
        step = self.step
        if step is None or not self.script_calls or step.failure is not None:
            return None
        return sum(self._busy(node) for node in self.nodes) * 1e6 / self.script_calls

    @property
    def script_us_per_publication(self) -> float | None:
        calls = self.script_calls
        return sum(node.script_us for node in self.nodes) / calls if calls else None

    @property
    def busiest_share(self) -> float | None:
        """The share of the publications that ran on the busiest master (1.0 on one server)."""
        calls = self.script_calls
        return max(node.calls for node in self.nodes) / calls if calls else None

    def per_master(self) -> str:
        """Each master's CPU over the step in cores, less idle, and its share of the scripts."""
        if len(self.nodes) < 2 or not self.redis_seconds:
            return "-"
        calls = max(1, self.script_calls)
        return " / ".join(
            f"{self._busy(node) / self.redis_seconds:.3f} ({100 * node.calls / calls:.0f}%)"
            for node in self.nodes
        )


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def steps_table(costs: Sequence[Cost]) -> list[str]:
    lines = [
        "| backend, channels | W | round | subscribers | deliveries/s | p50/p99 ms"
        " | broker CPU (idle) | broker µs/delivery | Redis CPU (idle) | Redis µs/publication"
        " | of which the script | per master: CPU (share of scripts) | generator | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cost in costs:
        step = cost.step
        head = f"| {cost.setup.name} | {cost.workers} | {cost.round}"
        if step is None:
            lines.append(f"{head} | failed: {cost.error} |")
            continue
        lines.append(
            f"{head} | {step.subscribers} | {step.deliveries_per_s:,.0f}"
            f" | {fmt_ms(step.p50_ms)}/{fmt_ms(step.p99_ms)}"
            f" | {step.server_cpu:.2f} ({cost.broker_idle:.2f})"
            f" | {_num(cost.broker_us_per_delivery)}"
            f" | {step.redis_cpu:.3f} ({cost.redis_idle:.3f})"
            f" | {_num(cost.redis_us_per_publication)}"
            f" | {_num(cost.script_us_per_publication)}"
            f" | {cost.per_master()}"
            f" | {step.generator_cpu:.2f} | {step.other_cpu:.2f} |"
            + ("" if step.failure is None else f" {step.failure}")
        )
    return lines


@dataclasses.dataclass(frozen=True)
class Medians:
    """One configuration's medians over its rounds, per W."""

    setup: Setup
    broker_us: dict[int, float | None]
    redis_us: dict[int, float | None]
    busiest_share: float | None


def medians(costs: Sequence[Cost], setup: Setup, workers: Sequence[int]) -> Medians:
    mine = [cost for cost in costs if cost.setup == setup]
    return Medians(
        setup,
        {w: _median([c.broker_us_per_delivery for c in mine if c.workers == w]) for w in workers},
        {w: _median([c.redis_us_per_publication for c in mine if c.workers == w]) for w in workers},
        _median([c.busiest_share for c in mine if c.step and c.step.failure is None]),
    )


def medians_table(all_medians: Sequence[Medians]) -> list[str]:
    lines = [
        "| backend, channels | W | broker µs/delivery | vs W=1 | Redis µs/publication"
        " | busiest master's share |",
        "|---|---|---|---|---|---|",
    ]
    for one in all_medians:
        base = one.broker_us.get(1)
        for workers, broker in one.broker_us.items():
            versus = f"{broker / base:.2f}x" if broker and base else "-"
            share = "-" if one.busiest_share is None else f"{100 * one.busiest_share:.0f}%"
            lines.append(
                f"| {one.setup.name} | {workers} | {_num(broker)} | {versus}"
                f" | {_num(one.redis_us.get(workers))} | {share} |"
            )
    return lines


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Extrapolated from one configuration's medians."""

    setup: Setup
    #: Redis µs per publication ~ intercept + slope x W (least squares; flat if no growth).
    intercept: float
    slope: float
    broker_us: float
    #: Deliveries one publication makes in one broker process (its subscribers on the channel).
    fan_out: float
    #: Masters' worth of publications the backend runs: 1 / the busiest master's share.
    masters: float

    def redis_publications(self, workers: int) -> float:
        """Publications/s one Redis core runs with ``workers`` processes subscribed."""
        return 1e6 / (self.intercept + self.slope * workers)

    @property
    def broker_deliveries(self) -> float:
        """Deliveries/s one broker core makes."""
        return 1e6 / self.broker_us

    @property
    def broker_publications(self) -> float:
        """Publications/s one broker core delivers at this fan-out."""
        return self.broker_deliveries / self.fan_out

    @property
    def processes_fed(self) -> float:
        """Broker processes (one core each) the backend feeds when each has its own share of
        the channels (one process per publication) before Redis, not they, is the limit."""
        return self.masters * self.redis_publications(1) / self.broker_publications

    @property
    def redis_limit_w(self) -> float | None:
        """With every process subscribed to every channel (as measured), the W above which the
        backend runs fewer publications/s than one broker core delivers; None: never."""
        if self.slope <= 0:
            return None
        return max(
            0.0, (self.masters * 1e6 / self.broker_publications - self.intercept) / self.slope
        )


def capacity(one: Medians, subscribers: int) -> Capacity | None:
    points = [(float(w), r) for w, r in one.redis_us.items() if r is not None]
    broker_costs = [b for b in one.broker_us.values() if b]
    if not points or not broker_costs:
        return None
    slope, intercept = 0.0, max(r for _, r in points)
    if len(points) >= 2:
        fitted = statistics.linear_regression([w for w, _ in points], [r for _, r in points])
        if fitted.slope > 0 and fitted.intercept > 0:
            slope, intercept = fitted.slope, fitted.intercept
    masters = 1.0 / one.busiest_share if one.busiest_share else 1.0
    fan_out = subscribers / one.setup.channels
    # The dearest W's median: contention makes deliveries cheaper the more processes wait for a
    # core (more publications per write), so the cheapest figures are the least general.
    return Capacity(one.setup, intercept, slope, max(broker_costs), fan_out, masters)


def capacity_table(capacities: Sequence[Capacity]) -> list[str]:
    lines = [
        "| backend, channels | W | Redis µs/publication | publications/s per Redis core"
        " | deliveries/s per Redis core | publications/s the backend runs"
        " | deliveries/s the backend feeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for one in capacities:
        for workers in CAPACITY_W:
            redis_rate = one.redis_publications(workers)
            deliveries = redis_rate * one.fan_out * workers
            lines.append(
                f"| {one.setup.name} | {workers} | {one.intercept + one.slope * workers:.1f}"
                f" | {redis_rate:,.0f} | {deliveries:,.0f}"
                f" | {redis_rate * one.masters:,.0f} | {deliveries * one.masters:,.0f} |"
            )
    lines += [
        "",
        "| backend, channels | deliveries/s per broker core | publications/s per broker core"
        " | processes one backend feeds, channels split | W above which the backend is the"
        " limit, every process on every channel |",
        "|---|---|---|---|---|",
    ]
    for one in capacities:
        limit = one.redis_limit_w
        lines.append(
            f"| {one.setup.name} | {one.broker_deliveries:,.0f} | {one.broker_publications:,.0f}"
            f" | {one.processes_fed:.0f} | {'never (flat)' if limit is None else f'{limit:.0f}'} |"
        )
    return lines


def report(
    costs: Sequence[Cost], setups: Sequence[Setup], workers: Sequence[int], subscribers: int
) -> list[str]:
    lines = [*steps_table(costs), "", "Medians per configuration and W:", ""]
    all_medians = [medians(costs, setup, workers) for setup in setups]
    lines += medians_table(all_medians)
    capacities = [c for c in (capacity(m, subscribers) for m in all_medians) if c is not None]
    lines += ["", "Cost models (medians; Redis least squares over W, flat if no growth):", ""]
    for one in capacities:
        lines.append(
            f"- {one.setup.name}: Redis µs/publication ~ {one.intercept:.1f}"
            f" + {one.slope:.1f} x W; broker {one.broker_us:.1f} µs/delivery (dearest W);"
            f" {one.fan_out:.1f} deliveries per publication per process;"
            f" {one.masters:.2f} masters' worth of publications (1 / busiest share)"
        )
    lines += [
        "",
        "Capacity, extrapolated (a Redis core = one master; the backend = every master, the"
        " busiest the limit; deliveries with every process subscribed to every channel):",
        "",
        *capacity_table(capacities),
    ]
    return lines
