"""Scenario functions: one fresh server, one load run, one ``ScenarioResult``.

``stalled_clients`` is the isolation scenario: ``K`` raw clients join the channel and never read
while healthy subscribers receive an open-loop stream; it measures what the healthy ones see and
what the server spends. Each scenario starts its own server process, so its peak RSS and CPU
belong to that scenario alone, and ends by its deadlines even when the server froze: whatever the
healthy clients did not get by then is counted as lost.

``run_load`` is the same measurement without stalled clients against a server that is already
running (the suite's fan-out steps, many channels and 10,000 connections use it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.generator import LoadError, LoadResult, LoadRun, LoadSpec
from benchmarks.generator.control import ClientKind, CpuClock
from benchmarks.kernelq import tcp_wmem_max
from benchmarks.rawws import (
    HandshakeError,
    StalledClient,
    StalledWatch,
    open_stalled,
)
from benchmarks.server import ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.stats import LatencySummary, summarize
from benchmarks.targets import Target

MB = 1_000_000


@dataclasses.dataclass(frozen=True)
class LoadParams:
    """The load of a scenario, apart from where it goes."""

    subscribers: int
    rate: float
    duration: float
    message_bytes: int
    workers: int
    drain_timeout: float
    channel: str = "bench"
    client: ClientKind = "websockets"
    channels: int = 1
    warmup_interval: float = 0.05
    connect_timeout: float = 30.0
    connect_concurrency: int = 25

    def spec(self, url: str, target: Target) -> LoadSpec:
        return LoadSpec(
            url=url,
            protocol=target.protocol,
            channel=self.channel,
            subscribers=self.subscribers,
            workers=self.workers,
            rate=self.rate,
            duration=self.duration,
            message_bytes=self.message_bytes,
            drain_timeout=self.drain_timeout,
            connect_timeout=self.connect_timeout,
            warmup_timeout=max(15.0, 3 * self.warmup_interval + 5),
            client=self.client,
            channels=self.channels,
            warmup_interval=self.warmup_interval,
            connect_concurrency=self.connect_concurrency,
        )


@dataclasses.dataclass(frozen=True)
class StalledReport:
    """What happened to the stalled clients."""

    count: int
    #: Bytes of publications the channel carried during the run, i.e. owed to each stalled client.
    pushed_bytes_each: int
    #: The kernel's send buffer ceiling (``tcp_wmem`` max): about 3/4 of it holds data.
    tcp_wmem_max: int
    #: Per stalled client: most bytes the kernel held for it at once.
    peak_kernel_bytes: list[int]
    #: Per stalled client: seconds into the run when its kernel buffers were (nearly) full.
    filled_after_s: list[float | None]
    #: Per stalled client: seconds into the run when the server dropped it (None: never).
    dropped_after_s: list[float | None]

    @property
    def dropped(self) -> int:
        return sum(1 for after in self.dropped_after_s if after is not None)


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    target: str
    description: str
    stalled: int
    params: LoadParams
    ok: bool
    error: str | None = None
    subscribers: int = 0
    connect_failures: int = 0
    planned: int = 0
    sent: int = 0
    publisher_blocked: bool = False
    publisher_max_lag_ms: float = 0.0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    clients_with_loss: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    offered_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    latency: LatencySummary | None = None
    server_cpu_s: float = 0.0
    server_cpu_share: float = 0.0
    server_cpu_ms_per_1k: float | None = None
    server_rss_before_mb: float = 0.0
    server_peak_rss_mb: float = 0.0
    generator_cpu_share: float = 0.0
    generator_max_process_share: float = 0.0
    #: The publisher process's own CPU (of one core): near 1.0 it, not the server, set the pace.
    publisher_cpu_share: float = 0.0
    #: Times the publisher slept while publishing (a spinning publisher would sleep per send).
    publisher_wakeups: int = 0
    #: CPU the rest of the machine used during the run, in cores: noise in the measurement.
    other_cpu_share: float = 0.0
    stalled_report: StalledReport | None = None
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    server_log: str = ""
    #: The server's exit code when it died during the run (None: it was still running).
    server_died: int | None = None

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0


def stalled_clients(
    target: Target,
    stalled: int,
    params: LoadParams,
    log_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> ScenarioResult:
    """Run the stalled-client scenario once against a fresh server of ``target``."""
    log_path = log_dir / f"{target.name}-k{stalled}.log"
    base = ScenarioResult(target.name, target.description, stalled, params, ok=False)
    server = ServerProcess(target.command, log_path=log_path)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        tail = server.log_tail(5).replace("\n", " | ")
        return dataclasses.replace(base, error=f"server start: {exc}; log: {tail}")
    clients: list[StalledClient] = []
    try:
        progress(f"{target.name} K={stalled}: server pid {server.pid} on port {server.port}")
        for _ in range(stalled):  # one at a time, so each is closed if a later one fails
            client = open_stalled(server.port, target.path, target.protocol, params.channel)
            clients.append(client)
        url = f"ws://127.0.0.1:{server.port}{target.path}"
        with LoadRun(params.spec(url, target)) as run:
            run.start()
            run.warm_up()
            rss_before = server.monitor.sample_rss()
            cpu_before = server.monitor.cpu_seconds()
            busy_before = machine_busy_seconds()
            harness = CpuClock()  # this process: the stalled-client watch and the monitors
            harness.start()
            started = time.monotonic()
            progress(f"{target.name} K={stalled}: {run.connected} subscribers, publishing")
            watch = StalledWatch(server.port, clients)
            watch.start()
            try:
                load = run.measure()
            finally:
                traces = watch.stop()
            cpu = max(0.0, server.monitor.cpu_seconds() - cpu_before)  # 0 if the server died
            wall = time.monotonic() - started
            busy = machine_busy_seconds() - busy_before
            harness_cpu = harness.usage()
            server.monitor.sample_rss()
            peak_rss = server.monitor.peak_rss
            died = None if server.alive() else server.stop()
        stalled_report = StalledReport(
            count=stalled,
            pushed_bytes_each=round(load.sent * load.bytes_per_publication),
            tcp_wmem_max=tcp_wmem_max(),
            peak_kernel_bytes=[trace.peak_kernel_bytes for trace in traces],
            filled_after_s=[trace.filled_after_s for trace in traces],
            dropped_after_s=[trace.dropped_after_s for trace in traces],
        )
        load.generator_cpu.append(harness_cpu)
        result = _result(base, load, cpu, wall, rss_before, peak_rss, stalled_report, log_path)
        # What neither the server nor the benchmark's own processes used: other work.
        own = cpu + sum(usage.cpu_seconds for usage in load.generator_cpu)
        other = max(0.0, busy - own) / wall if wall > 0 else 0.0
        return dataclasses.replace(result, server_died=died, other_cpu_share=other)
    except (LoadError, HandshakeError, OSError) as exc:
        tail = server.log_tail(5).replace("\n", " | ")
        return dataclasses.replace(base, error=f"{type(exc).__name__}: {exc}; log: {tail}")
    finally:
        for client in clients:
            client.close()
        server.stop()


def run_load(
    server: ServerProcess,
    target: Target,
    params: LoadParams,
    progress: Callable[[str], None] = lambda _: None,
    *,
    stop_server_first: bool = False,
) -> ScenarioResult:
    """One load run (connect, warm up, publish, drain) against a running server.

    CPU, RSS and the rest of the machine's CPU are taken over the publishing and drain phases.
    With ``stop_server_first`` the server is stopped before the clients close, so that thousands
    of departures do not each make a chat server broadcast to everyone left.
    """
    base = ScenarioResult(target.name, target.description, 0, params, ok=False)
    url = f"ws://127.0.0.1:{server.port}{target.path}"
    run = LoadRun(params.spec(url, target))
    try:
        run.start()
        progress(f"{target.name}: {run.connected} subscribers joined, warming up")
        run.warm_up()
        rss_before = server.monitor.sample_rss()
        cpu_before = server.monitor.cpu_seconds()
        busy_before = machine_busy_seconds()
        harness = CpuClock()
        harness.start()
        started = time.monotonic()
        load = run.measure()
        cpu = max(0.0, server.monitor.cpu_seconds() - cpu_before)
        wall = time.monotonic() - started
        busy = machine_busy_seconds() - busy_before
        load.generator_cpu.append(harness.usage())
        server.monitor.sample_rss()
        peak_rss = server.monitor.peak_rss
        died = None if server.alive() else server.stop()
    except LoadError as exc:
        tail = server.log_tail(5).replace("\n", " | ")
        return dataclasses.replace(base, error=f"{type(exc).__name__}: {exc}; log: {tail}")
    finally:
        if stop_server_first:
            server.stop()
        run.close()
    result = _result(base, load, cpu, wall, rss_before, peak_rss, None, server.log_path)
    own = cpu + sum(usage.cpu_seconds for usage in load.generator_cpu)
    other = max(0.0, busy - own) / wall if wall > 0 else 0.0
    return dataclasses.replace(result, server_died=died, other_cpu_share=other)


def _result(
    base: ScenarioResult,
    load: LoadResult,
    cpu: float,
    wall: float,
    rss_before: int,
    peak_rss: int,
    stalled_report: StalledReport | None,
    log_path: Path,
) -> ScenarioResult:
    delivered = load.delivered
    generator = load.generator_cpu
    return dataclasses.replace(
        base,
        ok=True,
        subscribers=load.subscribers,
        connect_failures=load.connect_failures,
        planned=load.planned,
        sent=load.sent,
        publisher_blocked=load.publisher.blocked,
        publisher_max_lag_ms=load.publisher.max_lag_ms,
        delivered=delivered,
        expected=load.expected,
        lost=load.lost,
        clients_with_loss=load.clients_with_loss,
        duplicates=load.duplicates,
        out_of_order=load.out_of_order,
        gaps=load.gaps,
        offered_per_s=load.expected / load.window_s
        if load.spec.channels > 1
        else load.spec.rate * load.subscribers,
        deliveries_per_s=delivered / load.window_s,
        latency=summarize(load.latencies_us, missing=max(0, load.lost)),
        server_cpu_s=cpu,
        server_cpu_share=cpu / wall if wall > 0 else 0.0,
        server_cpu_ms_per_1k=cpu * 1000 / (delivered / 1000) if delivered else None,
        server_rss_before_mb=rss_before / MB,
        server_peak_rss_mb=peak_rss / MB,
        generator_cpu_share=sum(usage.share for usage in generator),
        generator_max_process_share=max((usage.share for usage in generator), default=0.0),
        publisher_cpu_share=load.publisher.cpu.share,
        publisher_wakeups=load.publisher.wakeups,
        stalled_report=stalled_report,
        closes=dict(load.closes),
        errors=dict(load.errors),
        server_log=str(log_path),
    )
