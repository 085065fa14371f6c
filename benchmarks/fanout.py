"""Fan-out step-up: one channel, N subscribers, publication rates stepped up until one fails.

Each step is a fresh load run (``scenarios.run_load``) against the target's server. A step passes
when nothing is lost, every planned publication went out, deliveries kept up with the offered rate
(within 5%) and p99 stays at or under ``P99_LIMIT_MS``.

The ladder (``ladder``): the rate doubles from ``start`` until a step fails (or ``max_rate``),
then ``refinements`` steps bisect (geometrically) between the last pass and the first failure,
each on a fresh server, since an overloaded server may still be working off its backlog. A
failed step is run once more on a fresh server before it counts (``retries``): the machine is
shared, and one pause elsewhere should not end a series. The series also ends when the server
dies or the target's time budget is spent. The highest passing
step is the target's sustained rate; the doubling rates are shared by every target, so CPU per
delivery can be compared at a common rate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.scenarios import LoadParams, ScenarioResult, run_load
from benchmarks.server import ServerProcess, ServerStartError
from benchmarks.targets import Target

P99_LIMIT_MS = 100.0
#: Deliveries per second must reach this share of the offered rate.
KEEP_UP = 0.95
#: Busiest generator process above this share of a core: the generator may be the bottleneck.
GENERATOR_BUSY = 0.9


@dataclasses.dataclass(frozen=True)
class FanoutSeries:
    """Every step run against one target, and why the series stopped."""

    target: str
    description: str
    steps: list[ScenarioResult]
    stop_reason: str
    error: str | None = None

    @property
    def sustained(self) -> ScenarioResult | None:
        """The highest-rate step that passed."""
        passing = [step for step in self.steps if failure(step) is None]
        return max(passing, key=lambda step: step.params.rate, default=None)

    def at_rate(self, rate: float) -> ScenarioResult | None:
        """The step at ``rate``: the passing one when it was repeated, else the last."""
        found = [step for step in self.steps if step.params.rate == rate]
        passing = [step for step in found if failure(step) is None]
        chosen = passing or found
        return chosen[-1] if chosen else None


def failure(step: ScenarioResult) -> str | None:
    """Why a step does not count as sustained, or None when it passed."""
    if not step.ok:
        return f"error: {step.error}"
    if step.server_died is not None:
        return f"server died (exit {step.server_died})"
    if step.lost > 0:
        return f"lost {step.lost} ({100 * step.lost_fraction:.2f}%)"
    if step.sent < step.planned:
        return f"publisher sent {step.sent} of {step.planned}"
    p99 = step.latency.p99_ms if step.latency else None
    if p99 is None or p99 > P99_LIMIT_MS:
        return f"p99 {p99:.0f} ms > {P99_LIMIT_MS:.0f} ms" if p99 is not None else "no latency"
    if step.deliveries_per_s < KEEP_UP * step.offered_per_s:
        return f"delivered {step.deliveries_per_s:.0f}/s of {step.offered_per_s:.0f}/s offered"
    return None


@dataclasses.dataclass(frozen=True)
class Ladder:
    """Rates to try: doubling from ``start`` up to ``max_rate``, then bisection steps."""

    start: float = 100.0
    max_rate: float = 12800.0
    refinements: int = 2
    #: Times a failed step is repeated (on a fresh server) before the failure counts.
    retries: int = 1

    def doubling(self) -> list[float]:
        rates = [self.start]
        while rates[-1] * 2 <= self.max_rate:
            rates.append(rates[-1] * 2)
        return rates


def nice(rate: float) -> float:
    """``rate`` rounded to two significant digits (1130 -> 1100)."""
    if rate <= 0:
        return rate
    digits = len(str(int(rate))) - 2
    return float(round(rate, -digits)) if digits > 0 else float(round(rate))


def _start(target: Target, log_dir: Path, attempt: int) -> ServerProcess:
    suffix = "" if attempt == 0 else f"-{attempt}"
    return ServerProcess(target.command, log_path=log_dir / f"{target.name}-fanout{suffix}.log")


def step_up(
    target: Target,
    ladder: Ladder,
    params: LoadParams,
    log_dir: Path,
    *,
    budget_s: float,
    progress: Callable[[str], None] = lambda _: None,
) -> FanoutSeries:
    """Double the rate until a step fails, then bisect; see the module's docstring."""
    began = time.monotonic()
    steps: list[ScenarioResult] = []
    reason = f"every rate up to {ladder.max_rate:g}/s passed"
    servers = 0
    server = _start(target, log_dir, servers)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        tail = server.log_tail(5).replace("\n", " | ")
        error = f"server start: {exc}; log: {tail}"
        return FanoutSeries(target.name, target.description, [], "server start failed", error)

    def restart() -> None:
        nonlocal server, servers
        server.stop()
        servers += 1
        server = _start(target, log_dir, servers)
        server.start()

    def run(rate: float) -> str | None:
        why: str | None = None
        for attempt in range(ladder.retries + 1):
            if attempt > 0:
                if time.monotonic() - began > budget_s:
                    break
                progress(f"{target.name} {rate:g}/s: again on a fresh server, to confirm")
                restart()
            step = run_load(server, target, dataclasses.replace(params, rate=rate))
            steps.append(step)
            why = failure(step)
            note = f" -> {why}" if why else ""
            progress(f"{target.name} {rate:g}/s: {_summary(step)}{note}")
            if why is None:
                return None
            if step.generator_max_process_share > GENERATOR_BUSY:
                why += " (a generator process was saturated: generator-bound)"
        return why

    try:
        passed: float | None = None
        failed: float | None = None
        for rate in ladder.doubling():
            if time.monotonic() - began > budget_s:
                reason = f"time budget ({budget_s:.0f} s) spent before {rate:g}/s"
                break
            why = run(rate)
            if why is not None:
                failed, reason = rate, f"{rate:g}/s failed: {why}"
                break
            passed = rate
        for _ in range(ladder.refinements if failed is not None and passed is not None else 0):
            assert failed is not None and passed is not None
            rate = nice((passed * failed) ** 0.5)
            if rate <= passed or rate >= failed or time.monotonic() - began > budget_s:
                break
            restart()  # the failed step may have left a backlog: start afresh
            why = run(rate)
            if why is None:
                passed = rate
            else:
                failed, reason = rate, f"{rate:g}/s failed: {why}"
    except (ServerStartError, OSError) as exc:
        reason = f"server restart failed: {exc}"
    finally:
        server.stop()
    return FanoutSeries(target.name, target.description, steps, reason)


def _summary(step: ScenarioResult) -> str:
    if not step.ok:
        return f"ERROR {step.error}"
    latency = step.latency
    p99 = f"{latency.p99_ms:.1f}" if latency and latency.p99_ms is not None else "-"
    cpu = f"{step.server_cpu_ms_per_1k:.1f}" if step.server_cpu_ms_per_1k is not None else "-"
    return (
        f"{step.deliveries_per_s:.0f} deliveries/s, p99 {p99} ms, lost {step.lost},"
        f" cpu {cpu} ms/1k, server {100 * step.server_cpu_share:.0f}%,"
        f" generator busiest {100 * step.generator_max_process_share:.0f}%"
    )
