"""The highest rate sustained with many channels, against the peers: one command, one run.

``--channels`` x ``--per-channel`` subscribers (1,000 x 10) on ``/v1/ws``, the NATS server over
WebSocket and Node socket.io 4 with rooms, each spoken to in its own protocol; an open-loop
publisher round-robin over the channels. For each target the publication rate doubles from
``--start`` until a step fails, then ``--refinements`` steps bisect between the last pass and the
first failure (``benchmarks.fanout.step_up``: a step passes with nothing lost, every publication
sent, deliveries within 5% of offered and p99 at most 100 ms; a failed step is repeated once on a
fresh server before it counts). Every step connects the whole population anew.

Reported per target: the highest rate sustained, CPU per delivery at each step, and the
generator's busiest process (a step whose generator process passed 90% of a core is marked: at
that rate the generator, not the server, may be the limit). Writes
``results/channels-max-<stamp>.json`` and ``.md``.

    .venv/bin/python -m benchmarks.channels_max                  # ~5-8 minutes
    .venv/bin/python -m benchmarks.channels_max --channels 200 --duration 3 --targets broker-v1-json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fanout import GENERATOR_BUSY, FanoutSeries, Ladder, failure, step_up
from benchmarks.fdlimit import raise_nofile
from benchmarks.outputs import say, write_report
from benchmarks.peers.versions import peer_versions
from benchmarks.population import many_channels_params, with_room_for
from benchmarks.stalled import wait_quiet
from benchmarks.targets import build_targets, chosen_targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.channels_max",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", default="broker-v1-json,nats,socketio", help="comma-separated")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--start", type=float, default=1000.0, help="first rate, publications/s")
    parser.add_argument("--max-rate", type=float, default=32000.0)
    parser.add_argument("--refinements", type=int, default=2)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per target")
    parser.add_argument("--message-bytes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="generator subscriber processes")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each target, wait at most this long for the machine to go quiet",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the broker from this tree (its broker and protocol packages)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_table(series: Sequence[FanoutSeries]) -> list[str]:
    lines = [
        "| target | rate /s | deliveries/s | lost | p50 ms | p99 ms | server CPU µs per delivery"
        " | server CPU | generator busiest | other CPU | verdict |",
        "|" + "---|" * 11,
    ]
    for one in series:
        for step in one.steps:
            why = failure(step)
            latency = step.latency
            busy = step.generator_max_process_share
            verdict = "pass" if why is None else f"fail: {why}"
            if busy > GENERATOR_BUSY:
                verdict += " (generator-bound)"
            lines.append(
                f"| {one.target} | {step.params.rate:g} | {step.deliveries_per_s:,.0f} |"
                f" {step.lost} | {_f(latency.p50_ms if latency else None, 2)} |"
                f" {_f(latency.p99_ms if latency else None, 1)} |"
                f" {_f(step.server_cpu_ms_per_1k)} | {100 * step.server_cpu_share:.0f}% |"
                f" {100 * busy:.0f}% | {100 * step.other_cpu_share:.0f}% | {verdict} |"
            )
    return lines


def summary_table(series: Sequence[FanoutSeries]) -> list[str]:
    lines = [
        "| target | highest rate sustained /s | deliveries/s there | CPU µs per delivery there"
        " | why the series stopped |",
        "|---|---|---|---|---|",
    ]
    for one in series:
        best = one.sustained
        lines.append(
            f"| {one.target} | {best.params.rate if best else 0:g} |"
            f" {best.deliveries_per_s if best else 0:,.0f} |"
            f" {_f(best.server_cpu_ms_per_1k if best else None)} |"
            f" {one.error or one.stop_reason} |"
        )
    return lines


def ratio_lines(series: Sequence[FanoutSeries], subject: str) -> list[str]:
    rates = {one.target: (one.sustained.params.rate if one.sustained else 0.0) for one in series}
    mine = rates.get(subject)
    if not mine:
        return []
    return [
        f"- {subject} / {peer}: highest rate sustained {mine / theirs:.2f}x"
        for peer, theirs in rates.items()
        if peer != subject and not peer.startswith("broker") and theirs
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    log_dir = args.results / "logs" / f"channels-max-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    subscribers = args.channels * args.per_channel
    params = many_channels_params(
        channels=args.channels,
        per_channel=args.per_channel,
        rate=args.start,
        duration=args.duration,
        message_bytes=args.message_bytes,
        workers=args.workers,
    )
    ladder = Ladder(args.start, args.max_rate, args.refinements, args.retries)
    load_before = os.getloadavg()

    def progress(message: str) -> None:
        say(f"  {message}")

    series: list[FanoutSeries] = []
    for target in chosen_targets(args.targets, build_targets(), args.baseline, say):
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet, progress)
        say(f"{target.name}: stepping up from {args.start:g}/s (load {os.getloadavg()[0]:.2f})")
        one = step_up(
            with_room_for(target, subscribers),
            ladder,
            params,
            log_dir,
            budget_s=args.budget,
            progress=progress,
        )
        series.append(one)
        best = one.sustained
        say(f"  {target.name}: sustained {best.params.rate if best else 0:g}/s; {one.stop_reason}")
    load_after = os.getloadavg()
    lines = [
        f"# Highest rate sustained, {args.channels:,} x {args.per_channel} channels:"
        f" {created:%Y-%m-%d %H:%M} UTC",
        "",
        f"{os.cpu_count()} cores; load average (1 min) {load_before[0]:.2f} before,"
        f" {load_after[0]:.2f} after; {args.duration:g} s per step, {args.message_bytes}-byte"
        f" payloads, broker defaults; {peer_versions()}.",
        "",
        *summary_table(series),
        "",
        *ratio_lines(series, "broker-v1-json"),
        *ratio_lines(series, "broker-v1-json@baseline"),
        "",
        "Every step:",
        "",
        *step_table(series),
    ]
    record: dict[str, Any] = {
        "created": created.isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "series": [dataclasses.asdict(one) for one in series],
    }
    write_report(args.results, f"channels-max-{stamp}", lines, record, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
