"""What being many processes costs: broker CPU per delivery, and Redis CPU per publication, with
1, 2 and 4 broker processes under the same load, on one Redis server and on a 3-master cluster.

Backends (``--backend single|cluster|both``): a private ``redis-server`` (as
``benchmarks.scaleout``), and/or a private Redis Cluster of 3 masters without replicas
(``benchmarks.redis_cluster``, the broker with ``redis_cluster = true``). For each backend, each
channel count of ``--channels`` and each W, ``broker serve --workers W`` on it (``--workers 1``:
plain ``broker serve``). The load is the same per process: ``subscribers`` (100) per process (so
100 x W in all, split over the workers by the kernel), spread over ``channels`` channels
(subscriber i on channel i mod channels; publications round-robin over them), and the same total
publication rate for every W, well below what the machine can deliver, so that every step keeps
up and CPU is what it costs, not what saturation adds. On a cluster one channel lives on one
master: every publication runs there; with 30 channels the slots spread them over the three.
Everything is measured ``rounds`` times with a fresh broker, interleaved (round 1: every backend,
channel count and W; round 2: the same again), so that the machine's noise hits each alike.

Per step: deliveries, the broker's CPU (every process of the tree) per delivery, Redis's CPU per
publication (its own ``INFO cpu`` summed over the masters, with each master's share, over the
``EVALSHA`` runs its ``INFO commandstats`` counts), and what the rest of the machine used
meanwhile; CPU in cores (1.0 = one core busy). Before each step the broker and Redis are measured
idle for ``--idle`` seconds (health round trips, timers), and that is subtracted: the costs are
those of the load. The report (``benchmarks.scaleout_cost_report``) takes each configuration's
median over its rounds, gives the ratio of CPU per delivery to W = 1's, and a capacity table
extrapolated from the costs.

The machine is shared (2 cores, other work on them): every figure is noisy, the more so the
busier the rest of the machine ("other" column); read the medians, not one step.

    .venv/bin/python -m benchmarks.scaleout_cost --backend both --rate 100 --rounds 2
    .venv/bin/python -m benchmarks.scaleout_cost --backend single --channels 1 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.redis_cluster import RedisCluster
from benchmarks.scaleout_broker import (
    broker_server_command,
    broker_tree,
    broker_workers,
    cpu_seconds,
    wait_ready,
)
from benchmarks.scaleout_cost_report import Cost, NodeCost, Setup, report
from benchmarks.scaleout_plan import RESULTS_DIR, Plan
from benchmarks.scaleout_redis import RedisProcess, RedisStartError, RedisTarget
from benchmarks.scaleout_step import run_step
from benchmarks.server import ServerProcess, ServerStartError
from benchmarks.targets import broker_available


@dataclasses.dataclass(frozen=True)
class NodeSample:
    """One master's counters at one moment (from its own ``INFO``)."""

    port: int
    cpu_s: float
    calls: int
    script_us: float


def redis_info(target: RedisTarget) -> list[NodeSample]:
    """Each master's CPU seconds so far, and its ``EVALSHA`` calls and their microseconds."""
    samples = []
    for node in target.masters():
        cpu: Any = node.client.info("cpu")
        stats: Any = node.client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {})
        samples.append(
            NodeSample(
                node.port,
                float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                int(evalsha.get("calls", 0)),
                float(evalsha.get("usec", 0)),
            )
        )
    return samples


def idle(
    server: ServerProcess, target: RedisTarget, seconds: float
) -> tuple[float, dict[int, float]]:
    """The broker's CPU and each master's, in cores, over ``seconds`` with no load."""
    tree = broker_tree(server)
    broker_before = sum(cpu_seconds(process) for process in tree)
    redis_before = redis_info(target)
    time.sleep(seconds)  # the measurement is of time passing with nothing to do
    broker = sum(cpu_seconds(process) for process in tree) - broker_before
    redis_after = {sample.port: sample.cpu_s for sample in redis_info(target)}
    per_node = {
        sample.port: max(0.0, redis_after.get(sample.port, sample.cpu_s) - sample.cpu_s) / seconds
        for sample in redis_before
    }
    return max(0.0, broker) / seconds, per_node


def measure(
    setup: Setup, workers: int, round_number: int, args: argparse.Namespace, target: RedisTarget
) -> Cost:
    target.flush()
    command = broker_server_command(workers, target)
    name = f"scaleout-cost-{setup.backend}-c{setup.channels}-w{workers}-r{round_number}.log"
    server = ServerProcess(
        command, log_path=args.results / "logs" / name, start_timeout=30.0, stop_grace=8.0
    )
    try:
        server.start()
        wait_ready(server, target, workers, timeout=30.0)
        serving = len(broker_workers(server, workers))
        broker_idle, redis_idle = idle(server, target, args.idle)
        plan = Plan(
            subscribers=args.subscribers * workers,
            channels=setup.channels,
            duration=args.duration,
            drain=2.0,
            p99_ms=args.p99_ms,
            generator_workers=2,
        )
        before, started = redis_info(target), time.monotonic()
        step = run_step(server, target, workers, args.rate, plan)
        after, seconds = redis_info(target), time.monotonic() - started
        say(
            f"{setup.name}, W={workers}, round {round_number}: {serving} serving,"
            f" {step.subscribers} subscribers, {step.delivered} delivered,"
            f" {'ok' if step.failure is None else step.failure}"
        )
        ended = {sample.port: sample for sample in after}
        nodes = tuple(
            NodeCost(
                port=first.port,
                cpu_s=ended[first.port].cpu_s - first.cpu_s,
                idle=redis_idle.get(first.port, 0.0),
                calls=ended[first.port].calls - first.calls,
                script_us=ended[first.port].script_us - first.script_us,
            )
            for first in before
            if first.port in ended
        )
        return Cost(
            setup,
            workers,
            round_number,
            step,
            broker_idle=broker_idle,
            redis_seconds=seconds,
            nodes=nodes,
        )
    except (ServerStartError, OSError, redis.RedisError) as exc:
        say(f"{setup.name}, W={workers}, round {round_number}: failed: {exc}")
        return Cost(setup, workers, round_number, None, str(exc))
    finally:
        server.stop()


def write_json(costs: Sequence[Cost], args: argparse.Namespace) -> Path:
    """Every step's record, with the arguments, to ``scaleout-cost-<stamp>.json``."""
    args.results.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    path: Path = args.results / f"scaleout-cost-{now:%Y%m%dT%H%M%SZ}.json"
    document = {
        "created": now.isoformat(),
        "args": {key: str(value) for key, value in vars(args).items()},
        "load_average": list(psutil.getloadavg()),
        "costs": [dataclasses.asdict(cost) for cost in costs],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaleout_cost",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4], help="broker processes")
    parser.add_argument(
        "--backend",
        choices=("single", "cluster", "both"),
        default="both",
        help="one redis-server, a 3-master Redis Cluster, or both",
    )
    parser.add_argument(
        "--channels",
        type=_ints,
        default=[1, 30],
        help="channel counts to run (subscribers spread over them, publications round-robin)",
    )
    parser.add_argument("--subscribers", type=int, default=100, help="per process")
    parser.add_argument("--rate", type=float, default=100.0, help="publications/s, every W")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle baseline")
    parser.add_argument(
        "--p99-ms",
        type=float,
        default=2000.0,
        help="a step whose p99 is above this does not count (costs, not latency, are measured)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not args.workers or min(args.workers) < 1 or not args.channels or min(args.channels) < 1:
        parser.error("--workers and --channels must list counts >= 1")
    if args.subscribers < 1 or args.rounds < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--subscribers and --rounds must be >= 1, --rate and --duration > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not broker_available():
        say("broker/cli.py does not exist: nothing to measure")
        return 1
    began = time.monotonic()
    backends = ["single", "cluster"] if args.backend == "both" else [args.backend]
    setups = [Setup(backend, channels) for backend in backends for channels in args.channels]
    say(
        f"{args.subscribers} subscribers per process, {args.rate:g} publications/s for every W,"
        f" {args.duration:g} s steps, W = {args.workers}, {[s.name for s in setups]}"
        f" x {args.rounds} round(s); {psutil.cpu_count()} cores shared by the broker, Redis,"
        f" the generator and others; load average {_load()}"
    )
    costs: list[Cost] = []
    logs = args.results / "logs"
    try:
        with contextlib.ExitStack() as stack:
            targets: dict[str, RedisTarget] = {}
            if "single" in backends:
                targets["single"] = stack.enter_context(
                    RedisProcess(logs / "scaleout-cost-redis.log")
                )
            if "cluster" in backends:
                cluster = stack.enter_context(RedisCluster(logs / "scaleout-cost-cluster"))
                targets["cluster"] = cluster
                spread = ", ".join(
                    f"{port}: {', '.join(f'{a}-{b}' for a, b in ranges)}"
                    for port, ranges in sorted(cluster.slots().items())
                )
                say(f"cluster masters (port: slots): {spread}")
            for name, target in targets.items():
                say(f"{name}: redis-server {target.version()} on {target.url}")
            costs.extend(
                measure(setup, workers, round_number, args, targets[setup.backend])
                for round_number in range(1, args.rounds + 1)
                for setup in setups
                for workers in args.workers
            )
    except RedisStartError as exc:
        say(f"redis: {exc}")
        return 1
    say()
    for line in report(costs, setups, args.workers, args.subscribers):
        say(line)
    path = write_json(costs, args)
    say(f"\nload average at the end: {_load()}; JSON: {path} ({time.monotonic() - began:.0f} s)")
    return 0 if all(cost.step is not None for cost in costs) else 1


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in psutil.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
