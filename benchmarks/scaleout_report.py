"""The scale-out benchmark's report: every step as a table, the legend, the sustained rate of
each series, the W = 2 / W = 1 ratio against the goal, what the CPU figures say, and the JSON."""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.fmt import fmt_ms, fmt_ratio
from benchmarks.scaleout_plan import DISTURBED, GENERATOR_BUSY, TARGET_RATIO, Plan, Series, Step
from benchmarks.stats import ratio

_COLUMNS = (
    ("#", 1, ">"),
    ("W", 1, ">"),
    ("rate/s", 6, ">"),
    ("deliv/s", 8, ">"),
    ("p50 ms", 6, ">"),
    ("p99 ms", 6, ">"),
    ("max ms", 6, ">"),
    ("lost", 6, ">"),
    ("conns/worker", 12, ">"),
    ("server cpu (workers)", 20, ">"),
    ("ms/1k", 5, ">"),
    ("redis", 5, ">"),
    ("gen cpu (max)", 13, ">"),
    ("other", 5, ">"),
    ("result", 0, "<"),
)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _row(round_number: int, step: Step) -> list[str]:
    rate = f"{step.rate:g}" + ("*" if step.attempt > 1 else "")
    if not step.ok:
        return [str(round_number), str(step.workers), rate, f"ERROR {step.error}"]
    workers = "+".join(f"{100 * cpu:.0f}" for cpu in step.worker_cpu)
    cpu_1k = "-" if step.server_cpu_ms_per_1k is None else f"{step.server_cpu_ms_per_1k:.1f}"
    return [
        str(round_number),
        str(step.workers),
        rate,
        f"{step.deliveries_per_s:.0f}",
        fmt_ms(step.p50_ms),
        fmt_ms(step.p99_ms),
        fmt_ms(step.max_ms),
        str(step.lost),
        "/".join(str(count) for count in step.connections_per_worker),
        f"{_pct(step.server_cpu)} ({workers})",
        cpu_1k,
        _pct(step.redis_cpu),
        f"{_pct(step.generator_cpu)} ({_pct(step.generator_busiest)})",
        _pct(step.other_cpu),
        "pass" if step.failure is None else f"FAIL: {step.failure}",
    ]


def table(series: Sequence[Series]) -> list[str]:
    """Every step of every series, one line each."""
    header = [name for name, _, _ in _COLUMNS]
    rows = [
        _row(one.round, step)
        for one in series
        for step in sorted(one.steps, key=lambda s: (s.rate, s.attempt))
    ]
    lines = []
    for cells in [header, *rows]:
        if len(cells) < len(_COLUMNS):
            lines.append(
                "  ".join([f"{cells[0]:>1}", f"{cells[1]:>1}", f"{cells[2]:>6}", *cells[3:]])
            )
            continue
        lines.append(
            "  ".join(
                f"{cell:{align}{width}}"
                for cell, (_, width, align) in zip(cells, _COLUMNS, strict=True)
            ).rstrip()
        )
    lines.insert(1, "-" * len(lines[0]))
    return lines


def legend(plan: Plan) -> list[str]:
    return [
        "#: round (the whole comparison is run that many times, each broker started afresh).",
        f"rate/s: publications per second on one channel to {plan.subscribers} /v1/ws"
        f" subscribers ({plan.message_bytes}-byte payloads, {plan.duration:g} s);"
        " * = run again because the machine was busy.",
        "deliv/s: publications received per second; p50/p99/max: publish-to-receipt latency."
        " conns/worker: connections each broker process accepted (subscribers + publisher).",
        "server cpu: the broker's whole process tree, share of one core (2 cores = 200%), with"
        " each worker's share; ms/1k: server CPU ms per 1,000 deliveries.",
        "redis: redis-server's CPU; gen cpu: the load generator's processes (sum, busiest one);"
        " other: the rest of the machine meanwhile.",
    ]


def _sustained_line(one: Series) -> str:
    step = one.sustained
    head = f"  round {one.round}, W={one.workers}:"
    if step is None:
        return f"{head} none ({one.stop_reason}{'; ' + one.error if one.error else ''})"
    per_core = step.deliveries_per_s / step.server_cpu if step.server_cpu else 0.0
    busy = step.server_cpu + step.redis_cpu + step.generator_cpu + step.other_cpu
    return (
        f"{head} {step.rate:g} publications/s -> {step.deliveries_per_s:,.0f} deliveries/s,"
        f" p50 {fmt_ms(step.p50_ms)} ms, p99 {fmt_ms(step.p99_ms)} ms;"
        f" server {_pct(step.server_cpu)},"
        f" redis {_pct(step.redis_cpu)}, generator {_pct(step.generator_cpu)}"
        f" (busiest {_pct(step.generator_busiest)}), other {_pct(step.other_cpu)}:"
        f" {_pct(busy)} of 200%; {per_core:,.0f} deliveries per server CPU-second"
        f"\n      stopped: {one.stop_reason}"
    )


def _ratio_of(one: Step | None, two: Step | None) -> float | None:
    return ratio(two.deliveries_per_s if two else None, one.deliveries_per_s if one else None)


def _notes(series: Sequence[Series]) -> list[str]:
    notes = []
    for one in series:
        name = f"round {one.round}, W={one.workers}"
        step = one.sustained
        if step is not None and step.generator_busiest > GENERATOR_BUSY:
            notes.append(
                f"{name}: a generator process was at {_pct(step.generator_busiest)}"
                " of a core at the sustained step: the generator may be the bottleneck"
            )
        if one.log_levels:
            counts = ", ".join(
                f"{count} {level}" for level, count in sorted(one.log_levels.items())
            )
            notes.append(f"{name}: broker log {one.server_log}: {counts}")
            notes.extend(f"    {line}" for line in one.log_sample)
        if one.exit_code not in (0, None):
            notes.append(f"{name}: broker exit code {one.exit_code} after SIGTERM")
        disturbed = [step for step in one.steps if step.ok and step.other_cpu > DISTURBED]
        if disturbed:
            rates = ", ".join(f"{step.rate:g}" for step in disturbed)
            notes.append(
                f"{name}: the rest of the machine used > {_pct(DISTURBED)} of a core"
                f" during the steps at {rates}/s: those figures are disturbed"
            )
    return notes


def _per_delivery_us(step: Step, cpu: float) -> float:
    return 1e6 * cpu / step.deliveries_per_s if step.deliveries_per_s else 0.0


def _cpu_lines(series: Sequence[Series], best: dict[int, Step | None]) -> list[str]:
    """What the CPU figures say about the ratio: cost per delivery and what 1.7x would need."""
    lines = []
    one, two = best.get(1), best.get(2)
    # The highest rate that passed with both W in one round: same load, CPU side by side.
    for round_number in sorted({s.round for s in series}):
        passed = {
            s.workers: {step.rate: step for step in s.steps if step.failure is None}
            for s in series
            if s.round == round_number
        }
        common = set(passed.get(1, {})) & set(passed.get(2, {}))
        if common:
            rate = max(common)
            a, b = passed[1][rate], passed[2][rate]
            lines.append(
                f"Same load, round {round_number}, {rate:g}/s ({a.deliveries_per_s:,.0f}"
                f" deliveries/s): server CPU {_pct(a.server_cpu)} with W=1,"
                f" {_pct(b.server_cpu)} with W=2 ({fmt_ratio(ratio(b.server_cpu, a.server_cpu))});"
                f" p99 {fmt_ms(a.p99_ms)} vs {fmt_ms(b.p99_ms)} ms"
            )
    if one is None or two is None or not two.deliveries_per_s:
        return lines
    server = _per_delivery_us(two, two.server_cpu)
    generator = _per_delivery_us(two, two.generator_cpu)
    redis_cost = _per_delivery_us(two, two.redis_cpu)
    wanted = TARGET_RATIO * one.deliveries_per_s
    cores = psutil.cpu_count() or 2
    need = wanted * (server + generator + redis_cost) / 1e6
    lines.append(
        f"CPU arithmetic (from the measured costs, not a measurement): {TARGET_RATIO}x the W=1"
        f" figure is {wanted:,.0f} deliveries/s; at the W=2 step's cost per delivery (server"
        f" {server:.1f} us, generator {generator:.1f} us, redis {redis_cost:.1f} us) that takes"
        f" {_pct(need)} of the machine's {100 * cores}%, the generator's part alone"
        f" {_pct(wanted * generator / 1e6)}"
    )
    return lines


def summary(series: Sequence[Series], plan: Plan) -> tuple[list[str], dict[str, Any]]:
    """The sustained figures per W, the ratios and the verdict, as lines and as JSON."""
    lines = [f"Highest sustained rate (p99 <= {plan.p99_ms:g} ms, nothing lost, kept up):"]
    lines += [_sustained_line(one) for one in series]
    best: dict[int, Step | None] = {}
    per_round: dict[int, float | None] = {}
    for one in series:
        step = one.sustained
        held = best.get(one.workers)
        if held is None or (step is not None and step.deliveries_per_s > held.deliveries_per_s):
            best[one.workers] = step
    for round_number in sorted({one.round for one in series}):
        of_round = {one.workers: one.sustained for one in series if one.round == round_number}
        per_round[round_number] = _ratio_of(of_round.get(1), of_round.get(2))
    achieved = _ratio_of(best.get(1), best.get(2))
    met = achieved is not None and achieved >= TARGET_RATIO
    measured = [value for value in per_round.values() if value is not None]
    if len(per_round) > 1:
        lines.append(
            "Ratio W=2 / W=1 per round: "
            + ", ".join(
                f"round {number}: {fmt_ratio(value)}" for number, value in per_round.items()
            )
            + (f" (median {statistics.median(measured):.2f}x)" if measured else "")
        )
    if achieved is None:
        lines.append("Ratio W=2 / W=1: not measurable (a series had no passing step)")
    else:
        lines.append(
            f"Ratio W=2 / W=1 of the highest sustained deliveries/s"
            f"{' (best round of each)' if len(per_round) > 1 else ''}: {achieved:.2f}x;"
            f" target {TARGET_RATIO}x at the same p99 bound: {'MET' if met else 'NOT MET'}"
        )
    lines += _cpu_lines(series, best)
    notes = _notes(series)
    if notes:
        lines += ["Notes:", *(f"  {note}" for note in notes)]
    verdict_json = {
        "p99_bound_ms": plan.p99_ms,
        "sustained_deliveries_per_s": {
            str(workers): step.deliveries_per_s if step else None for workers, step in best.items()
        },
        "ratio_per_round": {str(number): value for number, value in per_round.items()},
        "ratio_median_of_rounds": statistics.median(measured) if measured else None,
        "ratio": achieved,
        "target": TARGET_RATIO,
        "met": met,
    }
    return lines, verdict_json


def write_json(
    series: Sequence[Series], plan: Plan, verdict: dict[str, Any], meta: dict[str, Any], out: Path
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    path = out / f"scaleout-{now:%Y%m%dT%H%M%SZ}.json"
    document = {
        "meta": {
            **meta,
            "created": now.isoformat(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": psutil.cpu_count(),
        },
        "plan": dataclasses.asdict(plan),
        "verdict": verdict,
        "series": [
            {
                **dataclasses.asdict(one),
                "sustained_rate": one.sustained.rate if one.sustained else None,
            }
            for one in series
        ],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def brief(step: Step) -> str:
    if not step.ok:
        return f"ERROR {step.error}"
    text = (
        f"{step.deliveries_per_s:,.0f} deliveries/s,"
        f" p50 {fmt_ms(step.p50_ms)} p99 {fmt_ms(step.p99_ms)}"
        f" ms, lost {step.lost}, server {_pct(step.server_cpu)}, redis {_pct(step.redis_cpu)},"
        f" generator {_pct(step.generator_cpu)} (busiest {_pct(step.generator_busiest)}),"
        f" other {_pct(step.other_cpu)}"
    )
    return text + ("" if step.failure is None else f" -> {step.failure}")
