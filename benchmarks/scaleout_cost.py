"""What being many processes costs: broker CPU per delivery, and Redis CPU per publication, with
1, 2 and 4 broker processes under the same load.

A private ``redis-server`` (as ``benchmarks.scaleout``) and, for each W, ``broker serve
--workers W`` on it (``--workers 1``: plain ``broker serve``). The load is the same per process:
``subscribers`` (100) per process on one channel (so 100 x W in all, split over the workers by the
kernel), and the same total publication rate for every W, well below what the machine can
deliver, so that every step keeps up and CPU is what it costs, not what saturation adds. Each W is
measured ``rounds`` times with a fresh broker (interleaved: 1, 2, 4, 1, 2, 4, ...).

Per step: deliveries, the broker's CPU (every process of the tree) per delivery, Redis's CPU per
publication, and what the rest of the machine used meanwhile; CPU in cores (1.0 = one core busy).
Before each step the broker and Redis are measured idle for ``--idle`` seconds (health round trips,
timers), and that is subtracted: the costs are those of the load. The summary takes each W's median
over its rounds and gives the ratio of CPU per delivery to W = 1's, and a capacity table
extrapolated from the costs: publications/s one Redis core runs, deliveries/s one broker core
makes, and how many broker processes (each with its share of a given load) one Redis core feeds.

The machine is shared (2 cores, other work on them): every figure is noisy, the more so the
busier the rest of the machine ("other" column); read the medians, not one step.

    .venv/bin/python -m benchmarks.scaleout_cost              # about 3 minutes
    .venv/bin/python -m benchmarks.scaleout_cost --rounds 1 --duration 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks.scaleout import (
    RESULTS_DIR,
    Plan,
    Step,
    _cpu,
    broker_server_command,
    broker_tree,
    broker_workers,
    run_step,
    wait_ready,
)
from benchmarks.scaleout_redis import RedisProcess, RedisStartError
from benchmarks.server import ServerProcess, ServerStartError
from benchmarks.targets import broker_available


@dataclasses.dataclass(frozen=True)
class Cost:
    workers: int
    round: int
    step: Step | None
    error: str | None = None
    #: CPU in cores with the broker up, linked to Redis and idle (health round trips, timers):
    #: subtracted, so that the costs are those of the load.
    broker_idle: float = 0.0
    redis_idle: float = 0.0
    #: From Redis's own ``INFO``: CPU seconds over the whole step (connecting and draining
    #: included), publish script runs, and the microseconds those runs took inside Redis.
    redis_cpu_s: float = 0.0
    redis_seconds: float = 0.0
    script_calls: int = 0
    script_us: float = 0.0

    @property
    def broker_us_per_delivery(self) -> float | None:
        step = self.step
        if step is None or not step.delivered or step.failure is not None:
            return None
        busy = max(0.0, step.server_cpu - self.broker_idle)
        return busy * step.window_s * 1e6 / step.delivered

    @property
    def redis_us_per_publication(self) -> float | None:
        """Redis's CPU (its own ``INFO cpu``, microsecond-precise) over the step, less its idle
        CPU, per publication."""
        step = self.step
        if step is None or not self.script_calls or step.failure is not None:
            return None
        busy = max(0.0, self.redis_cpu_s - self.redis_idle * self.redis_seconds)
        return busy * 1e6 / self.script_calls

    @property
    def script_us_per_publication(self) -> float | None:
        return self.script_us / self.script_calls if self.script_calls else None


def measure(
    workers: int, round_number: int, args: argparse.Namespace, redis_server: RedisProcess
) -> Cost:
    redis_server.flush()
    command = broker_server_command(workers, redis_server.url)
    log_path = args.results / "logs" / f"scaleout-cost-w{workers}-r{round_number}.log"
    server = ServerProcess(command, log_path=log_path, start_timeout=30.0, stop_grace=8.0)
    try:
        server.start()
        wait_ready(server, redis_server, workers, timeout=30.0)
        serving = len(broker_workers(server, workers))
        broker_idle, redis_idle = idle(server, redis_server, args.idle)
        plan = Plan(
            subscribers=args.subscribers * workers,
            duration=args.duration,
            drain=2.0,
            p99_ms=args.p99_ms,
            generator_workers=2,
        )
        before, started = redis_info(redis_server), time.monotonic()
        step = run_step(server, redis_server, workers, args.rate, plan)
        after, seconds = redis_info(redis_server), time.monotonic() - started
        say(
            f"W={workers} round {round_number}: {serving} serving, "
            f"{step.subscribers} subscribers, {step.delivered} delivered, "
            f"{'ok' if step.failure is None else step.failure}"
        )
        return Cost(
            workers,
            round_number,
            step,
            None,
            broker_idle,
            redis_idle,
            redis_cpu_s=after[0] - before[0],
            redis_seconds=seconds,
            script_calls=int(after[1] - before[1]),
            script_us=after[2] - before[2],
        )
    except (ServerStartError, OSError) as exc:
        return Cost(workers, round_number, None, str(exc))
    finally:
        server.stop()


def redis_info(redis_server: RedisProcess) -> tuple[float, float, float]:
    """Redis's CPU seconds so far, and its ``EVALSHA`` calls and their microseconds."""
    cpu: Any = redis_server.client.info("cpu")
    stats: Any = redis_server.client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    return (
        float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        float(evalsha.get("calls", 0)),
        float(evalsha.get("usec", 0)),
    )


def idle(server: ServerProcess, redis_server: RedisProcess, seconds: float) -> tuple[float, float]:
    """The broker's and Redis's CPU, in cores, over ``seconds`` with no load."""
    tree = broker_tree(server)
    broker_before = sum(_cpu(process) for process in tree)
    redis_before = redis_info(redis_server)[0]
    time.sleep(seconds)
    broker = sum(_cpu(process) for process in tree) - broker_before
    redis_cpu = redis_info(redis_server)[0] - redis_before
    return max(0.0, broker) / seconds, max(0.0, redis_cpu) / seconds


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report(costs: Sequence[Cost], args: argparse.Namespace) -> list[str]:
    lines = [
        "| W | round | subscribers | deliveries/s | broker CPU (idle) | broker µs/delivery"
        " | Redis CPU (idle) | Redis µs/publication | of which the script | generator | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cost in costs:
        step = cost.step
        if step is None:
            lines.append(f"| {cost.workers} | {cost.round} | failed: {cost.error} |")
            continue
        broker = cost.broker_us_per_delivery
        redis_cost = cost.redis_us_per_publication
        lines.append(
            f"| {cost.workers} | {cost.round} | {step.subscribers} | {step.deliveries_per_s:,.0f}"
            f" | {step.server_cpu:.2f} ({cost.broker_idle:.2f})"
            f" | {'-' if broker is None else f'{broker:.1f}'}"
            f" | {step.redis_cpu:.3f} ({cost.redis_idle:.3f})"
            f" | {'-' if redis_cost is None else f'{redis_cost:.1f}'}"
            f" | {_us(cost.script_us_per_publication)}"
            f" | {step.generator_cpu:.2f} | {step.other_cpu:.2f} |"
        )
    lines += ["", "Medians per W:", ""]
    lines += [
        "| W | broker µs/delivery | vs W=1 | Redis µs/publication |",
        "|---|---|---|---|",
    ]
    base = _median([c.broker_us_per_delivery for c in costs if c.workers == 1])
    medians: dict[int, tuple[float | None, float | None]] = {}
    for workers in args.workers:
        mine = [c for c in costs if c.workers == workers]
        broker = _median([c.broker_us_per_delivery for c in mine])
        redis_cost = _median([c.redis_us_per_publication for c in mine])
        medians[workers] = (broker, redis_cost)
        versus = f"{broker / base:.2f}x" if broker and base else "-"
        lines.append(
            f"| {workers} | {'-' if broker is None else f'{broker:.1f}'} | {versus}"
            f" | {'-' if redis_cost is None else f'{redis_cost:.1f}'} |"
        )
    points = [(w, r) for w, (_, r) in medians.items() if r is not None]
    broker_costs = [b for b, _ in medians.values() if b]
    if len(points) >= 2 and broker_costs:
        # Redis's cost per publication grows with the processes it sends a copy to: a + b x W.
        slope, intercept = statistics.linear_regression(
            [float(w) for w, _ in points], [r for _, r in points]
        )
        if slope <= 0:
            # No growth with W measurable through the noise: take the dearest median, flat.
            slope, intercept = 0.0, max(r for _, r in points)
        broker_us = statistics.median(broker_costs)
        fan_out = args.subscribers
        per_process = 1e6 / (broker_us * fan_out)
        lines += [
            "",
            f"Redis µs per publication ~ {intercept:.1f} + {slope:.1f} x W (least squares over"
            " the medians); broker µs per delivery (median over every W)"
            f" {broker_us:.1f}.",
            "",
            "Capacity, extrapolated (one channel, every process subscribed to it,"
            f" {fan_out} subscribers per process):",
            "",
            "| processes W | publications/s one Redis core runs | deliveries/s one Redis core"
            " feeds | publications/s one broker core delivers | Redis the limit? |",
            "|---|---|---|---|---|",
        ]
        for workers in (1, 2, 4, 8, 16, 32, 64):
            redis_us = intercept + slope * workers
            redis_rate = 1e6 / redis_us
            limit = "yes" if redis_rate < per_process else "no"
            lines.append(
                f"| {workers} | {redis_rate:,.0f} | {redis_rate * fan_out * workers:,.0f}"
                f" | {per_process:,.0f} | {limit} |"
            )
        if slope > 0:
            most = (fan_out * broker_us - intercept) / slope
            lines.append(
                f"\nOne Redis core feeds about {max(0.0, most):.0f} broker processes (one core"
                " each) before it, not they, is the limit, at this fan-out."
            )
    return lines


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=lambda t: [int(w) for w in t.split(",")], default=[1, 2, 4]
    )
    parser.add_argument("--subscribers", type=int, default=100, help="per process")
    parser.add_argument("--rate", type=float, default=50.0, help="publications/s, every W")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle baseline")
    parser.add_argument("--p99-ms", type=float, default=500.0)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not broker_available():
        say("broker/cli.py does not exist: nothing to measure")
        return 1
    began = time.monotonic()
    say(
        f"{args.subscribers} subscribers per process, {args.rate:g} publications/s for every W,"
        f" {args.duration:g} s steps, W = {args.workers} x {args.rounds} round(s);"
        f" {psutil.cpu_count()} cores shared by the broker, Redis, the generator and others"
    )
    costs: list[Cost] = []
    try:
        with RedisProcess(args.results / "logs" / "scaleout-cost-redis.log") as redis_server:
            say(f"redis-server {redis_server.version()} on {redis_server.url}")
            costs.extend(
                measure(workers, round_number, args, redis_server)
                for round_number in range(1, args.rounds + 1)
                for workers in args.workers
            )
    except RedisStartError as exc:
        say(f"redis: {exc}")
        return 1
    say()
    for line in report(costs, args):
        say(line)
    say(f"\n({time.monotonic() - began:.0f} s)")
    return 0 if all(cost.step is not None for cost in costs) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
