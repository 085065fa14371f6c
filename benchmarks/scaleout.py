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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.fmt import fmt_ms, fmt_ratio
from benchmarks.generator import LoadError, LoadRun, LoadSpec
from benchmarks.generator.control import CpuClock
from benchmarks.scaleout_redis import RedisProcess, RedisStartError
from benchmarks.server import ServerCommand, ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.stalled import wait_quiet
from benchmarks.stats import ratio, summarize
from benchmarks.targets import broker_available, broker_command
from benchmarks.wire import Protocol

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The scale-out goal: two processes deliver at least this multiple of one, at the same p99.
TARGET_RATIO = 1.7
#: Deliveries per second must reach this share of the offered rate for a step to pass.
KEEP_UP = 0.95
#: Cores' worth of CPU used by the rest of the machine above which a failed step is run again.
DISTURBED = 0.25
#: Busiest generator process above this share of a core: the generator may be the bottleneck.
GENERATOR_BUSY = 0.9
CHANNEL = "scaleout"
KEY_PREFIX = "broker"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes, rates and time limits of one run."""

    workers: tuple[int, ...] = (1, 2)
    subscribers: int = 100
    message_bytes: int = 200
    start_rate: float = 200.0
    max_rate: float = 12800.0
    #: Bisection steps between the last rate that passed and the first that failed.
    refine: int = 3
    duration: float = 5.0
    drain: float = 3.0
    p99_ms: float = 100.0
    #: Subscriber processes of the load generator (plus one publisher process).
    generator_workers: int = 2
    #: Times the whole comparison is run (W = 1, 2, then again), each broker started afresh.
    rounds: int = 3
    #: Seconds for the whole run, broker starts and stops included.
    budget_s: float = 440.0


FULL = Plan()
QUICK = Plan(refine=2, duration=2.0, drain=2.0, rounds=2, budget_s=160.0)


@dataclasses.dataclass(frozen=True)
class Step:
    """One load run at one rate against one broker."""

    workers: int
    rate: float
    attempt: int
    ok: bool
    error: str | None = None
    subscribers: int = 0
    #: Established connections (subscribers + the publisher) per broker worker process.
    connections_per_worker: list[int] = dataclasses.field(default_factory=list)
    #: Broker processes Redis had subscribed to the channel's live publications.
    redis_channel_subscribers: int = 0
    planned: int = 0
    sent: int = 0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    window_s: float = 0.0
    offered_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    publisher_max_lag_ms: float = 0.0
    #: CPU in cores (1.0 = one core busy) over the publishing and drain phases.
    server_cpu: float = 0.0
    worker_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu_ms_per_1k: float | None = None
    redis_cpu: float = 0.0
    generator_cpu: float = 0.0
    generator_busiest: float = 0.0
    other_cpu: float = 0.0
    client_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Why the step does not count as sustained; None when it passed.
    failure: str | None = None
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Series:
    """Every step run against the broker with ``workers`` processes, and why it stopped."""

    workers: int
    round: int
    command: list[str]
    steps: list[Step]
    stop_reason: str
    error: str | None = None
    server_log: str = ""
    #: Lines of the broker's log (level warning and above), counted by level.
    log_levels: dict[str, int] = dataclasses.field(default_factory=dict)
    log_sample: list[str] = dataclasses.field(default_factory=list)
    #: The broker's exit code after SIGTERM.
    exit_code: int | None = None

    @property
    def sustained(self) -> Step | None:
        """The highest-rate step that passed."""
        passing = [step for step in self.steps if step.failure is None]
        return max(passing, key=lambda step: step.rate, default=None)


def failure(step: Step, p99_bound_ms: float) -> str | None:
    """Why a step does not count as sustained, or None when it passed."""
    if not step.ok:
        return f"error: {step.error}"
    if step.lost > 0:
        return f"lost {step.lost} ({100 * step.lost / max(1, step.expected):.2f}%)"
    if step.sent < step.planned:
        return f"publisher sent {step.sent} of {step.planned}"
    if step.p99_ms is None:
        return "no latency"
    if step.p99_ms > p99_bound_ms:
        return f"p99 {step.p99_ms:.0f} ms > {p99_bound_ms:.0f} ms"
    if step.deliveries_per_s < KEEP_UP * step.offered_per_s:
        return f"delivered {step.deliveries_per_s:.0f}/s of {step.offered_per_s:.0f}/s offered"
    return None


# --- the broker under test --------------------------------------------------------------------


def broker_server_command(workers: int, redis_url: str) -> ServerCommand:
    """``broker serve`` on the Redis backplane, with ``--workers W`` when W > 1."""
    env = {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": redis_url,
        "BROKER_LOG__LEVEL": "warning",
    }
    command = broker_command(env)
    argv = [*command.argv, *(["--workers", str(workers)] if workers > 1 else [])]
    return dataclasses.replace(command, argv=argv)


def broker_workers(server: ServerProcess, workers: int) -> list[psutil.Process]:
    """The processes that serve connections: the server itself, or the supervisor's workers."""
    root = psutil.Process(server.pid)
    if workers == 1:
        return [root]
    found = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
    return sorted(found, key=lambda process: process.pid)


def broker_tree(server: ServerProcess) -> list[psutil.Process]:
    root = psutil.Process(server.pid)
    return [root, *root.children(recursive=True)]


def wait_ready(
    server: ServerProcess, redis_server: RedisProcess, workers: int, timeout: float
) -> None:
    """Until every worker's backplane link is up (its health channel is subscribed in Redis)
    and ``/readyz`` answers 200; raises ``ServerStartError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    links = 0
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerStartError(f"broker exited; log: {server.log_tail(5)}")
        links = redis_server.health_links(KEY_PREFIX)
        if links >= workers and _readyz(server.port):
            return
        time.sleep(0.1)
    raise ServerStartError(f"{links} of {workers} workers linked to Redis after {timeout:.0f} s")


def _readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _established(process: psutil.Process, port: int) -> int:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1
        for conn in connections
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )


# --- one step ---------------------------------------------------------------------------------


def run_step(
    server: ServerProcess,
    redis_server: RedisProcess,
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
        split = [_established(process, server.port) for process in serving]
        channel_subscribers = redis_server.live_subscribers(CHANNEL, KEY_PREFIX)
        tree = broker_tree(server)
        server_before = [_cpu(process) for process in tree]
        workers_before = [_cpu(process) for process in serving]
        redis_before = redis_server.cpu_seconds()
        busy_before = machine_busy_seconds()
        harness = CpuClock()  # this process: psutil sampling and the pipes
        harness.start()
        started = time.monotonic()
        load = run.measure()
        wall = time.monotonic() - started
        server_cpu = sum(max(0.0, _cpu(p) - b) for p, b in zip(tree, server_before, strict=True))
        worker_cpu = [max(0.0, _cpu(p) - b) for p, b in zip(serving, workers_before, strict=True)]
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
        offered_per_s=rate * load.subscribers,
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
    redis_server: RedisProcess,
    log_dir: Path,
    deadline: float,
    progress: Callable[[str], None],
) -> Series:
    """Start the broker with ``workers`` processes, step the rate up, stop it."""
    redis_server.flush()
    command = broker_server_command(workers, redis_server.url)
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
            progress(f"W={workers} {rate:g}/s: {_brief(step)}")
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


# --- report -----------------------------------------------------------------------------------

_COLUMNS = (
    ("#", 1, ">"),
    ("W", 1, ">"),
    ("rate/s", 6, ">"),
    ("deliv/s", 8, ">"),
    ("p50 ms", 6, ">"),
    ("p99 ms", 6, ">"),
    ("max ms", 6, ">"),
    ("lost", 6, ">"),
    ("conns/worker", 12, ">"),
    ("server cpu (workers)", 20, ">"),
    ("ms/1k", 5, ">"),
    ("redis", 5, ">"),
    ("gen cpu (max)", 13, ">"),
    ("other", 5, ">"),
    ("result", 0, "<"),
)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _row(round_number: int, step: Step) -> list[str]:
    rate = f"{step.rate:g}" + ("*" if step.attempt > 1 else "")
    if not step.ok:
        return [str(round_number), str(step.workers), rate, f"ERROR {step.error}"]
    workers = "+".join(f"{100 * cpu:.0f}" for cpu in step.worker_cpu)
    cpu_1k = "-" if step.server_cpu_ms_per_1k is None else f"{step.server_cpu_ms_per_1k:.1f}"
    return [
        str(round_number),
        str(step.workers),
        rate,
        f"{step.deliveries_per_s:.0f}",
        fmt_ms(step.p50_ms),
        fmt_ms(step.p99_ms),
        fmt_ms(step.max_ms),
        str(step.lost),
        "/".join(str(count) for count in step.connections_per_worker),
        f"{_pct(step.server_cpu)} ({workers})",
        cpu_1k,
        _pct(step.redis_cpu),
        f"{_pct(step.generator_cpu)} ({_pct(step.generator_busiest)})",
        _pct(step.other_cpu),
        "pass" if step.failure is None else f"FAIL: {step.failure}",
    ]


def table(series: Sequence[Series]) -> list[str]:
    """Every step of every series, one line each."""
    header = [name for name, _, _ in _COLUMNS]
    rows = [
        _row(one.round, step)
        for one in series
        for step in sorted(one.steps, key=lambda s: (s.rate, s.attempt))
    ]
    lines = []
    for cells in [header, *rows]:
        if len(cells) < len(_COLUMNS):
            lines.append(
                "  ".join([f"{cells[0]:>1}", f"{cells[1]:>1}", f"{cells[2]:>6}", *cells[3:]])
            )
            continue
        lines.append(
            "  ".join(
                f"{cell:{align}{width}}"
                for cell, (_, width, align) in zip(cells, _COLUMNS, strict=True)
            ).rstrip()
        )
    lines.insert(1, "-" * len(lines[0]))
    return lines


def legend(plan: Plan) -> list[str]:
    return [
        "#: round (the whole comparison is run that many times, each broker started afresh).",
        f"rate/s: publications per second on one channel to {plan.subscribers} /v1/ws"
        f" subscribers ({plan.message_bytes}-byte payloads, {plan.duration:g} s);"
        " * = run again because the machine was busy.",
        "deliv/s: publications received per second; p50/p99/max: publish-to-receipt latency."
        " conns/worker: connections each broker process accepted (subscribers + publisher).",
        "server cpu: the broker's whole process tree, share of one core (2 cores = 200%), with"
        " each worker's share; ms/1k: server CPU ms per 1,000 deliveries.",
        "redis: redis-server's CPU; gen cpu: the load generator's processes (sum, busiest one);"
        " other: the rest of the machine meanwhile.",
    ]


def _sustained_line(one: Series) -> str:
    step = one.sustained
    head = f"  round {one.round}, W={one.workers}:"
    if step is None:
        return f"{head} none ({one.stop_reason}{'; ' + one.error if one.error else ''})"
    per_core = step.deliveries_per_s / step.server_cpu if step.server_cpu else 0.0
    busy = step.server_cpu + step.redis_cpu + step.generator_cpu + step.other_cpu
    return (
        f"{head} {step.rate:g} publications/s -> {step.deliveries_per_s:,.0f} deliveries/s,"
        f" p50 {fmt_ms(step.p50_ms)} ms, p99 {fmt_ms(step.p99_ms)} ms;"
        f" server {_pct(step.server_cpu)},"
        f" redis {_pct(step.redis_cpu)}, generator {_pct(step.generator_cpu)}"
        f" (busiest {_pct(step.generator_busiest)}), other {_pct(step.other_cpu)}:"
        f" {_pct(busy)} of 200%; {per_core:,.0f} deliveries per server CPU-second"
        f"\n      stopped: {one.stop_reason}"
    )


def _ratio_of(one: Step | None, two: Step | None) -> float | None:
    return ratio(two.deliveries_per_s if two else None, one.deliveries_per_s if one else None)


def _notes(series: Sequence[Series]) -> list[str]:
    notes = []
    for one in series:
        name = f"round {one.round}, W={one.workers}"
        step = one.sustained
        if step is not None and step.generator_busiest > GENERATOR_BUSY:
            notes.append(
                f"{name}: a generator process was at {_pct(step.generator_busiest)}"
                " of a core at the sustained step: the generator may be the bottleneck"
            )
        if one.log_levels:
            counts = ", ".join(
                f"{count} {level}" for level, count in sorted(one.log_levels.items())
            )
            notes.append(f"{name}: broker log {one.server_log}: {counts}")
            notes.extend(f"    {line}" for line in one.log_sample)
        if one.exit_code not in (0, None):
            notes.append(f"{name}: broker exit code {one.exit_code} after SIGTERM")
        disturbed = [step for step in one.steps if step.ok and step.other_cpu > DISTURBED]
        if disturbed:
            rates = ", ".join(f"{step.rate:g}" for step in disturbed)
            notes.append(
                f"{name}: the rest of the machine used > {_pct(DISTURBED)} of a core"
                f" during the steps at {rates}/s: those figures are disturbed"
            )
    return notes


def _per_delivery_us(step: Step, cpu: float) -> float:
    return 1e6 * cpu / step.deliveries_per_s if step.deliveries_per_s else 0.0


def _cpu_lines(series: Sequence[Series], best: dict[int, Step | None]) -> list[str]:
    """What the CPU figures say about the ratio: cost per delivery and what 1.7x would need."""
    lines = []
    one, two = best.get(1), best.get(2)
    # The highest rate that passed with both W in one round: same load, CPU side by side.
    for round_number in sorted({s.round for s in series}):
        passed = {
            s.workers: {step.rate: step for step in s.steps if step.failure is None}
            for s in series
            if s.round == round_number
        }
        common = set(passed.get(1, {})) & set(passed.get(2, {}))
        if common:
            rate = max(common)
            a, b = passed[1][rate], passed[2][rate]
            lines.append(
                f"Same load, round {round_number}, {rate:g}/s ({a.deliveries_per_s:,.0f}"
                f" deliveries/s): server CPU {_pct(a.server_cpu)} with W=1,"
                f" {_pct(b.server_cpu)} with W=2 ({fmt_ratio(ratio(b.server_cpu, a.server_cpu))});"
                f" p99 {fmt_ms(a.p99_ms)} vs {fmt_ms(b.p99_ms)} ms"
            )
    if one is None or two is None or not two.deliveries_per_s:
        return lines
    server = _per_delivery_us(two, two.server_cpu)
    generator = _per_delivery_us(two, two.generator_cpu)
    redis_cost = _per_delivery_us(two, two.redis_cpu)
    wanted = TARGET_RATIO * one.deliveries_per_s
    cores = psutil.cpu_count() or 2
    need = wanted * (server + generator + redis_cost) / 1e6
    lines.append(
        f"CPU arithmetic (from the measured costs, not a measurement): {TARGET_RATIO}x the W=1"
        f" figure is {wanted:,.0f} deliveries/s; at the W=2 step's cost per delivery (server"
        f" {server:.1f} us, generator {generator:.1f} us, redis {redis_cost:.1f} us) that takes"
        f" {_pct(need)} of the machine's {100 * cores}%, the generator's part alone"
        f" {_pct(wanted * generator / 1e6)}"
    )
    return lines


def summary(series: Sequence[Series], plan: Plan) -> tuple[list[str], dict[str, Any]]:
    """The sustained figures per W, the ratios and the verdict, as lines and as JSON."""
    lines = [f"Highest sustained rate (p99 <= {plan.p99_ms:g} ms, nothing lost, kept up):"]
    lines += [_sustained_line(one) for one in series]
    best: dict[int, Step | None] = {}
    per_round: dict[int, float | None] = {}
    for one in series:
        step = one.sustained
        held = best.get(one.workers)
        if held is None or (step is not None and step.deliveries_per_s > held.deliveries_per_s):
            best[one.workers] = step
    for round_number in sorted({one.round for one in series}):
        of_round = {one.workers: one.sustained for one in series if one.round == round_number}
        per_round[round_number] = _ratio_of(of_round.get(1), of_round.get(2))
    achieved = _ratio_of(best.get(1), best.get(2))
    met = achieved is not None and achieved >= TARGET_RATIO
    measured = [value for value in per_round.values() if value is not None]
    if len(per_round) > 1:
        lines.append(
            "Ratio W=2 / W=1 per round: "
            + ", ".join(
                f"round {number}: {fmt_ratio(value)}" for number, value in per_round.items()
            )
            + (f" (median {statistics.median(measured):.2f}x)" if measured else "")
        )
    if achieved is None:
        lines.append("Ratio W=2 / W=1: not measurable (a series had no passing step)")
    else:
        lines.append(
            f"Ratio W=2 / W=1 of the highest sustained deliveries/s"
            f"{' (best round of each)' if len(per_round) > 1 else ''}: {achieved:.2f}x;"
            f" target {TARGET_RATIO}x at the same p99 bound: {'MET' if met else 'NOT MET'}"
        )
    lines += _cpu_lines(series, best)
    notes = _notes(series)
    if notes:
        lines += ["Notes:", *(f"  {note}" for note in notes)]
    verdict_json = {
        "p99_bound_ms": plan.p99_ms,
        "sustained_deliveries_per_s": {
            str(workers): step.deliveries_per_s if step else None for workers, step in best.items()
        },
        "ratio_per_round": {str(number): value for number, value in per_round.items()},
        "ratio_median_of_rounds": statistics.median(measured) if measured else None,
        "ratio": achieved,
        "target": TARGET_RATIO,
        "met": met,
    }
    return lines, verdict_json


def write_json(
    series: Sequence[Series], plan: Plan, verdict: dict[str, Any], meta: dict[str, Any], out: Path
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    path = out / f"scaleout-{now:%Y%m%dT%H%M%SZ}.json"
    document = {
        "meta": {
            **meta,
            "created": now.isoformat(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": psutil.cpu_count(),
        },
        "plan": dataclasses.asdict(plan),
        "verdict": verdict,
        "series": [
            {
                **dataclasses.asdict(one),
                "sustained_rate": one.sustained.rate if one.sustained else None,
            }
            for one in series
        ],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _brief(step: Step) -> str:
    if not step.ok:
        return f"ERROR {step.error}"
    text = (
        f"{step.deliveries_per_s:,.0f} deliveries/s,"
        f" p50 {fmt_ms(step.p50_ms)} p99 {fmt_ms(step.p99_ms)}"
        f" ms, lost {step.lost}, server {_pct(step.server_cpu)}, redis {_pct(step.redis_cpu)},"
        f" generator {_pct(step.generator_cpu)} (busiest {_pct(step.generator_busiest)}),"
        f" other {_pct(step.other_cpu)}"
    )
    return text + ("" if step.failure is None else f" -> {step.failure}")


# --- command line -----------------------------------------------------------------------------


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
