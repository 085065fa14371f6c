"""Scale-out: fan-out through the Redis backplane with one broker process and with two.

A private ``redis-server`` (no persistence, free loopback port) is started; then for W in (1, 2)
a broker on it: ``broker serve --port P`` for W = 1, ``broker serve --workers 2 --port P`` for
W = 2 (uvicorn's processes share one listening socket, so the kernel spreads the connections
over them), both with ``BROKER_BACKPLANE__KIND=redis``. Against each, N subscribers on
``/v1/ws`` (``broker.v1.json``) join one channel and an open-loop publisher sends ~200-byte
publications at a rate stepped up (doubling, then bisected between the last rate that passed and
the first that failed) until p99 passes the bound or loss appears. A step passes when nothing is
lost, every planned publication went out, deliveries kept up with the offered rate (95%) and
p99 <= the bound.

Per step it prints deliveries/s, p50/p99/max, the broker's CPU (every process of the tree:
supervisor and workers, with each worker's share), Redis's CPU (psutil on its pid), the load
generator's own CPU (its processes, sum and busiest) and what the rest of the machine used. Then
the ratio of the highest sustained deliveries/s with W = 2 over W = 1 (same p99 bound), against
the 1.7x scale-out goal, per round and for the best round of each W: the full run repeats the
whole comparison three times (each broker started afresh, so the kernel's split of connections
over the workers is drawn again), the quick run twice with shorter steps. A step that fails
while the rest of the machine used more than a quarter of a core is run again once. The
generator shares the 2 cores with the broker and Redis: read its CPU beside the figures; the
summary also works out how much CPU 1.7x would take at the measured costs per delivery
(docs/scaleout.md says what that means).

    .venv/bin/python -m benchmarks.scaleout            # full: 7.5 minutes at most
    .venv/bin/python -m benchmarks.scaleout --quick    # under 3 minutes
    .venv/bin/python -m benchmarks.scaleout --wait-quiet 20 --subscribers 200 --rounds 1

Writes ``benchmarks/results/scaleout-<stamp>.json`` and the brokers' and Redis's logs under
``benchmarks/results/logs/``.

This module is the command line; the parts: ``scaleout_plan`` (plan, step and series records,
when a step passes), ``scaleout_broker`` (the broker under test: its command, its processes,
their CPU and connections, readiness), ``scaleout_redis`` (the private Redis), ``scaleout_step``
(one step, one series of steps), ``scaleout_report`` (tables, summary, JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from benchmarks.scaleout_plan import FULL, QUICK, RESULTS_DIR, Plan, Series
from benchmarks.scaleout_redis import RedisProcess, RedisStartError
from benchmarks.scaleout_report import legend, summary, table, write_json
from benchmarks.scaleout_step import step_up
from benchmarks.stalled import wait_quiet
from benchmarks.targets import broker_available


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _workers_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: Sequence[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaleout",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"shorter steps: {QUICK}")
    parser.add_argument("--workers", type=_workers_list, help="broker processes to compare")
    parser.add_argument("--subscribers", type=int, help="subscribers on the channel (N)")
    parser.add_argument("--message-bytes", type=int, help="payload size")
    parser.add_argument("--start-rate", type=float, help="first rate, publications/s")
    parser.add_argument("--max-rate", type=float, help="highest rate tried")
    parser.add_argument("--refine", type=int, help="bisection steps after the first failure")
    parser.add_argument("--duration", type=float, help="seconds of publishing per step")
    parser.add_argument("--drain", type=float, help="seconds to wait for late publications")
    parser.add_argument("--p99-ms", type=float, help="p99 bound of a sustained step")
    parser.add_argument("--generator-workers", type=int, help="subscriber processes")
    parser.add_argument("--rounds", type=int, help="times the whole comparison is run")
    parser.add_argument("--budget", type=float, help="seconds for the whole run")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each broker, wait up to this long for the rest of the machine to go quiet",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON output folder")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides = {
        "workers": args.workers,
        "subscribers": args.subscribers,
        "message_bytes": args.message_bytes,
        "start_rate": args.start_rate,
        "max_rate": args.max_rate,
        "refine": args.refine,
        "duration": args.duration,
        "drain": args.drain,
        "p99_ms": args.p99_ms,
        "generator_workers": args.generator_workers,
        "rounds": args.rounds,
        "budget_s": args.budget,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if not plan.workers or min(plan.workers) < 1 or plan.subscribers < 1 or plan.rounds < 1:
        parser.error("--workers must list counts >= 1, --subscribers and --rounds be >= 1")
    if plan.start_rate <= 0 or plan.duration <= 0 or plan.message_bytes < 50:
        parser.error("--start-rate and --duration must be > 0, --message-bytes >= 50")
    return plan, args


def main(argv: Sequence[str] | None = None) -> int:
    plan, args = parse_args(argv)
    if not broker_available():
        say("broker/cli.py does not exist: nothing to measure")
        return 1
    began = time.monotonic()
    deadline = began + plan.budget_s

    def progress(message: str) -> None:
        say(f"[{time.monotonic() - began:5.1f} s] {message}")

    log_dir = args.results / "logs"
    say(
        f"{plan.subscribers} subscribers on one channel, {plan.message_bytes}-byte payloads,"
        f" {plan.duration:g} s steps from {plan.start_rate:g}/s, p99 bound {plan.p99_ms:g} ms,"
        f" W = {list(plan.workers)} x {plan.rounds} round(s); {psutil.cpu_count()} cores"
        " shared by the broker, Redis and the generator"
    )
    series: list[Series] = []
    try:
        with RedisProcess(log_dir / "scaleout-redis.log") as redis_server:
            redis_version = redis_server.version()
            progress(f"redis-server {redis_version} pid {redis_server.pid} on {redis_server.url}")
            runs = [(r, w) for r in range(1, plan.rounds + 1) for w in plan.workers]
            for index, (round_number, workers) in enumerate(runs):
                if args.wait_quiet > 0:
                    wait_quiet(
                        min(args.wait_quiet, max(0.0, deadline - time.monotonic())), progress
                    )
                # Each broker gets an equal share of what is left; 12 s for its start and stop.
                share = (deadline - time.monotonic()) / (len(runs) - index)
                series_deadline = time.monotonic() + share - 12.0
                series.append(
                    step_up(
                        workers,
                        round_number,
                        plan,
                        redis_server,
                        log_dir,
                        series_deadline,
                        progress,
                    )
                )
    except RedisStartError as exc:
        say(f"redis: {exc}")
        return 1
    say()
    for line in [*table(series), "", *legend(plan), ""]:
        say(line)
    lines, verdict = summary(series, plan)
    for line in lines:
        say(line)
    meta = {
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "redis_version": redis_version,
        "seconds": time.monotonic() - began,
    }
    path = write_json(series, plan, verdict, meta, args.results)
    say(f"\nJSON: {path}  ({time.monotonic() - began:.0f} s)")
    return 0 if all(one.steps and one.error is None for one in series) else 1


if __name__ == "__main__":
    raise SystemExit(main())
