"""Issue #3: do stalled clients hold back healthy ones? The broker against the tutorial's design.

For each target and each K, a fresh server gets N healthy subscribers on one channel, K stalled
clients (joined, never reading) and an open-loop publisher; the run prints deliveries per second,
publish-to-receipt latency, loss by healthy clients, server CPU per 1,000 deliveries and peak
RSS, then the ratios: K stalled vs none per target, and each broker target vs the naive design.

The defaults push ~8 MB through the channel per run, well past the ~3 MB the kernel absorbs for
a stalled client, so a design that awaits each send in turn freezes mid-run.

    .venv/bin/python -m benchmarks.stalled                  # naive + broker targets, K = 0,1,5
    .venv/bin/python -m benchmarks.stalled --quick          # the same in under a minute
    .venv/bin/python -m benchmarks.stalled --targets naive  # only the tutorial's design
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import report
from benchmarks.scenarios import LoadParams, ScenarioResult, stalled_clients
from benchmarks.targets import broker_available, build_targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_TARGETS = "naive,broker-chat,broker-v1"

#: --quick: fewer subscribers, shorter runs, bigger messages (still > 3 MB per stalled client).
QUICK = {"subscribers": 50, "rate": 200.0, "duration": 4.0, "message_bytes": 8192, "drain": 2.0}


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stalled",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=100, help="healthy subscribers (N)")
    parser.add_argument("--rate", type=float, default=200.0, help="publications per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    parser.add_argument("--message-bytes", type=int, default=4096, help="payload size")
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
        help=f"short runs for a smoke test: {QUICK} unless given explicitly",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON output folder")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {action.dest: action.default for action in parser._actions}
        for key, value in QUICK.items():
            dest = key.replace("-", "_")
            if getattr(args, dest) == defaults[dest]:
                setattr(args, dest, value)
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
    for name in names:
        for stalled in args.stalled:
            result = stalled_clients(targets[name], stalled, params, log_dir, progress=say)
            results.append(result)
            say("  " + report.table([result])[-1].strip())
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
