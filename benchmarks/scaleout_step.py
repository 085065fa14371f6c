"""Running the scale-out load: one step (a fresh load run at one rate against a running broker,
with the CPU of every process involved), and one series (a broker started, rates stepped up until
one fails, then bisected, the broker stopped, its log scanned)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from benchmarks.generator import LoadError, LoadRun, LoadSpec
from benchmarks.generator.control import CpuClock
from benchmarks.scaleout_broker import (
    broker_server_command,
    broker_tree,
    broker_workers,
    cpu_seconds,
    established,
    wait_ready,
)
from benchmarks.scaleout_plan import CHANNEL, DISTURBED, KEY_PREFIX, Plan, Series, Step, failure
from benchmarks.scaleout_redis import RedisTarget
from benchmarks.scaleout_report import brief
from benchmarks.server import ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.stalled import wait_quiet
from benchmarks.stats import summarize
from benchmarks.wire import Protocol


def run_step(
    server: ServerProcess,
    redis_server: RedisTarget,
    workers: int,
    rate: float,
    plan: Plan,
    attempt: int = 1,
) -> Step:
    """One fresh load run at ``rate`` against the running broker."""
    began = time.monotonic()
    base = Step(workers=workers, rate=rate, attempt=attempt, ok=False)
    spec = LoadSpec(
        url=f"ws://127.0.0.1:{server.port}/v1/ws",
        protocol=Protocol.V1,
        channel=CHANNEL,
        channels=plan.channels,
        subscribers=plan.subscribers,
        workers=plan.generator_workers,
        rate=rate,
        duration=plan.duration,
        message_bytes=plan.message_bytes,
        drain_timeout=plan.drain,
        connect_timeout=20.0,
        warmup_timeout=15.0,
        client="fast",
    )
    run = LoadRun(spec)
    try:
        run.start()
        run.warm_up()
        serving = broker_workers(server, workers)
        split = [established(process, server.port) for process in serving]
        channel_subscribers = redis_server.live_subscribers(spec.channel_name(0), KEY_PREFIX)
        tree = broker_tree(server)
        server_before = [cpu_seconds(process) for process in tree]
        workers_before = [cpu_seconds(process) for process in serving]
        redis_before = redis_server.cpu_seconds()
        busy_before = machine_busy_seconds()
        harness = CpuClock()  # this process: psutil sampling and the pipes
        harness.start()
        started = time.monotonic()
        load = run.measure()
        wall = time.monotonic() - started
        server_cpu = sum(
            max(0.0, cpu_seconds(p) - b) for p, b in zip(tree, server_before, strict=True)
        )
        worker_cpu = [
            max(0.0, cpu_seconds(p) - b) for p, b in zip(serving, workers_before, strict=True)
        ]
        redis_cpu = max(0.0, redis_server.cpu_seconds() - redis_before)
        busy = machine_busy_seconds() - busy_before
        load.generator_cpu.append(harness.usage())
    except (LoadError, OSError, psutil.Error, redis.RedisError) as exc:
        error = f"{type(exc).__name__}: {exc}; log: {server.log_tail(3)}".replace("\n", " | ")
        step = dataclasses.replace(base, error=error, seconds=time.monotonic() - began)
        return dataclasses.replace(step, failure=failure(step, plan.p99_ms))
    finally:
        run.close()
    generator_cpu = sum(usage.cpu_seconds for usage in load.generator_cpu)
    own = server_cpu + redis_cpu + generator_cpu
    latency = summarize(load.latencies_us, missing=max(0, load.lost))
    delivered = load.delivered
    step = dataclasses.replace(
        base,
        ok=True,
        subscribers=load.subscribers,
        connections_per_worker=split,
        redis_channel_subscribers=channel_subscribers,
        planned=load.planned,
        sent=load.sent,
        delivered=delivered,
        expected=load.expected,
        lost=load.lost,
        window_s=load.window_s,
        offered_per_s=rate * load.subscribers / max(1, plan.channels),
        deliveries_per_s=delivered / load.window_s,
        p50_ms=latency.p50_ms,
        p99_ms=latency.p99_ms,
        max_ms=latency.max_ms,
        publisher_max_lag_ms=load.publisher.max_lag_ms,
        server_cpu=server_cpu / wall,
        worker_cpu=[cpu / wall for cpu in worker_cpu],
        server_cpu_ms_per_1k=server_cpu * 1e6 / delivered if delivered else None,
        redis_cpu=redis_cpu / wall,
        generator_cpu=generator_cpu / wall,
        generator_busiest=max((usage.share for usage in load.generator_cpu), default=0.0),
        other_cpu=max(0.0, busy - own) / wall,
        client_errors=dict(load.errors),
        closes=dict(load.closes),
        seconds=time.monotonic() - began,
    )
    return dataclasses.replace(step, failure=failure(step, plan.p99_ms))


# --- one series: a broker, rates stepped up ---------------------------------------------------


def _next_rate(low: float, high: float) -> float:
    """The geometric middle of two rates, rounded to 10/s."""
    return float(round(math.sqrt(low * high) / 10) * 10)


def step_up(
    workers: int,
    round_number: int,
    plan: Plan,
    redis_server: RedisTarget,
    log_dir: Path,
    deadline: float,
    progress: Callable[[str], None],
) -> Series:
    """Start the broker with ``workers`` processes, step the rate up, stop it."""
    redis_server.flush()
    command = broker_server_command(workers, redis_server)
    log_path = log_dir / f"scaleout-w{workers}-r{round_number}.log"
    server = ServerProcess(command, log_path=log_path, start_timeout=30.0, stop_grace=8.0)
    shown = [*command.argv]
    steps: list[Step] = []
    reason = ""
    try:
        server.start()
        wait_ready(server, redis_server, workers, timeout=30.0)
    except (ServerStartError, OSError) as exc:
        server.stop()
        error = str(exc)
        return Series(workers, round_number, shown, [], "broker start failed", error, str(log_path))
    progress(
        f"W={workers}: broker pid {server.pid} on port {server.port},"
        f" {len(broker_workers(server, workers))} serving process(es) linked to Redis"
    )
    estimate = plan.duration + 8.0  # spawn, connect, warm up, drain: refined as steps run

    def attempt(rate: float) -> bool | None:
        """Run ``rate`` (again once if it failed while the machine was busy); None: no time."""
        nonlocal estimate
        for number in (1, 2):
            if time.monotonic() + estimate > deadline:
                return None
            step = run_step(server, redis_server, workers, rate, plan, number)
            estimate = max(estimate, step.seconds + 1.0)
            steps.append(step)
            progress(f"W={workers} {rate:g}/s: {brief(step)}")
            if step.failure is None:
                return True
            if step.other_cpu <= DISTURBED or not server.alive() or number == 2:
                return False
            progress(f"W={workers} {rate:g}/s: the machine was busy, running the step again")
            # Give the other work a moment to pass, within what the budget allows.
            wait_quiet(min(10.0, max(0.0, deadline - estimate - time.monotonic())), progress)
        return False

    try:
        low: float | None = None
        high: float | None = None
        rate = plan.start_rate
        while True:
            passed = attempt(rate)
            if passed is None:
                reason = f"time budget spent before {rate:g}/s"
                break
            if not passed:
                if high is None:
                    reason = f"{rate:g}/s failed: {steps[-1].failure}"
                high = rate
                if low is None and rate / 2 >= plan.start_rate / 8:
                    rate /= 2  # Nothing passed yet: look below the first rate.
                    continue
                break
            low = rate
            if high is not None:
                break
            if rate * 2 > plan.max_rate:
                reason = f"every rate up to {rate:g}/s passed (--max-rate {plan.max_rate:g})"
                break
            rate *= 2
        if low is not None and high is not None:
            for _ in range(plan.refine):
                middle = _next_rate(low, high)
                if not low < middle < high:
                    break
                passed = attempt(middle)
                if passed is None:
                    reason += f"; time budget spent before {middle:g}/s"
                    break
                if passed:
                    low = middle
                else:
                    high = middle
            reason += f"; bisected: {low:g}/s passed, {high:g}/s failed"
        if not server.alive():
            reason += "; the broker died"
    finally:
        exit_code = server.stop()
    levels, sample = scan_log(log_path)
    return Series(
        workers,
        round_number,
        shown,
        steps,
        reason,
        server_log=str(log_path),
        log_levels=levels,
        log_sample=sample,
        exit_code=exit_code,
    )


def scan_log(path: Path, keep: int = 5) -> tuple[dict[str, int], list[str]]:
    """Lines of a broker log by level (JSON lines; anything else counts as ``other``)."""
    levels: dict[str, int] = {}
    sample: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return levels, sample
    for line in text.splitlines():
        if not line.strip():
            continue
        level = "other"
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                level = str(record.get("level", "other"))
        levels[level] = levels.get(level, 0) + 1
        if len(sample) < keep:
            sample.append(line[:300])
    return levels, sample
