"""Many channels at moderate rates, against the peers: one command, one run, side by side.

Two loads where batching cannot help much, each target on a fresh server, one after another:

- **channels**: ``--channels`` x ``--per-channel`` subscribers on ``/v1/ws`` (1,000 x 10), an
  open-loop publisher round-robin over the channels at ``--channels-rate`` (2,000/s), against
  the broker (``broker-v1-json``), the NATS server over WebSocket (``nats``) and Node socket.io 4
  with rooms (``socketio``), each spoken to in its own protocol.
- **chat**: ``--chat-subscribers`` (100) on ``/ws/chat`` at ``--chat-rate`` (200/s), against the
  broker (``broker-chat``) and the tutorial's design (``naive``), plus Node ``ws`` when present.

With ``--rounds N`` the whole sequence runs N times over (targets interleaved, so that a busy
spell of the machine hits every target alike) and the summary gives each target's median.

With ``--baseline DIR`` (a checkout, or an exported tree, of another revision's ``broker`` and
``protocol`` packages) the broker targets also run from there (``PYTHONPATH=DIR``), as
``<target>@baseline``, in the same run: before and after a change, side by side. With
``--interpreter LABEL=PYTHON`` (a venv's ``python`` with the project installed) they also run
this checkout on that interpreter, as ``<target>@LABEL``: the same code on two builds of
CPython (docs/performance.md, "The interpreter's build").

Each row gives deliveries/s, loss, p50/p99/max (publish to receipt), the server's CPU per
delivery, and what else used the machine: the generator (the publisher's own share, to show it
does not spin), the CPU of everything else during the run, and the load average before and
after. Writes ``results/moderate-<stamp>.json`` and ``.md``.

    .venv/bin/python -m benchmarks.moderate                     # 15 s per target, ~3 min
    .venv/bin/python -m benchmarks.moderate --duration 5 --channels 200
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.fdlimit import raise_nofile
from benchmarks.outputs import say, write_report
from benchmarks.peers.versions import peer_versions
from benchmarks.population import many_channels
from benchmarks.scenarios import LoadParams, ScenarioResult, run_load
from benchmarks.server import ServerProcess, ServerStartError, pin_servers
from benchmarks.stalled import wait_quiet
from benchmarks.targets import (
    Target,
    build_targets,
    chosen_targets,
    with_broker_env,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Row:
    load: str
    target: str
    result: ScenarioResult
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    round: int = 1


@dataclasses.dataclass(frozen=True)
class Median:
    """One target's medians over the rounds of one load."""

    load: str
    target: str
    runs: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_us: float | None
    other_cpu: float


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def medians(rows: Sequence[Row]) -> list[Median]:
    grouped: dict[tuple[str, str], list[ScenarioResult]] = {}
    for row in rows:
        if row.result.ok:
            grouped.setdefault((row.load, row.target), []).append(row.result)
    out = []
    for (load, target), results in grouped.items():
        out.append(
            Median(
                load=load,
                target=target,
                runs=len(results),
                lost=sum(r.lost for r in results),
                p50_ms=_median([r.latency.p50_ms if r.latency else None for r in results]),
                p99_ms=_median([r.latency.p99_ms if r.latency else None for r in results]),
                cpu_us=_median([r.server_cpu_ms_per_1k for r in results]),
                other_cpu=statistics.median(r.other_cpu_share for r in results),
            )
        )
    return out


def median_table(summary: Sequence[Median]) -> list[str]:
    lines = [
        "| load | target | runs | lost (all runs) | median p50 ms | median p99 ms |"
        " median server CPU µs per delivery | median other CPU |",
        "|" + "---|" * 8,
    ]
    lines.extend(
        f"| {m.load} | {m.target} | {m.runs} | {m.lost} | {_ms(m.p50_ms)} | {_ms(m.p99_ms)} |"
        f" {_us(m.cpu_us)} | {100 * m.other_cpu:.0f}% |"
        for m in summary
    )
    return lines


def fixed_rate(
    target: Target,
    params: LoadParams,
    log_path: Path,
    progress: Callable[[str], None],
) -> ScenarioResult:
    """One load run at a fixed rate against a fresh server of ``target``."""
    server = ServerProcess(target.command, log_path=log_path, start_timeout=30)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        base = ScenarioResult(target.name, target.description, 0, params, ok=False)
        return dataclasses.replace(base, error=f"server start: {exc}")
    try:
        return run_load(server, target, params, progress, stop_server_first=True)
    finally:
        server.stop()


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _load(values: tuple[float, float, float]) -> str:
    return f"{values[0]:.2f}"


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| load | target (round) | deliveries/s | lost | p50 ms | p99 ms | max ms | server CPU µs"
        " per delivery | server CPU | publisher CPU (wake-ups) | generator busiest | other CPU |"
        " load avg before -> after |",
        "|" + "---|" * 13,
    ]
    for row in rows:
        r = row.result
        if not r.ok:
            lines.append(f"| {row.load} | {row.target} | error: {r.error} |" + " |" * 10)
            continue
        latency = r.latency
        lines.append(
            f"| {row.load} | {row.target} ({row.round}) | {r.deliveries_per_s:,.0f} | {r.lost} |"
            f" {_ms(latency.p50_ms if latency else None)} |"
            f" {_ms(latency.p99_ms if latency else None)} |"
            f" {_ms(latency.max_ms if latency else None)} |"
            f" {_us(r.server_cpu_ms_per_1k)} | {100 * r.server_cpu_share:.0f}% |"
            f" {100 * r.publisher_cpu_share:.0f}% ({r.publisher_wakeups:,}) |"
            f" {100 * r.generator_max_process_share:.0f}% | {100 * r.other_cpu_share:.0f}% |"
            f" {_load(row.load_before)} -> {_load(row.load_after)} |"
        )
    return lines


def ratios(summary: Sequence[Median], load: str, subject: str, peers: Sequence[str]) -> list[str]:
    """``subject``'s median p50, p99 and CPU per delivery over each peer's, for one load."""
    by_target = {m.target: m for m in summary if m.load == load}
    mine = by_target.get(subject)
    if mine is None:
        return []
    lines = []
    for peer in peers:
        other = by_target.get(peer)
        if other is None:
            continue
        parts = []
        for label, a, b in (
            ("p50", mine.p50_ms, other.p50_ms),
            ("p99", mine.p99_ms, other.p99_ms),
            ("CPU/delivery", mine.cpu_us, other.cpu_us),
        ):
            if a is not None and b:
                parts.append(f"{label} {a / b:.2f}x")
        lines.append(f"- {load}: {subject} / {peer}: {', '.join(parts)}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.moderate",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--loads", default="channels,chat", help="comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per target")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every target")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--channels-rate", type=float, default=2000.0)
    parser.add_argument(
        "--channels-targets", default="broker-v1-json,nats,socketio", help="comma-separated"
    )
    parser.add_argument("--chat-subscribers", type=int, default=100)
    parser.add_argument("--chat-rate", type=float, default=200.0)
    parser.add_argument("--chat-targets", default="broker-chat,naive", help="comma-separated")
    parser.add_argument("--message-bytes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra BROKER_* environment for the broker targets (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the broker targets from another revision's packages in DIR",
    )
    parser.add_argument(
        "--interpreter",
        action="append",
        default=[],
        metavar="LABEL=PYTHON",
        help=(
            "also run the broker targets on another Python (a venv's python with the project"
            " installed), as <target>@LABEL (repeatable)"
        ),
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each target, wait up to this long for the machine to be nearly idle",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run every server on the last CPU and the generator on the others",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    placement = pin_servers() if args.pin else "not pinned"
    say(placement)
    broker_env = dict(item.split("=", 1) for item in args.broker_env)
    interpreters = {
        label: Path(python) for label, python in (item.split("=", 1) for item in args.interpreter)
    }
    known = {name: with_broker_env(target, broker_env) for name, target in build_targets().items()}
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    log_dir = args.results / "logs" / f"moderate-{stamp}"
    loads = [part.strip() for part in args.loads.split(",") if part.strip()]
    rows: list[Row] = []
    overall_before = os.getloadavg()

    def progress(message: str) -> None:
        say(f"  {message}")

    def measure(load: str, target: Target, round_: int, run: Callable[[], ScenarioResult]) -> None:
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet, progress)
        before = os.getloadavg()
        say(f"{load}: {target.name}, round {round_} (load average {before[0]:.2f})")
        result = run()
        rows.append(Row(load, target.name, result, before, os.getloadavg(), round_))
        say(f"  -> {table(rows[-1:])[-1]}")

    channels_load = f"{args.channels} x {args.per_channel}, {args.channels_rate:g}/s"
    chat_load = f"/ws/chat {args.chat_subscribers} subs, {args.chat_rate:g}/s"
    channels_targets = (
        chosen_targets(args.channels_targets, known, args.baseline, say, interpreters)
        if "channels" in loads
        else []
    )
    chat_targets = (
        chosen_targets(args.chat_targets, known, args.baseline, say, interpreters)
        if "chat" in loads
        else []
    )
    chat_params = LoadParams(
        subscribers=args.chat_subscribers,
        rate=args.chat_rate,
        duration=args.duration,
        message_bytes=args.message_bytes,
        workers=args.workers,
        drain_timeout=3.0,
        client="fast",
    )
    for round_ in range(1, args.rounds + 1):
        for target in channels_targets:

            def channels_run(target: Target = target, round_: int = round_) -> ScenarioResult:
                return many_channels(
                    target,
                    channels=args.channels,
                    per_channel=args.per_channel,
                    rate=args.channels_rate,
                    duration=args.duration,
                    message_bytes=args.message_bytes,
                    workers=args.workers,
                    log_dir=log_dir / f"round-{round_}",
                    progress=progress,
                )

            measure(channels_load, target, round_, channels_run)
        for target in chat_targets:

            def chat_run(target: Target = target, round_: int = round_) -> ScenarioResult:
                log_path = log_dir / f"round-{round_}" / f"{target.name}-chat.log"
                return fixed_rate(target, chat_params, log_path, progress)

            measure(chat_load, target, round_, chat_run)
    overall_after = os.getloadavg()
    summary = medians(rows)
    lines = [
        f"# Many channels, moderate rates: {created:%Y-%m-%d %H:%M} UTC",
        "",
        f"{os.cpu_count()} cores; load average (1 min) {overall_before[0]:.2f} before the run,"
        f" {overall_after[0]:.2f} after; {args.duration:g} s per target, {args.rounds} round(s);"
        f" {args.message_bytes}-byte payloads; broker environment {broker_env or 'default'};"
        f" {peer_versions()}; {placement}.",
        "",
        *table(rows),
        "",
        *median_table(summary),
        "",
        *ratios(summary, channels_load, "broker-v1-json", ["nats", "socketio"]),
        *ratios(summary, channels_load, "broker-v1-json@baseline", ["nats", "socketio"]),
        *ratios(summary, chat_load, "broker-chat", ["naive", "node-ws"]),
        *ratios(summary, chat_load, "broker-chat@baseline", ["naive", "node-ws"]),
    ]
    record: dict[str, Any] = {
        "created": created.isoformat(timespec="seconds"),
        "load_average_before": overall_before,
        "load_average_after": overall_after,
        "rows": [dataclasses.asdict(row) for row in rows],
        "medians": [dataclasses.asdict(m) for m in summary],
    }
    write_report(args.results, f"moderate-{stamp}", lines, record, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
