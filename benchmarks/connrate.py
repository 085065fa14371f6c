"""Connection rate: connections opened and closed per second, and what each costs the server.

A fresh server; ``workers`` generator processes run ``concurrency`` loops in all, each opening a
connection, completing the target's own opening handshake and closing it
(``benchmarks.generator.churn``): on ``/v1/ws`` until ``welcome``, on the NATS server until the
``PONG`` that answers ``CONNECT`` + ``PING``, on socket.io until its namespace connect is
acknowledged, on ``/ws/chat`` at the WebSocket handshake. With ``connections`` the run ends when
that many have opened (the time it took is reported), else after ``duration`` seconds. Reported:
completed cycles per second, failures, the time to open (p50/p99/max), server CPU per 1,000
connections and peak RSS.

Run alone, it measures several targets in one run, interleaved over ``--rounds``, with
``--baseline DIR`` adding the broker targets from another revision's packages:

    .venv/bin/python -m benchmarks.connrate                      # 10,000 connections per target
    .venv/bin/python -m benchmarks.connrate --targets broker-v1-json,naive --connections 2000
    .venv/bin/python -m benchmarks.connrate --baseline /tmp/base --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.generator.churn import ChurnSpec, run_churn
from benchmarks.outputs import say, write_report
from benchmarks.scenarios import MB
from benchmarks.server import ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.stats import LatencySummary, summarize
from benchmarks.targets import (
    Target,
    baseline_target,
    build_targets,
    peer_unavailable,
    with_broker_env,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    #: The connections asked for (None: a run of ``duration_s``).
    wanted: int | None = None

    @property
    def seconds_for_10k(self) -> float | None:
        """Seconds 10,000 connections take at this rate."""
        return 10_000 / self.per_second if self.per_second > 0 else None


def connection_rate(
    target: Target,
    *,
    concurrency: int,
    duration: float,
    workers: int,
    log_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
    connections: int | None = None,
) -> ConnRateResult:
    """Open and close connections with ``concurrency`` loops in all: ``connections`` of them
    (``duration`` then bounds the run), or as many as ``duration`` s allows."""
    base = ConnRateResult(
        target.name, target.description, ok=False, concurrency=concurrency, wanted=connections
    )
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
            connections=None if connections is None else -(-connections // workers),
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


# --- the command line: several targets, one run ------------------------------------------------


@dataclasses.dataclass
class Row:
    result: ConnRateResult
    round: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def row_line(row: Row) -> str:
    r = row.result
    if not r.ok:
        return f"| {r.target} ({row.round}) | error: {r.error} |" + " |" * 8
    latency = r.open_latency
    p50 = f"{latency.p50_ms:.1f}" if latency and latency.p50_ms is not None else "-"
    p99 = f"{latency.p99_ms:.1f}" if latency and latency.p99_ms is not None else "-"
    cpu = f"{r.server_cpu_ms_per_1k:.0f}" if r.server_cpu_ms_per_1k is not None else "-"
    ten_k = f"{r.seconds_for_10k:.2f}" if r.seconds_for_10k is not None else "-"
    return (
        f"| {r.target} ({row.round}) | {r.cycles:,} | {r.per_second:,.0f} | {ten_k} |"
        f" {sum(r.failures.values())} | {p50} | {p99} | {cpu} |"
        f" {100 * r.generator_cpu_share:.0f}% | {100 * r.other_cpu_share:.0f}% |"
        f" {row.load_before[0]:.2f} -> {row.load_after[0]:.2f} |"
    )


TABLE_HEAD = (
    "| target (round) | opened | connections/s | s for 10,000 | failures | open p50 ms |"
    " open p99 ms | server CPU ms per 1,000 | generator CPU | other CPU | load avg |",
    "|" + "---|" * 11,
)


def medians(rows: Sequence[Row]) -> list[str]:
    """Each target's median rate and CPU over its rounds, and the ratios the goal asks for."""
    grouped: dict[str, list[ConnRateResult]] = {}
    for row in rows:
        if row.result.ok and row.result.cycles:
            grouped.setdefault(row.result.target, []).append(row.result)
    rate = {name: statistics.median(r.per_second for r in rs) for name, rs in grouped.items()}
    cpu = {
        name: statistics.median(r.server_cpu_ms_per_1k or 0.0 for r in rs)
        for name, rs in grouped.items()
    }
    lines = [
        "| target | rounds | median connections/s | s for 10,000 | median server CPU ms per"
        " 1,000 | rate ÷ socketio | CPU ÷ naive |",
        "|" + "---|" * 7,
    ]
    for name, results in grouped.items():
        versus_socketio = f"{rate[name] / rate['socketio']:.2f}x" if "socketio" in rate else "-"
        versus_naive = f"{cpu[name] / cpu['naive']:.2f}x" if cpu.get("naive") else "-"
        lines.append(
            f"| {name} | {len(results)} | {rate[name]:,.0f} | {10_000 / rate[name]:.2f} |"
            f" {cpu[name]:.0f} | {versus_socketio} | {versus_naive} |"
        )
    return lines


#: The phases of one connection on the broker's ``/v1/ws``, for ``--phases``: a sample of a
#: profile (``py-spy record --native``) goes to the first phase with a frame on its stack
#: (order matters: the system calls first, wherever they are made from).
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "kernel: sending and closing (write; the uncork and close(2) that send what was held)",
        ("write (libc", "setsockopt (libc", "uv__close", "shutdown (libc"),
    ),
    (
        "kernel: accept, socket addresses, reads",
        ("accept4 (libc", "getsockname (libc", "getpeername (libc", "read (libc"),
    ),
    (
        "handshake answered: checks, Sec-WebSocket-Accept, scope, 101",
        (
            "ServerProtocol.accept",
            "process_request",
            "send_response",
            "._accept",
            "read_opening",
            "BrokerWebSocketProtocol.open",
            "frame_protocol",
        ),
    ),
    ("handshake request parsed again by websockets (the unusual ones)", ("Request.parse",)),
    (
        "closing handshake and teardown (uvicorn, transport)",
        ("handle_close", "connection_lost", "on_task_complete", "Protocol.receive_data"),
    ),
    (
        "log lines (connection.opened, connection.closed)",
        ("_log_closed", "connection.py:322", "BoundLoggerLazyProxy", "broker/logs.py:"),
    ),
    ("ASGI scope and task (uvicorn)", ("WebSocketsSansIOProtocol.handle_connect",)),
    (
        "WebSocket protocol object, hand-over from HTTP",
        (
            "BrokerWebSocketProtocol.__init__",
            "adopt",
            "start_handshake_deadline",
            "handle_websocket_upgrade",
        ),
    ),
    (
        "HTTP protocol object, socket tally, deadline",
        ("BrokerHttpProtocol.__init__", "connection_made", "create_protocol"),
    ),
    (
        "HTTP request parsed (httptools)",
        ("HttpToolsProtocol.data_received", "BrokerHttpProtocol.data_received"),
    ),
    ("admission: origin, auth, limits", ("_admit",)),
    (
        "Connection, reader, welcome",
        ("_connection", "V1Reader", "Connection.__init__", "_flush_soon"),
    ),
    (
        "connection task: run, cancel scope, hub, registry",
        ("Connection.run", "serve_v1", "BrokerApp.__call__", "run_asgi", "Hub.run"),
    ),
    ("garbage collector", ("gc_collect",)),
    ("event loop: epoll, timers, callbacks", ("epoll", "uv_run", "Loop__")),
)


def phases(profile: Path) -> list[tuple[str, float]]:
    """Shares of a py-spy profile (``--format raw``) by ``PHASES``; the rest is "other"."""
    counts: dict[str, int] = {}
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "loopwatch" in stack:
            continue
        total += int(count)
        frames = stack.split(";")
        name = next(
            (
                phase
                for phase, keys in PHASES
                if any(key in frame for frame in frames for key in keys)
            ),
            "other",
        )
        counts[name] = counts.get(name, 0) + int(count)
    return sorted(((name, n / total) for name, n in counts.items()), key=lambda x: -x[1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.connrate",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--targets", default="broker-v1-json,naive,nats,socketio", help="comma-separated"
    )
    parser.add_argument("--connections", type=int, default=10_000, help="per target and round")
    parser.add_argument("--concurrency", type=int, default=50, help="open/close loops in all")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per target, at most")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every target")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the broker targets from another revision's packages in DIR",
    )
    parser.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra BROKER_* environment for the broker targets (repeatable)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--phases",
        type=Path,
        default=None,
        metavar="PROFILE",
        help="only print where a py-spy profile of the broker (--format raw) went, by phase",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phases is not None:
        say("| phase | share of samples |")
        say("|---|---|")
        for name, share in phases(args.phases):
            say(f"| {name} | {100 * share:.1f}% |")
        return 0
    broker_env = dict(item.split("=", 1) for item in args.broker_env)
    known = {name: with_broker_env(target, broker_env) for name, target in build_targets().items()}
    targets: list[Target] = []
    for name in [part.strip() for part in args.targets.split(",") if part.strip()]:
        if name not in known:
            raise SystemExit(f"unknown target {name}; known: {sorted(known)}")
        why = peer_unavailable(name)
        if why is not None:
            say(f"{name} skipped: {why}")
            continue
        targets.append(known[name])
        if args.baseline is not None and name.startswith("broker"):
            targets.append(baseline_target(known[name], args.baseline.resolve()))
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    log_dir = args.results / "logs" / f"connrate-{stamp}"
    rows: list[Row] = []
    first_load = os.getloadavg()
    for round_ in range(1, args.rounds + 1):
        for target in targets:
            before = os.getloadavg()
            result = connection_rate(
                target,
                concurrency=args.concurrency,
                duration=args.timeout,
                workers=args.workers,
                log_dir=log_dir,
                progress=lambda message: say(f"  {message}"),
                connections=args.connections,
            )
            rows.append(Row(result, round_, before, os.getloadavg()))
            say(row_line(rows[-1]))
    lines = [
        f"# Connection rate: {created:%Y-%m-%d %H:%M} UTC",
        "",
        f"{os.cpu_count()} cores; load average (1 min) {first_load[0]:.2f} before the run,"
        f" {os.getloadavg()[0]:.2f} after; {args.connections:,} connections per target and"
        f" round, {args.concurrency} loops in {args.workers} generator processes,"
        f" {args.rounds} round(s); broker environment {broker_env or 'default'}.",
        "",
        *TABLE_HEAD,
        *(row_line(row) for row in rows),
        "",
        *medians(rows),
    ]
    record = {
        "created": created.isoformat(timespec="seconds"),
        "rows": [dataclasses.asdict(row) for row in rows],
    }
    write_report(args.results, f"connrate-{stamp}", lines, record, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
