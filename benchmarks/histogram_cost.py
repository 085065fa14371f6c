"""What the delivery-latency histogram costs: CPU per delivery with it on and off, in one tree.

The same server code runs each step; only ``monitor.delivery_latency`` differs
(``BROKER_MONITOR__DELIVERY_LATENCY``). Steps come in ABBA quadruples (on, off, off, on; then
off, on, on, off; ...), each on a fresh server under the isolation scenario's load with no stalled
client (``scenarios.stalled_clients``, K = 0): ``--subscribers`` on one channel of ``/v1/ws``,
``--rate`` publications/s of ``--message-bytes``. Per quadruple, the difference of the two means
(on minus off, as a share of off) is one sample: a slow drift of the machine's load cancels
inside a quadruple. The summary gives the mean difference with a 95% interval over the samples
and says whether it is within ``--bound`` (5%).

On a shared machine the server's CPU per delivery moves by more than the histogram's cost from
one step to the next: read the interval, not one step, and prefer a quiet machine.

    .venv/bin/python -m benchmarks.histogram_cost                   # 6 quadruples, ~4 min
    .venv/bin/python -m benchmarks.histogram_cost --quadruples 2 --duration 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.scenarios import LoadParams, stalled_clients
from benchmarks.targets import build_targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETTING = "BROKER_MONITOR__DELIVERY_LATENCY"

#: Two-sided 95% quantiles of Student's t by degrees of freedom (1-10); 1.96 beyond.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.histogram_cost",
        description="CPU per delivery with the delivery-latency histogram on and off (ABBA).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quadruples", type=int, default=6, help="ABBA groups of 4 steps")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="publications per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--message-bytes", type=int, default=200)
    parser.add_argument("--target", default="broker-v1-json")
    parser.add_argument("--bound", type=float, default=0.05, help="the largest cost allowed")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quadruples < 1 or args.subscribers < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--quadruples, --subscribers, --rate and --duration must be positive")
    return args


def interval(samples: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% interval (0 width for one sample)."""
    mean = statistics.fmean(samples)
    if len(samples) < 2:
        return mean, math.inf
    t = T95.get(len(samples) - 1, 1.96)
    return mean, t * statistics.stdev(samples) / math.sqrt(len(samples))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = LoadParams(
        subscribers=args.subscribers,
        rate=args.rate,
        duration=args.duration,
        message_bytes=args.message_bytes,
        workers=2,
        drain_timeout=2.0,
    )
    targets = {
        on: build_targets({SETTING: "true" if on else "false"})[args.target] for on in (True, False)
    }
    log_dir = args.results / "logs"
    say(
        f"{args.target}: {args.subscribers} subscribers, {args.rate:g}/s x {args.message_bytes} B,"
        f" {args.duration:g} s steps, {args.quadruples} ABBA quadruples;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    say()
    say("| quadruple | histogram | µs per delivery | lost | other CPU |")
    say("|---|---|---|---|---|")
    samples: list[float] = []
    figures: dict[bool, list[float]] = {True: [], False: []}
    began = time.monotonic()
    for quadruple in range(args.quadruples):
        first = quadruple % 2 == 0
        order = (first, not first, not first, first)
        got: dict[bool, list[float]] = {True: [], False: []}
        for on in order:
            result = stalled_clients(targets[on], 0, params, log_dir)
            if not result.ok or result.server_cpu_ms_per_1k is None:
                say(f"step failed ({result.error}); stopping")
                return 1
            got[on].append(result.server_cpu_ms_per_1k)
            figures[on].append(result.server_cpu_ms_per_1k)
            say(
                f"| {quadruple + 1} | {'on' if on else 'off'} |"
                f" {result.server_cpu_ms_per_1k:.2f} | {result.lost} |"
                f" {result.other_cpu_share:.0%} |"
            )
        off = statistics.fmean(got[False])
        samples.append((statistics.fmean(got[True]) - off) / off)
    mean, half = interval(samples)
    say()
    say(
        f"CPU per delivery, medians: on {statistics.median(figures[True]):.2f} µs,"
        f" off {statistics.median(figures[False]):.2f} µs"
    )
    say(
        f"cost of the histogram (on - off) / off, per quadruple:"
        f" {', '.join(f'{s:+.1%}' for s in samples)}"
    )
    verdict = "within" if mean + half <= args.bound else "NOT shown within"
    say(
        f"mean {mean:+.1%} ± {half:.1%} (95%): {verdict} the {args.bound:.0%} bound;"
        f" load average {os.getloadavg()[0]:.2f}; {time.monotonic() - began:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
