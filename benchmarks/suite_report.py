"""The suite's report: a markdown document (targets, one table per scenario) and a JSON file.

Every load figure is a row of deliveries per second, loss, latency p50/p99/max, server CPU per
1,000 deliveries, peak RSS, the generator's busiest process and the CPU the rest of the machine
used meanwhile; ratios divide a target's figure by each peer's (``naive``, ``node-ws``) from the
same run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import population_report, report
from benchmarks.connrate import ConnRateResult
from benchmarks.fanout import P99_LIMIT_MS, FanoutSeries, failure
from benchmarks.fmt import fmt_ms, fmt_ratio
from benchmarks.goals import SuiteResults, Verdict, common_rate, cpu_at, judge, peer_ratio
from benchmarks.idle import IdleResult
from benchmarks.scenarios import ScenarioResult
from benchmarks.stats import ratio
from benchmarks.targets import CHANNEL_PEERS, PEERS

Row = list[str]


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def _table(header: Sequence[str], rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows)
    return lines


def _lost(result: ScenarioResult) -> str:
    if result.lost == 0:
        return "0"
    return f"{result.lost} ({100 * result.lost_fraction:.2f}%)"


_LOAD_HEADER = [
    "deliveries/s",
    "lost",
    "p50 ms",
    "p99 ms",
    "max ms",
    "CPU ms/1k deliv.",
    "peak RSS MB",
    "generator CPU (busiest)",
    "other CPU",
]


def short(error: str | None, limit: int = 160) -> str:
    """An error message cut to fit a table cell (the JSON keeps it whole)."""
    text = " ".join((error or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _generator(total: float, busiest: float) -> str:
    return f"{100 * total:.0f}% ({100 * busiest:.0f}%)"


def _load_cells(result: ScenarioResult) -> Row:
    if not result.ok:
        return [f"ERROR: {short(result.error)}", *[""] * (len(_LOAD_HEADER) - 1)]
    latency = result.latency
    return [
        f"{result.deliveries_per_s:,.0f}",
        _lost(result),
        fmt_ms(latency.p50_ms if latency else None),
        fmt_ms(latency.p99_ms if latency else None),
        fmt_ms(latency.max_ms if latency else None),
        fmt_ms(result.server_cpu_ms_per_1k),
        f"{result.server_peak_rss_mb:.0f}",
        _generator(result.generator_cpu_share, result.generator_max_process_share),
        _pct(result.other_cpu_share),
    ]


def _peer_cells(
    results: Sequence[Any], target: str, figure: Callable[[Any], float | None], peers: Sequence[str]
) -> Row:
    return [fmt_ratio(peer_ratio(results, target, peer, figure)) for peer in peers]


def _cpu(result: ScenarioResult) -> float | None:
    return result.server_cpu_ms_per_1k


def _p99(result: ScenarioResult) -> float | None:
    return result.latency.p99_ms if result.latency else None


# --- sections -------------------------------------------------------------------------------------


def targets_section(verdicts: Sequence[Verdict]) -> list[str]:
    rows = [[str(v.number), v.goal, v.measured, f"**{v.label}**"] for v in verdicts]
    return ["## Targets", "", *_table(["#", "target", "measured", "verdict"], rows)]


def fanout_section(results: SuiteResults, peers: Sequence[str]) -> list[str]:
    series = results.fanout
    if not series:
        return []
    rate = common_rate(series)
    subscribers = int(results.settings.get("subscribers", 100))
    header = [
        "target",
        "highest sustained pub/s",
        *_LOAD_HEADER,
        f"CPU ms/1k @ {rate:g}/s" if rate else "CPU @ common",
        *(f"sustained ÷ {peer}" for peer in peers),
        *(f"CPU @ common ÷ {peer}" for peer in peers),
        "stopped because",
    ]
    rows = []
    for one in series:
        best = one.sustained
        cells = _load_cells(best) if best else ["none sustained", *[""] * (len(_LOAD_HEADER) - 1)]
        sustained = [
            fmt_ratio(ratio(_sustained(one), _sustained(results.series(peer)))) for peer in peers
        ]
        cpu_common = [
            fmt_ratio(ratio(cpu_at(one, rate), cpu_at(results.series(peer), rate)))
            for peer in peers
        ]
        rows.append(
            [
                one.target,
                f"{best.params.rate:g}" if best else "-",
                *cells,
                fmt_ms(cpu_at(one, rate)),
                *sustained,
                *cpu_common,
                short(one.error) or one.stop_reason,
            ]
        )
    message_bytes = results.settings.get("message_bytes", 200)
    return [
        "## Fan-out: one channel, step-up",
        "",
        f"{subscribers} subscribers on one channel, {message_bytes}-byte payloads; publication"
        f" rates stepped up until p99 > {P99_LIMIT_MS:g} ms, loss, or deliveries falling behind."
        f" Figures at each target's highest sustained rate; CPU also at {rate:g} publications/s,"
        " the highest rate every target sustained (the common rate).",
        "",
        *_table(header, rows),
    ]


def _sustained(series: FanoutSeries | None) -> float | None:
    best = series.sustained if series is not None else None
    return best.offered_per_s if best is not None else None


def fanout_steps_section(results: SuiteResults) -> list[str]:
    rows = []
    for series in results.fanout:
        for step in series.steps:
            why = failure(step)
            rows.append(
                [
                    series.target,
                    f"{step.params.rate:g}",
                    f"{step.offered_per_s:,.0f}",
                    *_load_cells(step),
                    "pass" if why is None else why,
                ]
            )
    if not rows:
        return []
    header = ["target", "pub/s", "offered deliveries/s", *_LOAD_HEADER, "step"]
    return ["### Every fan-out step", "", *_table(header, rows)]


def load_section(
    title: str,
    intro: str,
    results: Sequence[ScenarioResult],
    peers: Sequence[str],
    *,
    with_p99_ratio: bool = False,
) -> list[str]:
    if not results:
        return []
    header = [
        "target",
        "connected",
        *_LOAD_HEADER,
        *(f"CPU ÷ {peer}" for peer in peers),
        *((f"p99 ÷ {peer}" for peer in peers) if with_p99_ratio else ()),
    ]
    rows = [
        [
            result.target,
            f"{result.subscribers:,}",
            *_load_cells(result),
            *_peer_cells(results, result.target, _cpu, peers),
            *(_peer_cells(results, result.target, _p99, peers) if with_p99_ratio else []),
        ]
        for result in results
    ]
    return [f"## {title}", "", intro, "", *_table(header, rows)]


def stalled_section(results: SuiteResults, peers: Sequence[str]) -> list[str]:
    if not results.stalled:
        return []
    header = [
        "target",
        "K stalled",
        *_LOAD_HEADER,
        "stalled: owed / kernel MB, dropped",
        *(f"p99 ÷ {peer} (same K)" for peer in peers),
    ]
    rows = []
    for result in results.stalled:
        same_k = [r for r in results.stalled if r.stalled == result.stalled]
        rows.append(
            [
                result.target,
                str(result.stalled),
                *_load_cells(result),
                report.stalled_summary(result) if result.ok else "",
                *_peer_cells(same_k, result.target, _p99, peers),
            ]
        )
    isolation = [
        [
            row["target"],
            str(row["stalled"]),
            fmt_ratio(row["p99_ratio"]),
            str(row["lost"]),
            "met" if row["goal_met"] else "not met",
        ]
        for row in report.isolation(results.stalled)
    ]
    settings = results.settings.get("stalled", {})
    return [
        "## Stalled clients",
        "",
        f"{settings.get('subscribers')} healthy subscribers, K clients that join and never read,"
        f" {settings.get('rate')} publications/s of {settings.get('message_bytes')} bytes for"
        f" {settings.get('duration')} s (`benchmarks.scenarios.stalled_clients`).",
        "",
        *_table(header, rows),
        "",
        f"Isolation (goal: p99 with K stalled <= {report.P99_GOAL}x K = 0, nothing lost):",
        "",
        *_table(["target", "K", "p99 ÷ K=0", "lost", "goal"], isolation),
    ]


def idle_section(results: Sequence[IdleResult], peers: Sequence[str]) -> list[str]:
    if not results:
        return []
    header = [
        "target",
        "connected",
        "RSS before MB",
        "RSS with them MB",
        "KiB per connection",
        "server CPU ms/1k conn.",
        "open all (s)",
        *(f"÷ {peer}" for peer in peers),
    ]
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.target, f"ERROR: {short(result.error)}", *[""] * (len(header) - 2)])
            continue
        rows.append(
            [
                result.target,
                f"{result.connected:,}",
                f"{result.rss_base_mb:.1f}",
                f"{result.rss_open_mb:.1f}",
                fmt_ms(result.per_connection_kib),
                fmt_ms(result.server_cpu_ms_per_1k_connections),
                f"{result.connect_s:.1f}",
                *_peer_cells(results, result.target, _per_connection, peers),
            ]
        )
    return [
        "## Idle connections",
        "",
        "Server RSS (the process tree's VmRSS) after a warm-up of 50 connections, then with every"
        " connection open and joined (plus the idle publisher), divided by the connections.",
        "",
        *_table(header, rows),
    ]


def _per_connection(result: IdleResult) -> float | None:
    return result.per_connection_kib


def _per_second(result: ConnRateResult) -> float | None:
    return result.per_second


def _conn_cpu(result: ConnRateResult) -> float | None:
    return result.server_cpu_ms_per_1k


def connrate_section(results: Sequence[ConnRateResult], peers: Sequence[str]) -> list[str]:
    if not results:
        return []
    header = [
        "target",
        "opened",
        "connections/s",
        "s for 10,000",
        "failures",
        "open p50 ms",
        "open p99 ms",
        "open max ms",
        "server CPU ms/1k conn.",
        "peak RSS MB",
        "generator CPU (busiest)",
        "other CPU",
        *(f"rate ÷ {peer}" for peer in peers),
        *(f"CPU ÷ {peer}" for peer in peers),
    ]
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.target, f"ERROR: {short(result.error)}", *[""] * (len(header) - 2)])
            continue
        latency = result.open_latency
        rows.append(
            [
                result.target,
                f"{result.cycles:,}",
                f"{result.per_second:,.0f}",
                fmt_ms(result.seconds_for_10k),
                str(sum(result.failures.values())),
                fmt_ms(latency.p50_ms if latency else None),
                fmt_ms(latency.p99_ms if latency else None),
                fmt_ms(latency.max_ms if latency else None),
                fmt_ms(result.server_cpu_ms_per_1k),
                f"{result.peak_rss_mb:.0f}",
                _generator(result.generator_cpu_share, result.generator_max_process_share),
                _pct(result.other_cpu_share),
                *_peer_cells(results, result.target, _per_second, peers),
                *_peer_cells(results, result.target, _conn_cpu, peers),
            ]
        )
    concurrency = results[0].concurrency
    wanted = results[0].wanted
    amount = (
        f"until {wanted:,} have opened" if wanted else f"for about {results[0].duration_s:.0f} s"
    )
    return [
        "## Connection rate",
        "",
        f"{concurrency} loops in all open a connection, complete the target's own opening"
        " handshake (`/v1/ws`: until `welcome`; NATS: `CONNECT` + `PING` answered `PONG`;"
        f" socket.io: the namespace connect acknowledged) and close it, {amount}.",
        "",
        *_table(header, rows),
    ]


# --- the document -----------------------------------------------------------------------------


def markdown(results: SuiteResults, meta: dict[str, Any]) -> str:
    """The whole report as markdown."""
    peers = [peer for peer in PEERS if peer in meta.get("targets", PEERS)]
    settings = results.settings
    verdicts = judge(results)
    lines = [
        f"# Benchmark suite, {meta.get('created', '')}",
        "",
        f"Machine: {meta.get('cores')} cores, {meta.get('memory_gib', 0):.0f} GiB,"
        f" {meta.get('platform')}; Python {meta.get('python')}, node {meta.get('node') or 'absent'}"
        f" (ws {meta.get('node_ws') or '-'}); broker at {meta.get('git')}. Mode:"
        f" {'quick' if meta.get('quick') else 'full'}, {meta.get('elapsed_s', 0):.0f} s."
        " Server and generator share the machine; the `other CPU` column is what the rest of"
        " the machine used meanwhile (200% = both cores): above ~20% figures are disturbed.",
        "",
        *targets_section(verdicts),
        "",
        *fanout_section(results, peers),
        "",
        *load_section(
            "Many channels",
            f"{settings.get('channels')} channels x {settings.get('per_channel')} subscribers on"
            f" `/v1/ws`, {settings.get('channels_rate')} publications/s round-robin over the"
            f" channels for {settings.get('channels_duration')} s, against the channel peers (the"
            " NATS server over WebSocket, Node socket.io 4 with rooms) in their own protocols."
            " The plain targets (naive, node-ws, broker-chat) have a single room and take no"
            " part.",
            results.channels,
            [peer for peer in CHANNEL_PEERS if any(r.target == peer for r in results.channels)],
            with_p99_ratio=True,
        ),
        "",
        *stalled_section(results, peers),
        "",
        *idle_section(results.idle, peers),
        "",
        *connrate_section(results.connect_rate, peers),
        "",
        *load_section(
            "10,000 connections",
            f"{settings.get('c10k_connections')} subscribers on one channel of one server process,"
            f" one {settings.get('message_bytes')}-byte broadcast per second for"
            f" {settings.get('c10k_duration')} s.",
            results.c10k,
            peers,
            with_p99_ratio=True,
        ),
        "",
        *population_section(results),
        "",
        *_notes(results),
        "",
        *fanout_steps_section(results),
    ]
    return "\n".join(lines).replace("\n\n\n", "\n\n").strip() + "\n"


def population_section(results: SuiteResults) -> list[str]:
    """Each 19,000- or 100,000-connection run's own report, headings one level down."""
    lines: list[str] = []
    for figures in results.population:
        text = population_report.markdown(figures, {"created": "", "cores": "", "memory_gib": 0})
        body = text.splitlines()[4:]  # the heading and the machine line are the suite's
        lines += [f"## {figures.scenario}: {figures.connections:,} connections", "", *body, ""]
    return lines


def _notes(results: SuiteResults) -> list[str]:
    lines = [f"- {note}" for note in results.notes]
    labelled = [
        *(("many channels", r) for r in results.channels),
        *(("stalled", r) for r in results.stalled),
        *(("10,000 connections", r) for r in results.c10k),
        *(("fan-out", r) for series in results.fanout for r in series.steps),
    ]
    for scenario, result in labelled:
        for line in report.notes([result])[1:]:
            text = line.strip()
            if scenario != "stalled":
                text = text.replace(f"{result.target} K={result.stalled}:", f"{result.target}:")
            if scenario == "fan-out":
                text = f"{result.target} at {result.params.rate:g}/s:" + text.partition(":")[2]
            lines.append(f"- {scenario}, {text}")
    return ["## Notes", "", *lines] if lines else []


def write(results: SuiteResults, meta: dict[str, Any], directory: Path, stamp: str) -> Path:
    """Write ``suite-<stamp>.json`` and ``suite-<stamp>.md``; returns the markdown's path."""
    directory.mkdir(parents=True, exist_ok=True)
    verdicts = judge(results)
    document = {
        "meta": meta,
        "settings": results.settings,
        "targets": [dataclasses.asdict(v) | {"verdict": v.label} for v in verdicts],
        "common_rate": common_rate(results.fanout),
        "fanout": [
            dataclasses.asdict(series)
            | {"sustained_rate": series.sustained.params.rate if series.sustained else None}
            for series in results.fanout
        ],
        "channels": [dataclasses.asdict(r) for r in results.channels],
        "stalled": [dataclasses.asdict(r) for r in results.stalled],
        "stalled_isolation": report.isolation(results.stalled),
        "idle": [dataclasses.asdict(r) for r in results.idle],
        "connect_rate": [dataclasses.asdict(r) for r in results.connect_rate],
        "c10k": [dataclasses.asdict(r) for r in results.c10k],
        "population": [
            dataclasses.asdict(f) | {"met": population_report.targets_met(f)}
            for f in results.population
        ],
        "notes": results.notes,
    }
    (directory / f"suite-{stamp}.json").write_text(
        json.dumps(document, indent=2, default=str) + "\n"
    )
    path = directory / f"suite-{stamp}.md"
    path.write_text(markdown(results, meta))
    return path
