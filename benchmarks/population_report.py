"""The figures of one large-population run (``benchmarks.population_big``) and their report."""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks.fmt import fmt_ms
from benchmarks.stats import LatencySummary


@dataclasses.dataclass(frozen=True)
class Figures:
    scenario: str
    connections: int
    workers: int
    duration_s: float
    personal_rate: float
    broadcast_rate: float
    message_bytes: int
    heartbeat_s: float
    generators: int
    connected: int
    connect_failed: int
    connect_errors: list[str]
    connect_s: float
    #: Server CPU spent while everyone connected and subscribed, per 1,000 connections.
    connect_server_cpu_ms_per_1k: float
    broadcasts_sent: int
    personal_sent: int
    publisher_max_lag_ms: float
    broadcast: LatencySummary
    personal: LatencySummary
    broadcast_lost: int
    personal_lost: int
    duplicates: int
    out_of_order: int
    unexpected: int
    closes: dict[str, int]
    errors: dict[str, int]
    rss_base_mib: float
    rss_open_mib: float
    rss_steady_mib: float
    rss_peak_mib: float
    rss_per_connection_kib: float
    rss_steady_per_connection_kib: float
    tcp_mem_base_kib: float
    tcp_mem_open_kib: float
    tcp_mem_steady_kib: float
    tcp_mem_peak_kib: float
    #: Peak TCP buffer memory over the run minus before, per connection (both its ends).
    tcp_mem_per_connection_bytes: float
    #: Kernel slab after connecting minus before, per connection (both ends; machine-wide).
    slab_per_connection_kib: float
    sunreclaim_per_connection_kib: float
    tcp_inuse_open: int
    #: Open files of each process of the broker's tree (the supervisor first).
    server_fds: list[int]
    redis_rss_mib: float | None
    steady_s: float
    #: CPU over the steady phase, as a share of one core.
    server_cpu_share: float | None
    #: Broker CPU from the first publication until every generator reported (late deliveries
    #: included), over the publications delivered; heartbeats and pings are in it.
    server_cpu_us_per_delivery: float | None
    redis_cpu_share: float | None
    generator_cpu_share: float
    other_cpu_share: float
    load_connected: list[float]
    load_steady: list[float]
    p99_target_ms: float
    rss_target_kib: float | None

    @property
    def lost(self) -> int:
        return self.broadcast_lost + self.personal_lost


def targets_met(f: Figures) -> dict[str, bool]:
    """Each part of the target: every connection in, p99 of both kinds, nothing lost, RSS."""
    if (f.broadcast_rate, f.personal_rate) != (1.0, 1000.0):
        return {"full_load": False}
    met = {
        "all_connected": f.connected == f.connections and f.connect_failed == 0,
        "p99": all(
            s.p99_ms is not None and s.p99_ms < f.p99_target_ms for s in (f.broadcast, f.personal)
        ),
        "nothing_lost": f.lost == 0 and not f.closes,
    }
    if f.rss_target_kib is not None:
        met["rss_per_connection"] = f.rss_per_connection_kib <= f.rss_target_kib
    return met


def _load(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(f: Figures, meta: dict[str, Any]) -> str:
    met = targets_met(f)
    lines = [
        f"# Population {f.scenario}: {f.connections:,} connections, {f.workers} worker(s)",
        "",
        f"{meta['created']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB;"
        f" {f.duration_s:g} s steady: {f.broadcast_rate:g} broadcast/s to everyone,"
        f" {f.personal_rate:g} personal"
        f" publications/s, {f.message_bytes}-byte payloads, heartbeat {f.heartbeat_s:g} s;"
        f" {f.generators} generator processes.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| connected | {f.connected:,} of {f.connections:,} (failed {f.connect_failed})"
        f" in {f.connect_s:.0f} s |",
        f"| server CPU to connect | {f.connect_server_cpu_ms_per_1k:.0f} ms per 1,000 |",
        f"| sent | {f.broadcasts_sent} broadcasts, {f.personal_sent:,} personal"
        f" (publisher lag max {f.publisher_max_lag_ms:.0f} ms) |",
    ]
    for name, summary, lost in (
        ("broadcast", f.broadcast, f.broadcast_lost),
        ("personal", f.personal, f.personal_lost),
    ):
        lines.append(
            f"| {name} latency p50 / p99 / max | {fmt_ms(summary.p50_ms)} /"
            f" {fmt_ms(summary.p99_ms)} / {fmt_ms(summary.max_ms)} ms ({summary.count:,}"
            f" delivered, lost {lost:,}) |"
        )
    lines += [
        f"| duplicates / out of order / unexpected | {f.duplicates} / {f.out_of_order} /"
        f" {f.unexpected} |",
        f"| closed during the run | {f.closes or 'none'} |",
        f"| server RSS before / connected / steady / peak | {f.rss_base_mib:.0f} /"
        f" {f.rss_open_mib:.0f} / {f.rss_steady_mib:.0f} / {f.rss_peak_mib:.0f} MiB |",
        f"| server RSS per connection | {f.rss_per_connection_kib:.1f} KiB connected,"
        f" {f.rss_steady_per_connection_kib:.1f} KiB after the steady phase |",
        f"| kernel TCP buffers (sockstat mem) before / connected / steady / peak |"
        f" {f.tcp_mem_base_kib / 1024:.1f} / {f.tcp_mem_open_kib / 1024:.1f} /"
        f" {f.tcp_mem_steady_kib / 1024:.1f} / {f.tcp_mem_peak_kib / 1024:.1f} MiB"
        f" ({f.tcp_mem_per_connection_bytes:.0f} bytes per connection at the peak) |",
        f"| kernel slab per connection (both ends, machine-wide) |"
        f" {f.slab_per_connection_kib:.1f} KiB (unreclaimable"
        f" {f.sunreclaim_per_connection_kib:.1f} KiB) |",
        f"| broker open files per process | {f.server_fds} |",
        f"| Redis RSS | {'-' if f.redis_rss_mib is None else f'{f.redis_rss_mib:.0f} MiB'} |",
        f"| CPU, steady phase (share of one core) | broker {_pct(f.server_cpu_share)}, Redis"
        f" {_pct(f.redis_cpu_share)}, generator {_pct(f.generator_cpu_share)}, rest of the"
        f" machine {_pct(f.other_cpu_share)} |",
        f"| broker CPU per delivery | "
        f"{'-' if f.server_cpu_us_per_delivery is None else f'{f.server_cpu_us_per_delivery:.1f}'}"
        " µs (from the first publication until drained; heartbeats and pings included) |",
        f"| load average (1, 5, 15 min) connected; after steady | {_load(f.load_connected)};"
        f" {_load(f.load_steady)} |",
        "",
        f"Target: p99 < {f.p99_target_ms:g} ms, nothing lost"
        + (f", <= {f.rss_target_kib:g} KiB RSS per connection" if f.rss_target_kib else "")
        + ": "
        + (
            "not judged (a reduced load: the target is for 1 broadcast/s and 1,000 personal/s)"
            if "full_load" in met
            else ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in met.items())
        ),
        "",
    ]
    if f.connect_errors:
        lines += ["Connect errors (retried): " + "; ".join(f.connect_errors), ""]
    if f.errors:
        lines += [f"Protocol errors: {f.errors}", ""]
    return "\n".join(lines)
