"""Large populations: as many connections as one process may hold, then 100,000 on one machine.

Every connection subscribes on ``/v1/ws`` to one shared channel and to a personal channel of its
own; the publisher sends one broadcast a second to the shared channel and 1,000 personal
publications a second, round-robin over the personal channels, for ``--duration`` seconds once
every connection is in (``benchmarks.generator.personal``, ``personal_publisher``).

- ``c19k``: one broker process (the memory backplane), 19,000 connections: the most a process
  may hold under an open-file limit of 20,000.
- ``c100k``: ``broker serve --workers 6`` on a private ``redis-server``, 100,000 connections,
  each worker process under the same limit (``limits.max_connections`` 19,500 per worker; a
  client refused at it retries and lands on another worker).

The generator spreads its sockets over processes of at most ``--per-generator`` connections,
each binding its sockets to its own loopback source address (127.0.0.2, .3, ...), so that
neither a process's open files nor one address's ephemeral ports run out.

Reported: time to connect and subscribe everyone, p50/p99/max latency of broadcasts and of
personal publications, loss, server RSS (the process tree) before and after the connections and
per connection, broker, Redis and generator CPU over the steady phase and per delivery, Redis
RSS, the kernel's TCP buffer memory (``/proc/net/sockstat`` ``TCP mem``, pages) and slab memory
(``/proc/meminfo``) before and after, per connection (both ends of each loopback connection are
on this machine), each worker's open files, and the load average. Results go to
``benchmarks/results/population-<scenario>-<stamp>.json`` and ``.md``.

    .venv/bin/python -m benchmarks.population_big c19k
    .venv/bin/python -m benchmarks.population_big c100k
    .venv/bin/python -m benchmarks.population_big c19k --connections 2000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TypeVar

import psutil

from benchmarks import fastws
from benchmarks.fdlimit import raise_nofile
from benchmarks.generator.control import Go, Ready, Stop, Warm, Warmup
from benchmarks.generator.personal import DrainAll, PersonalReport, PersonalSpec, personal_main
from benchmarks.generator.personal_publisher import (
    PublisherReport,
    PublisherSpec,
    publisher_main,
)
from benchmarks.population_report import Figures, markdown, targets_met
from benchmarks.scaleout_redis import RedisProcess
from benchmarks.server import ServerCommand, ServerProcess, machine_busy_seconds
from benchmarks.stats import summarize
from benchmarks.targets import broker_command
from benchmarks.wire import Protocol

T = TypeVar("T")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATH = "/v1/ws"
#: Connections one broker worker accepts in ``c100k`` (under the 20,000 open files a process
#: may hold, with room for its listening socket, Redis links and logs).
WORKER_LIMIT = 19_500


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    workers: int
    duration: float
    p99_target_ms: float
    rss_target_kib: float | None


SCENARIOS = {
    "c19k": Scenario("c19k", 19_000, 1, 30.0, 500.0, 16.0),
    "c100k": Scenario("c100k", 100_000, 6, 30.0, 2000.0, None),
}


@dataclasses.dataclass(frozen=True)
class KernelMemory:
    """``/proc/net/sockstat`` TCP figures and ``/proc/meminfo`` slab, at one moment."""

    tcp_inuse: int
    tcp_mem_pages: int
    slab_kib: int
    sunreclaim_kib: int

    @staticmethod
    def read() -> KernelMemory:
        tcp: dict[str, int] = {}
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                tcp = {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
        meminfo: dict[str, int] = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            meminfo[name] = int(value.split()[0])
        return KernelMemory(
            tcp_inuse=tcp.get("inuse", 0),
            tcp_mem_pages=tcp.get("mem", 0),
            slab_kib=meminfo.get("Slab", 0),
            sunreclaim_kib=meminfo.get("SUnreclaim", 0),
        )


def _collect(pipes: Sequence[Connection], kind: type[T], deadline: float, what: str) -> list[T]:
    """One ``kind`` message from every pipe by ``deadline`` (monotonic), else RuntimeError."""
    got: dict[int, T] = {}
    while len(got) < len(pipes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{what}: {len(pipes) - len(got)} process(es) did not answer")
        for ready in wait([p for i, p in enumerate(pipes) if i not in got], timeout=remaining):
            assert isinstance(ready, Connection)
            index = pipes.index(ready)
            try:
                message = ready.recv()
            except EOFError:
                raise RuntimeError(f"{what}: a generator process exited") from None
            if isinstance(message, kind):
                got[index] = message
    return [got[index] for index in range(len(pipes))]


async def _warm_up(port: int, count: int) -> None:
    """Open and close ``count`` connections so one-off allocations are not counted per client."""

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError, fastws.HandshakeFailed):
            client = await fastws.connect(
                "127.0.0.1", port, PATH, lambda _, __: None,
                subprotocol=Protocol.V1.subprotocol, open_timeout=10,
            )  # fmt: skip
            await asyncio.sleep(0.05)
            await client.close(wait=1.0)

    await asyncio.gather(*(one() for _ in range(count)))


def _worker_fds(server: ServerProcess) -> list[int]:
    """Open files of each process of the server's tree (the supervisor first)."""
    counts = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(server.pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                counts.append(proc.num_fds())
    return counts


class Run:
    """One scenario run: Redis (with workers), the broker, the generator, the measurements."""

    def __init__(self, scenario: Scenario, args: argparse.Namespace, stamp: str) -> None:
        self.scenario = scenario
        self.args = args
        self.log_dir = args.results / "logs" / f"population-{scenario.name}-{stamp}"
        self.redis: RedisProcess | None = None
        self.server: ServerProcess | None = None
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.figures: dict[str, Any] = {}
        self.began = time.monotonic()

    def say(self, message: str) -> None:
        load = "/".join(f"{value:.1f}" for value in os.getloadavg())
        sys.stdout.write(f"[{time.monotonic() - self.began:6.1f} s, load {load}] {message}\n")
        sys.stdout.flush()

    def command(self) -> ServerCommand:
        s = self.scenario
        env = {"BROKER_WEBSOCKET__HEARTBEAT": str(self.args.heartbeat)}
        if s.workers > 1:
            assert self.redis is not None
            env["BROKER_BACKPLANE__KIND"] = "redis"
            env["BROKER_BACKPLANE__REDIS_URL"] = self.redis.url
            env["BROKER_LIMITS__MAX_CONNECTIONS"] = str(WORKER_LIMIT)
        else:
            env["BROKER_LIMITS__MAX_CONNECTIONS"] = str(s.connections + 100)
        base = broker_command(env)
        workers = ["--workers", str(s.workers)] if s.workers > 1 else []
        return dataclasses.replace(base, argv=[*base.argv, *workers])

    def generator_specs(self, port: int) -> list[PersonalSpec]:
        s = self.scenario
        count = max(2, math.ceil(s.connections / self.args.per_generator))
        share, extra = divmod(s.connections, count)
        specs = []
        first = 0
        for index in range(count):
            clients = share + (1 if index < extra else 0)
            specs.append(
                PersonalSpec(
                    index=index,
                    host="127.0.0.1",
                    port=port,
                    path=PATH,
                    protocol=Protocol.V1,
                    source=f"127.0.0.{2 + index}",
                    first=first,
                    clients=clients,
                    population=s.connections,
                    shared="everyone",
                    prefix="user",
                    planned_broadcasts=math.ceil(s.duration * self.args.broadcast_rate) + 2,
                    heartbeat=self.args.heartbeat,
                    connect_timeout=self.args.connect_timeout,
                    open_timeout=self.args.open_timeout,
                )
            )
            first += clients
        return specs

    def spawn(self, target: Any, spec: Any, name: str) -> Connection:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=target, args=(spec, child), name=name, daemon=True)
        process.start()
        self.processes.append(process)
        return parent

    def execute(self) -> Figures:
        s = self.scenario
        limit = raise_nofile()
        self.say(
            f"{s.name}: {s.connections} connections, {s.workers} worker(s), {s.duration:g} s;"
            f" open-file limit {limit.soft} (hard {limit.hard})"
        )
        if s.workers > 1:
            self.redis = RedisProcess(self.log_dir / "redis.log")
            self.redis.start()
        self.server = server = ServerProcess(
            self.command(), log_path=self.log_dir / "broker.log", start_timeout=60
        )
        server.start()
        asyncio.run(_warm_up(server.port, 50))
        time.sleep(1.0)
        rss_base = server.monitor.sample_rss()
        kernel_base = KernelMemory.read()
        cpu0 = server.monitor.cpu_seconds()
        busy0 = machine_busy_seconds()
        specs = self.generator_specs(server.port)
        self.say(f"{len(specs)} generator processes, sources {specs[0].source}..{specs[-1].source}")
        began = time.monotonic()
        gen_pipes = [self.spawn(personal_main, spec, f"gen-{spec.index}") for spec in specs]
        self.pipes.extend(gen_pipes)
        ready = _collect(
            gen_pipes, Ready, time.monotonic() + self.args.connect_timeout + 60, "connect"
        )
        connect_s = time.monotonic() - began
        connected = sum(r.connected for r in ready)
        failed = sum(r.failed for r in ready)
        connect_cpu = server.monitor.cpu_seconds() - cpu0
        connect_busy = machine_busy_seconds() - busy0
        self.say(
            f"connected {connected}, failed {failed} in {connect_s:.1f} s;"
            f" errors {[e for r in ready for e in r.errors][:4]}"
        )
        time.sleep(2.0)
        rss_open = server.monitor.sample_rss()
        kernel_open = KernelMemory.read()
        fds = _worker_fds(server)
        redis_rss_open = self._redis_rss()
        load_connected = os.getloadavg()
        self.say(
            f"server RSS {rss_base / 2**20:.0f} -> {rss_open / 2**20:.0f} MiB;"
            f" TCP mem {kernel_base.tcp_mem_pages} -> {kernel_open.tcp_mem_pages} pages;"
            f" fds {fds}"
        )

        pub_spec = PublisherSpec(
            host="127.0.0.1",
            port=server.port,
            path=PATH,
            protocol=Protocol.V1,
            population=s.connections,
            shared="everyone",
            prefix="user",
            duration=s.duration,
            personal_rate=self.args.personal_rate,
            broadcast_rate=self.args.broadcast_rate,
            message_bytes=self.args.message_bytes,
        )
        pub = self.spawn(publisher_main, pub_spec, "publisher")
        self.pipes.append(pub)
        _collect([pub], Ready, time.monotonic() + 60, "publisher")
        pub.send(Warmup())
        _collect(gen_pipes, Warm, time.monotonic() + 300, "warm-up")
        self.say("warm: every client got a warm-up broadcast; measuring")

        start_ns = time.time_ns() + 500_000_000
        time.sleep(0.5)
        cpu1 = server.monitor.cpu_seconds()
        redis_cpu1 = self.redis.cpu_seconds() if self.redis else 0.0
        busy1 = machine_busy_seconds()
        steady_began = time.monotonic()
        for pipe in [*gen_pipes, pub]:
            pipe.send(Go(start_ns))
        tcp_mem_peak = kernel_open.tcp_mem_pages
        rss_peak = rss_open
        deadline = time.monotonic() + s.duration + 60
        while not pub.poll(1.0):
            tcp_mem_peak = max(tcp_mem_peak, KernelMemory.read().tcp_mem_pages)
            rss_peak = max(rss_peak, server.monitor.sample_rss())
            if time.monotonic() > deadline:
                raise RuntimeError("the publisher did not finish")
        published = pub.recv()
        assert isinstance(published, PublisherReport)
        steady_s = time.monotonic() - steady_began
        cpu_steady = server.monitor.cpu_seconds() - cpu1
        redis_cpu = (self.redis.cpu_seconds() - redis_cpu1) if self.redis else None
        busy_steady = machine_busy_seconds() - busy1
        load_steady = os.getloadavg()
        kernel_steady = KernelMemory.read()
        rss_steady = server.monitor.sample_rss()
        self.say(f"sent {published.broadcasts} broadcasts, {published.personal} personal; draining")
        drain = DrainAll(
            published.broadcasts,
            published.personal,
            time.time_ns() + int(self.args.drain_timeout * 1e9),
        )
        for pipe in gen_pipes:
            pipe.send(drain)
        reports = _collect(
            gen_pipes, PersonalReport, time.monotonic() + self.args.drain_timeout + 120, "drain"
        )
        # Late deliveries cost CPU after the publisher stopped: per delivery, count until here.
        cpu_to_drained = server.monitor.cpu_seconds() - cpu1
        return self._figures(
            connected=connected,
            failed=failed,
            connect_s=connect_s,
            connect_cpu=connect_cpu,
            connect_busy=connect_busy,
            rss=(rss_base, rss_open, rss_steady, max(rss_peak, server.monitor.peak_rss)),
            kernel=(kernel_base, kernel_open, kernel_steady, tcp_mem_peak),
            fds=fds,
            redis_rss_open=redis_rss_open,
            steady=(steady_s, cpu_steady, redis_cpu, busy_steady),
            cpu_to_drained=cpu_to_drained,
            loads=(load_connected, load_steady),
            published=published,
            reports=reports,
            errors=[e for r in ready for e in r.errors],
        )

    def _redis_rss(self) -> int | None:
        if self.redis is None:
            return None
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.redis.pid).memory_info().rss)
        return None

    def _figures(self, **m: Any) -> Figures:
        s = self.scenario
        page = os.sysconf("SC_PAGE_SIZE")
        kb, ko, ks, tcp_peak = m["kernel"]
        rss_base, rss_open, rss_steady, rss_peak = m["rss"]
        steady_s, cpu_steady, redis_cpu, busy = m["steady"]
        reports: list[PersonalReport] = m["reports"]
        published: PublisherReport = m["published"]
        broadcast_us: array[int] = array("q")
        personal_us: array[int] = array("q")
        closes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for report in reports:
            broadcast_us.frombytes(report.broadcast_us)
            personal_us.frombytes(report.personal_us)
            closes.update(report.closes)
            errors.update(report.errors)
        b_lost = sum(r.broadcast_lost for r in reports)
        p_lost = sum(r.personal_lost for r in reports)
        deliveries = len(broadcast_us) + len(personal_us)
        connected = max(1, m["connected"])
        gen_cpu = sum(r.cpu.cpu_seconds for r in reports) + published.cpu.cpu_seconds
        server_and_gen = max(0.0, cpu_steady) + gen_cpu + (redis_cpu or 0.0)
        return Figures(
            scenario=s.name,
            connections=s.connections,
            workers=s.workers,
            duration_s=s.duration,
            personal_rate=self.args.personal_rate,
            broadcast_rate=self.args.broadcast_rate,
            message_bytes=self.args.message_bytes,
            heartbeat_s=self.args.heartbeat,
            generators=len(reports),
            connected=m["connected"],
            connect_failed=m["failed"],
            connect_errors=m["errors"][:8],
            connect_s=m["connect_s"],
            connect_server_cpu_ms_per_1k=m["connect_cpu"] * 1e6 / connected,
            broadcasts_sent=published.broadcasts,
            personal_sent=published.personal,
            publisher_max_lag_ms=published.max_lag_ms,
            broadcast=summarize(broadcast_us, b_lost),
            personal=summarize(personal_us, p_lost),
            broadcast_lost=b_lost,
            personal_lost=p_lost,
            duplicates=sum(r.duplicates for r in reports),
            out_of_order=sum(r.out_of_order for r in reports),
            unexpected=sum(r.unexpected for r in reports),
            closes=dict(closes),
            errors=dict(errors),
            rss_base_mib=rss_base / 2**20,
            rss_open_mib=rss_open / 2**20,
            rss_steady_mib=rss_steady / 2**20,
            rss_peak_mib=rss_peak / 2**20,
            rss_per_connection_kib=(rss_open - rss_base) / connected / 1024,
            rss_steady_per_connection_kib=(rss_steady - rss_base) / connected / 1024,
            tcp_mem_base_kib=kb.tcp_mem_pages * page / 1024,
            tcp_mem_open_kib=ko.tcp_mem_pages * page / 1024,
            tcp_mem_steady_kib=ks.tcp_mem_pages * page / 1024,
            tcp_mem_peak_kib=tcp_peak * page / 1024,
            tcp_mem_per_connection_bytes=(tcp_peak - kb.tcp_mem_pages) * page / connected,
            slab_per_connection_kib=(ko.slab_kib - kb.slab_kib) / connected,
            sunreclaim_per_connection_kib=(ko.sunreclaim_kib - kb.sunreclaim_kib) / connected,
            tcp_inuse_open=ko.tcp_inuse,
            server_fds=m["fds"],
            redis_rss_mib=(m["redis_rss_open"] / 2**20) if m["redis_rss_open"] else None,
            steady_s=steady_s,
            # A worker that died and was replaced takes its CPU time with it: no figure then.
            server_cpu_share=cpu_steady / steady_s if cpu_steady >= 0 else None,
            server_cpu_us_per_delivery=(
                m["cpu_to_drained"] * 1e6 / deliveries
                if deliveries and m["cpu_to_drained"] >= 0
                else None
            ),
            redis_cpu_share=(redis_cpu / steady_s) if redis_cpu is not None else None,
            generator_cpu_share=gen_cpu / steady_s,
            other_cpu_share=max(0.0, busy - server_and_gen) / steady_s,
            load_connected=list(m["loads"][0]),
            load_steady=list(m["loads"][1]),
            p99_target_ms=s.p99_target_ms,
            rss_target_kib=s.rss_target_kib,
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()  # first: the clients' departures are then no work for it
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(Stop())
        deadline = time.monotonic() + 10  # for all of them: thousands of clients each
        for process in self.processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
        if self.redis is not None:
            self.redis.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.population_big",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--connections", type=int, help="instead of the scenario's")
    parser.add_argument("--workers", type=int, help="broker processes instead of the scenario's")
    parser.add_argument("--duration", type=float, help="seconds of steady load")
    parser.add_argument("--personal-rate", type=float, default=1000.0, help="publications/s")
    parser.add_argument(
        "--broadcast-rate",
        type=float,
        default=1.0,
        help="broadcasts/s to everyone; below 1 (a reduced load) the targets are not judged",
    )
    parser.add_argument("--message-bytes", type=int, default=200)
    parser.add_argument("--heartbeat", type=float, default=25.0, help="websocket.heartbeat (s)")
    parser.add_argument(
        "--per-generator", type=int, default=16_000, help="most connections per generator process"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=900.0,
        help="seconds the generator may take to connect; past it, the run goes on with those in",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=300.0,
        help="seconds one client may take to connect and subscribe before it retries (a short"
        " one makes a loaded server's accept queue outlast it: every handshake wasted)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to wait for late deliveries"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.per_generator > 19_000:
        parser.error("--per-generator must stay under the 20,000 open files of a process")
    return args


def measure(argv: Sequence[str]) -> tuple[Figures, Path]:
    """Run one scenario (``argv`` as on the command line); its figures and the report's path."""
    args = parse_args(argv)
    base = SCENARIOS[args.scenario]
    scenario = dataclasses.replace(
        base,
        connections=args.connections or base.connections,
        workers=args.workers or base.workers,
        duration=args.duration or base.duration,
    )
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    run = Run(scenario, args, stamp)
    try:
        figures = run.execute()
    finally:
        run.close()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"population-{scenario.name}-{stamp}"
    meta = {
        "created": created.isoformat(timespec="seconds"),
        "argv": list(argv),
        "cores": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
    }
    data = {"meta": meta, "figures": dataclasses.asdict(figures), "met": targets_met(figures)}
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(figures, meta))
    return figures, path.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGTERM (``timeout``) unwinds through ``run.close()``: no broker or Redis left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, path = measure(sys.argv[1:] if argv is None else argv)
    sys.stdout.write("\n" + path.read_text() + f"\nJSON: {path.with_suffix('.json')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
