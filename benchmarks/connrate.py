"""Connection rate: connections opened and closed per second, and what each costs the server.

A fresh server; ``workers`` generator processes each run ``concurrency`` loops of open (and,
on ``/v1/ws``, read ``welcome``) then close, for ``duration`` seconds
(``benchmarks.generator.churn``). Reported: completed cycles per second, failures, the time to
open (p50/p99/max), server CPU per 1,000 connections and peak RSS.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.generator.churn import ChurnSpec, run_churn
from benchmarks.scenarios import MB
from benchmarks.server import ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.stats import LatencySummary, summarize
from benchmarks.targets import Target


@dataclasses.dataclass(frozen=True)
class ConnRateResult:
    target: str
    description: str
    ok: bool
    error: str | None = None
    concurrency: int = 0
    duration_s: float = 0.0
    cycles: int = 0
    per_second: float = 0.0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    open_latency: LatencySummary | None = None
    server_cpu_ms_per_1k: float | None = None
    server_cpu_share: float = 0.0
    peak_rss_mb: float = 0.0
    generator_cpu_share: float = 0.0
    generator_max_process_share: float = 0.0
    other_cpu_share: float = 0.0


def connection_rate(
    target: Target,
    *,
    concurrency: int,
    duration: float,
    workers: int,
    log_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> ConnRateResult:
    """Open and close connections for ``duration`` s with ``concurrency`` loops in all."""
    base = ConnRateResult(target.name, target.description, ok=False, concurrency=concurrency)
    server = ServerProcess(target.command, log_path=log_dir / f"{target.name}-connrate.log")
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        return dataclasses.replace(base, error=f"server start: {exc}")
    try:
        per_worker = max(1, concurrency // workers)
        spec = ChurnSpec(
            url=f"ws://127.0.0.1:{server.port}{target.path}",
            protocol=target.protocol,
            concurrency=per_worker,
            duration=duration,
        )
        progress(f"{target.name}: {per_worker * workers} loops opening and closing")
        cpu_before = server.monitor.cpu_seconds()
        busy_before = machine_busy_seconds()
        began = time.monotonic()
        result = run_churn(spec, workers)
        wall = time.monotonic() - began
        cpu = server.monitor.cpu_seconds() - cpu_before
        busy = machine_busy_seconds() - busy_before
        server.monitor.sample_rss()
        peak = server.monitor.peak_rss
    except RuntimeError as exc:
        return dataclasses.replace(base, error=f"{exc}; log: {server.log_tail(3)}")
    finally:
        server.stop()
    own = cpu + sum(usage.cpu_seconds for usage in result.generator_cpu)
    return dataclasses.replace(
        base,
        ok=True,
        concurrency=per_worker * workers,
        duration_s=result.wall_s,
        cycles=result.cycles,
        per_second=result.per_second,
        failures=dict(result.failures),
        open_latency=summarize(result.open_us),
        server_cpu_ms_per_1k=cpu * 1000 / (result.cycles / 1000) if result.cycles else None,
        server_cpu_share=cpu / wall if wall > 0 else 0.0,
        peak_rss_mb=peak / MB,
        generator_cpu_share=sum(usage.share for usage in result.generator_cpu),
        generator_max_process_share=max((u.share for u in result.generator_cpu), default=0.0),
        other_cpu_share=max(0.0, busy - own) / wall if wall > 0 else 0.0,
    )
