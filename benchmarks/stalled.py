"""Isolation: do stalled clients hold back healthy ones? The broker against the tutorial's design.

For each target and each K, a fresh server gets N healthy subscribers on one channel, K stalled
clients (joined, never reading) and an open-loop publisher; the run prints deliveries per second,
publish-to-receipt latency, loss by healthy clients, server CPU per 1,000 deliveries and peak
RSS, then the ratios: K stalled vs none per target, and each broker target vs the naive design.

The defaults (100 subscribers, 50 publications/s of 16 KiB for 10 s) push ~8 MB through the
channel, well past the ~3 MB the kernel absorbs for a stalled client, so a design that awaits each
send in turn freezes mid-run; and they keep deliveries at 5,000/s, where neither the naive design
nor the broker saturates its core on a 2-core machine, so that p99 measures isolation rather
than overload. ``--rate 200 --message-bytes 4096`` is a heavier variant with the same bytes.

    .venv/bin/python -m benchmarks.stalled                  # naive + broker targets, K = 0,1,5
    .venv/bin/python -m benchmarks.stalled --quick          # the same in under a minute
    .venv/bin/python -m benchmarks.stalled --targets naive  # only the tutorial's design
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import report
from benchmarks.scenarios import LoadParams, ScenarioResult, stalled_clients
from benchmarks.server import machine_busy_seconds
from benchmarks.targets import broker_available, build_targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_TARGETS = "naive,broker-chat,broker-v1"

#: --quick: half the subscribers, 3 s runs (still ~4.9 MB per stalled client), under a minute.
QUICK = {"subscribers": 50, "rate": 100.0, "duration": 3.0, "drain": 2.0}


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wait_quiet(limit: float, progress: Callable[[str], None], threshold: float = 0.2) -> None:
    """Wait, at most ``limit`` seconds, until the machine is nearly idle (sampled per second)."""
    began = time.monotonic()
    busy = 0.0
    while time.monotonic() - began < limit:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < threshold:
            if time.monotonic() - began > 1.5:
                progress(f"machine quiet after {time.monotonic() - began:.0f} s")
            return
        if time.monotonic() - began < 1.5:
            progress(f"machine busy ({100 * busy:.0f}% of a core used by others): waiting")
    progress(f"machine still busy ({100 * busy:.0f}%) after {limit:.0f} s: going on")


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stalled",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=100, help="healthy subscribers (N)")
    parser.add_argument("--rate", type=float, default=50.0, help="publications per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--message-bytes", type=int, default=16384, help="payload size")
    parser.add_argument("--stalled", type=_int_list, default=[0, 1, 5], help="values of K")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated targets")
    parser.add_argument("--workers", type=int, default=2, help="subscriber processes")
    parser.add_argument(
        "--drain", type=float, default=5.0, help="seconds to wait for late publications"
    )
    parser.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the broker, e.g. BROKER_QUEUE__MAX_BYTES=2097152",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"short runs for a smoke test: defaults become {QUICK}",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario, wait up to this long for the rest of the machine to use"
        " under 20%% of a core (the machine is shared: other work disturbs latency)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON output folder")
    args = parser.parse_args(argv)
    if args.quick:  # explicit options still win over the quick defaults
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.subscribers < 1 or args.workers < 1 or not args.stalled or min(args.stalled) < 0:
        parser.error("--subscribers and --workers must be >= 1, --stalled a list of K >= 0")
    if args.rate <= 0 or args.duration <= 0 or args.drain < 0 or args.message_bytes < 50:
        parser.error("--rate and --duration must be > 0, --drain >= 0, --message-bytes >= 50")
    return args


def _broker_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--broker-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    targets = build_targets(_broker_env(args.broker_env))
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in targets]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {sorted(targets)}")
    if any(name.startswith("broker") for name in names) and not broker_available():
        say("broker/cli.py does not exist yet: skipping the broker targets")
        names = [name for name in names if not name.startswith("broker")]
    params = LoadParams(
        subscribers=args.subscribers,
        rate=args.rate,
        duration=args.duration,
        message_bytes=args.message_bytes,
        workers=args.workers,
        drain_timeout=args.drain,
    )
    pushed = args.rate * args.duration * args.message_bytes
    say(
        f"{args.subscribers} subscribers, {args.rate:g} msg/s x {args.message_bytes} B for"
        f" {args.duration:g} s (~{pushed / 1e6:.1f} MB per stalled client),"
        f" K = {args.stalled}, targets {names}"
    )
    results: list[ScenarioResult] = []
    log_dir = args.results / "logs"
    began = time.monotonic()

    def progress(message: str) -> None:
        say(f"[{time.monotonic() - began:5.1f} s] {message}")

    for name in names:
        for stalled in args.stalled:
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet, progress)
            result = stalled_clients(targets[name], stalled, params, log_dir, progress=progress)
            results.append(result)
            progress(report.table([result])[-1].strip())
    say()
    for line in [*report.table(results), "", *report.legend()]:
        say(line)
    isolation = report.isolation(results)
    say()
    for line in [
        *report.isolation_lines(isolation),
        *report.versus_lines(report.versus(results)),
        *report.notes(results),
    ]:
        say(line)
    meta = {"argv": list(argv if argv is not None else sys.argv[1:]), "params": vars(args)}
    path = report.write_json(results, meta, args.results, "stalled")
    say(f"\nJSON: {path}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
