"""Soak: thousands of connections with churn for a long time; nothing missed, nothing left behind.

A broker (``broker serve``, one process, its own port) gets ``--clients`` WebSocket clients spread
over ``--channels`` channels of a namespace with history (the recovery window,
``--history`` publications per channel), a publisher at ``--rate`` publications per second, and
churn: ``--churn`` times per second a random client's socket is reset (an RST, no close
handshake) and the client reconnects at once, subscribing again with ``since`` = the last offset
and epoch it saw. For ``--duration`` seconds (10 minutes by default); then publishing stops, every
client must catch up, and every client leaves.

It prints, and fails (exit 1) unless:

* **missed 0**: every client got every publication of its channel from its first subscription
  on, in order, without duplicates, across all its reconnections (live or recovered);
* **counts back to baseline**: open connections and subscriptions 0, asyncio tasks back to what
  they were before the clients came (``/metrics``), sockets open (the server process's) back too;
* **no upward RSS slope** after warm-up (``--warmup``, default 20% of the run): the least-squares
  slope of the server's RSS, sampled every 5 s, under ``--max-slope`` MiB per minute (1.0).

    .venv/bin/python -m benchmarks.soak                              # 2,000 clients, 10 minutes
    .venv/bin/python -m benchmarks.soak --duration 120 --clients 1000  # a shorter run
    .venv/bin/pytest -m soak                                         # the same as a test, short
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from benchmarks.fdlimit import raise_nofile
from benchmarks.server import free_port, wait_accepting

NAMESPACE = "soak"
MiB = 1 << 20


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class SoakParams:
    duration: float = 600.0
    clients: int = 2000
    channels: int = 50
    rate: float = 100.0
    churn: float = 10.0
    #: Publications kept per channel: the recovery window. At the defaults (2 publications per
    #: second per channel) it holds 100 s, and it is full, so memory stops growing, after 100 s
    #: (the warm-up is 150 s).
    history: int = 200
    warmup: float | None = None
    max_slope: float = 1.0

    @property
    def warmup_seconds(self) -> float:
        """``warmup``, or by default 20% of the run, and at least until history has had 1.5
        times what it takes to fill (it grows until then, by design)."""
        if self.warmup is not None:
            return self.warmup
        fill = self.history * self.channels / self.rate
        return max(self.duration * 0.2, fill * 1.5)


@dataclass
class SoakClient:
    """One client: what it saw, and its current connection."""

    channel: str
    ws: ClientConnection | None = None
    epoch: str | None = None
    last: int | None = None  # the last offset seen; None before the first subscription
    received: int = 0
    recovered: int = 0
    connections: int = 0
    missed: int = 0
    duplicates: int = 0
    stopping: bool = False

    def take(self, offset: int, epoch: str) -> None:
        if self.epoch is not None and epoch != self.epoch:
            self.missed += 1  # a new stream: whatever the old one had after `last` is lost
            self.last = offset - 1
        self.epoch = epoch
        if self.last is not None:
            if offset <= self.last:
                self.duplicates += 1
                return
            if offset > self.last + 1:
                self.missed += offset - self.last - 1
        self.last = offset
        self.received += 1


@dataclass
class Figures:
    samples: list[tuple[float, int]] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)
    resets: int = 0
    publisher_reconnections: int = 0


_decoder = msgspec.json.Decoder()


def _messages(frame: str | bytes) -> list[dict[str, object]]:
    value = _decoder.decode(frame)
    return value if isinstance(value, list) else [value]


async def run_client(client: SoakClient, url: str) -> None:
    """Connect, subscribe (with ``since`` after the first time), read; again after every drop."""
    request = 0
    while not client.stopping:
        try:
            async with connect(
                url,
                subprotocols=[Subprotocol("broker.v1.json")],
                compression=None,
                open_timeout=30,
                ping_interval=None,
                max_size=None,
            ) as ws:
                client.ws = ws
                client.connections += 1
                request += 1
                subscribe: dict[str, object] = {
                    "type": "subscribe",
                    "id": request,
                    "channel": client.channel,
                }
                if client.last is not None and client.epoch is not None:
                    subscribe["since"] = {"offset": client.last, "epoch": client.epoch}
                await ws.send(msgspec.json.encode(subscribe).decode())
                beat = asyncio.create_task(heartbeat(ws))
                try:
                    await read(client, ws)
                finally:
                    beat.cancel()
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            pass
        finally:
            client.ws = None
        if not client.stopping:
            await asyncio.sleep(random.uniform(0.0, 0.2))


async def heartbeat(ws: ClientConnection) -> None:
    """A ``ping`` every 15 s, as a well-behaved client does (the broker's heartbeat is 25 s)."""
    n = 0
    with contextlib.suppress(ConnectionClosed, OSError):
        while True:
            await asyncio.sleep(15.0)
            n += 1
            await ws.send(msgspec.json.encode({"type": "ping", "id": 10**9 + n}).decode())


async def read(client: SoakClient, ws: ClientConnection) -> None:
    """Take every message of the connection into ``client``'s figures."""
    async for frame in ws:
        for message in _messages(frame):
            kind = message.get("type")
            if kind == "message":
                client.take(int(message["offset"]), str(message["epoch"]))  # type: ignore[call-overload]
            elif kind == "subscribed":
                recovered = message.get("publications") or []
                assert isinstance(recovered, list)
                if message.get("recovered"):
                    client.recovered += 1
                for publication in recovered:
                    client.take(int(publication["offset"]), str(publication["epoch"]))
                if client.last is None:
                    client.epoch = str(message["epoch"])
                    client.last = int(message["offset"])  # type: ignore[call-overload]


def reset(ws: ClientConnection) -> None:
    """Drop the connection abruptly: SO_LINGER 0 and abort, an RST without a close handshake."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def publisher(url: str, params: SoakParams, figures: Figures, stop: asyncio.Event) -> None:
    """Publish round-robin over the channels at ``rate``; the replies give the last offsets. A
    publisher the broker drops (on a starved machine it can be too slow to read its replies)
    reconnects and goes on."""
    channels = [f"{NAMESPACE}:c{i}" for i in range(params.channels)]
    interval = 1.0 / params.rate
    next_at = time.monotonic()
    n = 0
    while not stop.is_set():
        try:
            async with connect(
                url, subprotocols=[Subprotocol("broker.v1.json")], compression=None, max_size=None
            ) as ws:
                await ws.recv()  # welcome
                reader = asyncio.create_task(_published(ws, figures))
                try:
                    while not stop.is_set():
                        n += 1
                        channel = channels[n % len(channels)]
                        body = {"type": "publish", "id": n, "channel": channel, "data": {"n": n}}
                        await ws.send(msgspec.json.encode(body).decode())
                        next_at += interval
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                    # Give the last replies time to come: the last offsets must be known.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), 5.0)
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await reader
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            figures.publisher_reconnections += 1
            await asyncio.sleep(0.1)


async def _published(ws: ClientConnection, figures: Figures) -> None:
    async for frame in ws:
        for message in _messages(frame):
            if message.get("type") == "published":
                channel = str(message["channel"])
                offset = int(message["offset"])  # type: ignore[call-overload]
                figures.published[channel] = max(figures.published.get(channel, 0), offset)


async def churner(
    clients: list[SoakClient], params: SoakParams, figures: Figures, stop: asyncio.Event
) -> None:
    if params.churn <= 0:
        return
    while not stop.is_set():
        await asyncio.sleep(1.0 / params.churn)
        client = random.choice(clients)
        if client.ws is not None:
            reset(client.ws)
            figures.resets += 1


async def sampler(process: psutil.Process, figures: Figures, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        figures.samples.append((time.monotonic() - started, process.memory_info().rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


def slope_mib_per_minute(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 3:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [rss / MiB for _, rss in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 60


async def gauges(http: httpx.AsyncClient) -> dict[str, float]:
    text = (await http.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("broker_") and " " in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def soak(params: SoakParams) -> bool:
    """Run the soak against a fresh ``broker serve``; True when every check passed."""
    raise_nofile()
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            f"BROKER_NAMESPACES__{NAMESPACE.upper()}__HISTORY_SIZE": str(params.history),
            "BROKER_LIMITS__MAX_CONNECTIONS": str(params.clients * 2 + 100),
            "BROKER_LOG__LEVEL": "warning",
            "BROKER_LOG__FORMAT": "json",
        }
    )
    broker = str(Path(sys.executable).parent / "broker")
    log_path = Path(os.environ.get("SOAK_LOG", "/tmp/broker-soak.log"))
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [broker, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_accepting(port, 30, server)
        ok = asyncio.run(_soak(params, port, psutil.Process(server.pid)))
        tracebacks = log_path.read_text(errors="replace").count("Traceback")
        say(f"  tracebacks in the broker's log: {tracebacks}")
        ok = ok and tracebacks == 0
        say(f"soak: {'PASS' if ok else 'FAIL'}")
        return ok
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


async def _soak(params: SoakParams, port: int, process: psutil.Process) -> bool:
    url = f"ws://127.0.0.1:{port}/v1/ws"
    figures = Figures()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        baseline = await gauges(http)
        sockets_before = len(process.net_connections())
        clients = [SoakClient(f"{NAMESPACE}:c{i % params.channels}") for i in range(params.clients)]
        stop = asyncio.Event()
        started = time.monotonic()
        sampling = asyncio.create_task(sampler(process, figures, stop))
        tasks = [asyncio.create_task(run_client(c, url)) for c in clients]
        # Everyone subscribed before the first publication: nothing is "before their time".
        async with asyncio.timeout(120):
            while any(c.last is None for c in clients):  # noqa: ASYNC110 - polled figures
                await asyncio.sleep(0.1)
        connected_at = time.monotonic() - started
        say(f"soak: {params.clients} clients on {params.channels} channels in {connected_at:.1f} s")
        publishing = asyncio.create_task(publisher(url, params, figures, stop))
        churning = asyncio.create_task(churner(clients, params, figures, stop))
        next_report = 60.0
        while (elapsed := time.monotonic() - started) < params.duration:
            await asyncio.sleep(1.0)
            if elapsed >= next_report:
                next_report += 60.0
                say(
                    f"  {elapsed:6.0f} s  RSS {figures.samples[-1][1] / MiB:6.1f} MiB  "
                    f"published {sum(figures.published.values())}  resets {figures.resets}"
                )
        stop.set()
        await churning
        await publishing
        # Everyone catches up to the last offset of its channel.
        caught_up = True
        try:
            async with asyncio.timeout(60):
                while any(  # noqa: ASYNC110 - polled figures
                    (c.last or 0) < figures.published.get(c.channel, 0) for c in clients
                ):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            caught_up = False
        for client in clients:
            client.stopping = True
            if client.ws is not None:
                await client.ws.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sampling
        # The server lets go of everything.
        end: dict[str, float] = {}
        async with asyncio.timeout(30):
            while True:
                end = await gauges(http)
                if end.get("broker_connections") == 0 and end.get("broker_subscriptions") == 0:
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        end = await gauges(http)
        sockets_after = len(process.net_connections())

    warm = [s for s in figures.samples if s[0] >= params.warmup_seconds]
    slope = slope_mib_per_minute(warm)
    missed = sum(c.missed for c in clients)
    duplicates = sum(c.duplicates for c in clients)
    published = sum(figures.published.values())
    delivered = sum(c.received for c in clients)
    reconnections = sum(c.connections for c in clients) - len(clients)
    recovered = sum(c.recovered for c in clients)
    rss = [r for _, r in figures.samples]
    tasks_before, tasks_after = baseline.get("broker_tasks", 0), end.get("broker_tasks", 0)
    say(f"  duration {params.duration:.0f} s, publications {published} at {params.rate:g}/s")
    say(f"  deliveries {delivered}, socket resets {figures.resets}, reconnections {reconnections}")
    say(f"  publisher reconnections {figures.publisher_reconnections}")
    say(f"  subscriptions recovered with since: {recovered}")
    say(f"  missed {missed}, duplicates {duplicates}, caught up: {caught_up}")
    say(
        f"  server RSS: start {rss[0] / MiB:.1f} MiB, peak {max(rss) / MiB:.1f} MiB, "
        f"end {rss[-1] / MiB:.1f} MiB; slope after warm-up ({params.warmup_seconds:.0f} s) "
        f"{slope:+.2f} MiB/min (limit {params.max_slope:g})"
    )
    say(
        f"  at the end: connections {end.get('broker_connections'):.0f}, "
        f"subscriptions {end.get('broker_subscriptions'):.0f}, "
        f"tasks {tasks_after:.0f} (before {tasks_before:.0f}), "
        f"server sockets {sockets_after} (before {sockets_before})"
    )
    return (
        missed == 0
        and duplicates == 0
        and caught_up
        and end.get("broker_connections") == 0
        and end.get("broker_subscriptions") == 0
        and tasks_after <= tasks_before
        and sockets_after <= sockets_before
        and slope < params.max_slope
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakParams()
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="publications/s")
    parser.add_argument("--churn", type=float, default=defaults.churn, help="resets/s")
    parser.add_argument("--history", type=int, default=defaults.history)
    parser.add_argument("--warmup", type=float, default=None, help="seconds (20%% of the run)")
    parser.add_argument("--max-slope", type=float, default=defaults.max_slope, help="MiB/min")
    args = parser.parse_args(argv)
    params = SoakParams(
        duration=args.duration,
        clients=args.clients,
        channels=args.channels,
        rate=args.rate,
        churn=args.churn,
        history=args.history,
        warmup=args.warmup,
        max_slope=args.max_slope,
    )
    return 0 if soak(params) else 1


if __name__ == "__main__":
    sys.exit(main())
