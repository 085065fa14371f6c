"""Turn scenario results into a readable table, ratios and a JSON file.

``table`` prints one row per (target, K); ``isolation_lines`` compares each target's K > 0 runs
with its K = 0 run against the isolation goal (p99 within 1.5x, nothing lost by healthy clients);
``versus_lines`` compares each broker target with the naive design under the same K. ``write_json``
stores everything, including the run's parameters, under ``benchmarks/results/``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.fmt import fmt_ms, fmt_ratio
from benchmarks.scenarios import MB, ScenarioResult
from benchmarks.stats import ratio

#: The isolation goal: healthy clients' p99 with stalled clients within this factor of K = 0.
P99_GOAL = 1.5
BASELINE = "naive"
#: Cores' worth of CPU used by other processes during a run above which its figures are suspect.
DISTURBED = 0.2

_COLUMNS = (
    ("target", 12, "<"),
    ("K", 2, ">"),
    ("deliv/s", 8, ">"),
    ("offered", 8, ">"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("max ms", 8, ">"),
    ("lost", 16, ">"),
    ("unsent", 6, ">"),
    ("cpu ms/1k", 9, ">"),
    ("srv cpu", 7, ">"),
    ("RSS MB", 13, ">"),
    ("gen cpu", 11, ">"),
    ("other", 5, ">"),
    ("stalled: owed/kernel MB, dropped", 34, "<"),
)


def _lost(result: ScenarioResult) -> str:
    if result.lost == 0:
        return "0"
    return f"{result.lost} {100 * result.lost_fraction:.0f}% ({result.clients_with_loss}c)"


def _stalled(result: ScenarioResult) -> str:
    report = result.stalled_report
    if report is None or report.count == 0:
        return "-"
    kernel = max(report.peak_kernel_bytes, default=0) / MB
    text = f"{report.pushed_bytes_each / MB:.1f} / {kernel:.1f}"
    fills = [after for after in report.filled_after_s if after is not None]
    if fills:
        text += f" full@{min(fills):.1f}s"
    text += f", dropped {report.dropped}/{report.count}"
    drops = [after for after in report.dropped_after_s if after is not None]
    if drops:
        text += f" @{min(drops):.1f}" + (f"-{max(drops):.1f}s" if len(drops) > 1 else "s")
    return text


def stalled_summary(result: ScenarioResult) -> str:
    """What happened to the stalled clients, as one table cell."""
    return _stalled(result)


def _row(result: ScenarioResult) -> list[str]:
    if not result.ok:
        return [result.target, str(result.stalled), f"ERROR: {result.error}"]
    latency = result.latency
    return [
        result.target,
        str(result.stalled),
        f"{result.deliveries_per_s:.0f}",
        f"{result.offered_per_s:.0f}",
        fmt_ms(latency.p50_ms if latency else None),
        fmt_ms(latency.p99_ms if latency else None),
        fmt_ms(latency.max_ms if latency else None),
        _lost(result),
        str(result.planned - result.sent),
        fmt_ms(result.server_cpu_ms_per_1k),
        f"{100 * result.server_cpu_share:.0f}%",
        f"{result.server_rss_before_mb:.0f}->{result.server_peak_rss_mb:.0f}",
        f"{100 * result.generator_cpu_share:.0f}% ({100 * result.generator_max_process_share:.0f})",
        f"{100 * result.other_cpu_share:.0f}%",
        _stalled(result),
    ]


def table(results: Sequence[ScenarioResult]) -> list[str]:
    """The results as an aligned text table, one line per scenario."""
    header = [name for name, _, _ in _COLUMNS]
    lines = []
    for cells in [header, *(_row(result) for result in results)]:
        if len(cells) < len(_COLUMNS):  # an error row: the message runs to the end of the line
            lines.append("  ".join([f"{cells[0]:<12}", f"{cells[1]:>2}", *cells[2:]]))
            continue
        lines.append(
            "  ".join(
                f"{cell:{align}{width}}"
                for cell, (_, width, align) in zip(cells, _COLUMNS, strict=True)
            ).rstrip()
        )
    lines.insert(1, "-" * len(lines[0]))
    return lines


def legend() -> list[str]:
    return [
        "deliv/s: publications received by healthy subscribers per second of publishing;"
        " offered: rate x subscribers.",
        "p50/p99/max: publish-to-receipt latency of what arrived. lost: owed to healthy"
        " subscribers but not received by the drain deadline (Nc = clients that lost any).",
        "unsent: publications the publisher could not send (server stopped reading it)."
        " cpu ms/1k: server CPU per 1,000 deliveries; srv cpu: share of one core.",
        "RSS MB: server before publishing -> peak (sampled every 50 ms, and VmHWM)."
        " gen cpu: the benchmark's own processes, sum (busiest one), share of one core.",
        "other: CPU used by everything else on the machine meanwhile (2 cores = 200%): above"
        " ~20% the numbers are disturbed.",
        "stalled: MB each stalled client was owed / most the kernel held for one (about 3/4 of"
        " tcp_wmem max), full@ when that filled; how many the server dropped, and when"
        " (seconds into publishing).",
    ]


def _by_key(results: Iterable[ScenarioResult]) -> dict[tuple[str, int], ScenarioResult]:
    return {(result.target, result.stalled): result for result in results if result.ok}


def isolation(results: Sequence[ScenarioResult]) -> list[dict[str, Any]]:
    """For each target and K > 0: p99 ratio to K = 0, loss, and whether the goal is met."""
    found = _by_key(results)
    rows = []
    for (target, stalled), result in found.items():
        base = found.get((target, 0))
        if stalled == 0 or base is None:
            continue
        p99 = result.latency.p99_ms if result.latency else None
        base_p99 = base.latency.p99_ms if base.latency else None
        p99_ratio = ratio(p99, base_p99)
        # The same with lost publications counted as never arriving (None: the p99 is lost).
        p99_all = result.latency.p99_incl_lost_ms if result.latency else None
        p99_all_ratio = ratio(p99_all, base.latency.p99_incl_lost_ms if base.latency else None)
        met = p99_ratio is not None and p99_ratio <= P99_GOAL and result.lost == 0
        rows.append(
            {
                "target": target,
                "stalled": stalled,
                "p99_ratio": p99_ratio,
                "p99_incl_lost_ratio": p99_all_ratio,
                "lost": result.lost,
                "lost_fraction": result.lost_fraction,
                "deliveries_ratio": ratio(result.deliveries_per_s, base.deliveries_per_s),
                "goal_met": met,
                "disturbed": max(result.other_cpu_share, base.other_cpu_share) > DISTURBED,
            }
        )
    return rows


def isolation_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [f"Isolation: p99 with K stalled / p99 with K=0 (goal <= {P99_GOAL}x, 0 lost)"]
    for row in rows:
        verdict = "meets goal" if row["goal_met"] else "FAILS goal"
        if row["disturbed"] and not row["lost"]:  # loss is no noise; latency may be
            verdict += " (machine busy with other work: rerun)"
        lost = (
            f"lost {row['lost']} ({100 * row['lost_fraction']:.0f}%)" if row["lost"] else "lost 0"
        )
        lines.append(
            f"  {row['target']:<12} K={row['stalled']}: p99 {fmt_ratio(row['p99_ratio'])}"
            f" (counting lost as never: {fmt_ratio(row['p99_incl_lost_ratio'], 'lost')}),"
            f" deliveries {fmt_ratio(row['deliveries_ratio'])}, {lost}: {verdict}"
        )
    return lines


def versus(results: Sequence[ScenarioResult]) -> list[dict[str, Any]]:
    """Each non-baseline target against the naive design at the same K."""
    found = _by_key(results)
    rows = []
    for (target, stalled), result in found.items():
        base = found.get((BASELINE, stalled))
        if target == BASELINE or base is None:
            continue
        rows.append(
            {
                "target": target,
                "stalled": stalled,
                "p99_ratio": ratio(
                    result.latency.p99_ms if result.latency else None,
                    base.latency.p99_ms if base.latency else None,
                ),
                "deliveries_ratio": ratio(result.deliveries_per_s, base.deliveries_per_s),
                "cpu_per_delivery_ratio": ratio(
                    result.server_cpu_ms_per_1k, base.server_cpu_ms_per_1k
                ),
                "peak_rss_ratio": ratio(result.server_peak_rss_mb, base.server_peak_rss_mb),
                "lost": result.lost,
                "baseline_lost": base.lost,
            }
        )
    return rows


def versus_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        f"Against {BASELINE} (same K): ratio = target / {BASELINE}",
        *(
            f"  {row['target']:<12} K={row['stalled']}: p99 {fmt_ratio(row['p99_ratio'])},"
            f" deliveries/s {fmt_ratio(row['deliveries_ratio'])},"
            f" cpu/delivery {fmt_ratio(row['cpu_per_delivery_ratio'])},"
            f" peak RSS {fmt_ratio(row['peak_rss_ratio'])},"
            f" lost {row['lost']} vs {row['baseline_lost']}"
            for row in rows
        ),
    ]


def notes(results: Sequence[ScenarioResult]) -> list[str]:
    """Anything unusual a reader should see: errors, closes, order problems, a busy generator."""
    lines = []
    for result in results:
        if not result.ok:
            continue
        items = []
        if result.server_died is not None:
            items.append(f"the server died during the run (exit code {result.server_died})")
        if result.connect_failures:
            items.append(f"{result.connect_failures} subscribers failed to connect")
        if result.duplicates or result.out_of_order:
            items.append(f"duplicates {result.duplicates}, out of order {result.out_of_order}")
        if result.gaps:
            items.append(f"gap messages {result.gaps}")
        if result.closes:
            items.append(f"healthy connections closed: {result.closes}")
        if result.errors:
            items.append(f"errors: {result.errors}")
        if result.publisher_blocked:
            items.append("publisher blocked in a send at the deadline")
        if result.publisher_max_lag_ms > 50:
            items.append(f"publisher fell {result.publisher_max_lag_ms:.0f} ms behind schedule")
        if result.other_cpu_share > DISTURBED:
            items.append(
                f"other processes used {100 * result.other_cpu_share:.0f}% of a core meanwhile:"
                " latency and CPU figures are disturbed"
            )
        if result.generator_max_process_share > 0.9:
            items.append(
                f"a generator process used {100 * result.generator_max_process_share:.0f}%"
                " of a core: it may be the bottleneck"
            )
        if items:
            lines.append(f"  {result.target} K={result.stalled}: " + "; ".join(items))
    return ["Notes:", *lines] if lines else []


def write_json(
    results: Sequence[ScenarioResult], meta: dict[str, Any], directory: Path, name: str
) -> Path:
    """Store the results with ratios and the run's parameters; returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    path = directory / f"{name}-{now:%Y%m%dT%H%M%SZ}.json"
    document = {
        "meta": {
            **meta,
            "created": now.isoformat(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "scenarios": [dataclasses.asdict(result) for result in results],
        "isolation": isolation(results),
        "versus_naive": versus(results),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path
