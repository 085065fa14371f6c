"""Instructions per delivery with the delivery-latency histogram on and off, counted by callgrind.

CPU time per delivery on a shared machine moves by more than the histogram costs (see
``benchmarks.histogram_cost``); the instructions the server executes do not. Two ``broker serve``
run under ``valgrind --tool=callgrind`` with collection off, from this checkout, one with
``monitor.delivery_latency`` on and one with it off. Each gets ``--subscribers`` ``/v1/ws``
subscribers of one channel and a publisher connection. After a warm-up, collection is switched
on and ``--publications`` are published, one at a time and alternating between the servers,
each waited for until every subscriber has it: every write then carries one publication, on both
servers alike, whatever valgrind's slowness. The counts are dumped, then again after 10 s of
idling, whose rate is subtracted. The kernel's work (the sends) is not in these counts, so the
share printed is of the instructions the broker executes, an upper bound of its share of CPU.

    .venv/bin/python -m benchmarks.histogram_instructions              # about 3 minutes
    .venv/bin/python -m benchmarks.histogram_instructions --publications 50 --subscribers 20
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks.callgrind_server import CallgrindServer, collected, wait_listening
from benchmarks.connrate_instructions import IDLE_SECONDS
from protocol import CODECS, Encoding, Publication, Publish, Subscribe, Subscribed

CODEC = CODECS[Encoding.JSON]
WARM_UP = 20
CHANNEL = "bench"


class _Server(CallgrindServer):
    def __init__(self, out_dir: Path, name: str, histogram: bool) -> None:
        super().__init__(
            out_dir,
            name,
            {
                "BROKER_LOG__LEVEL": "warning",
                "BROKER_MONITOR__DELIVERY_LATENCY": "true" if histogram else "false",
            },
        )
        self.subscribers: list[ClientConnection] = []
        self.publisher: ClientConnection | None = None

    async def open(self, subscribers: int) -> None:
        url = f"ws://127.0.0.1:{self.port}/v1/ws"
        protocols = [Subprotocol(Encoding.JSON.subprotocol)]
        for _ in range(subscribers):
            ws = await connect(url, subprotocols=protocols, open_timeout=120, compression=None)
            await ws.recv()  # welcome
            await ws.send(CODEC.encode_client(Subscribe(id=1, channel=CHANNEL)).decode())
            while not any(isinstance(m, Subscribed) for m in await _messages(ws)):
                pass
            self.subscribers.append(ws)
        self.publisher = await connect(
            url, subprotocols=protocols, open_timeout=120, compression=None
        )
        await self.publisher.recv()

    async def publish_one(self, n: int) -> None:
        """Publish one and wait until every subscriber has it (and the publisher its reply)."""
        assert self.publisher is not None
        data = msgspec.Raw(msgspec.json.encode({"n": n, "pad": "x" * 150}))
        await self.publisher.send(
            CODEC.encode_client(Publish(channel=CHANNEL, data=data, id=n + 1)).decode()
        )
        await self.publisher.recv()
        for ws in self.subscribers:
            while not any(isinstance(m, Publication) for m in await _messages(ws)):
                pass

    async def close(self) -> None:
        for ws in [*self.subscribers, *([self.publisher] if self.publisher else [])]:
            await ws.close()


async def _messages(ws: ClientConnection) -> list[object]:
    frame = await asyncio.wait_for(ws.recv(), 120)
    return list(CODEC.decode_server(frame.encode() if isinstance(frame, str) else frame))


async def measure(subscribers: int, publications: int, *, same: bool = False) -> list[str]:
    out_dir = Path(tempfile.mkdtemp(prefix="histogram-instructions-"))
    servers = [_Server(out_dir, "on", True), _Server(out_dir, "off", same)]
    try:
        for server in servers:
            await asyncio.to_thread(wait_listening, server.port, 300)
            await server.open(subscribers)
        for n in range(WARM_UP):
            for server in servers:
                await server.publish_one(n)
        for server in servers:
            server.control("-i", "on")
        began = time.monotonic()
        for n in range(publications):
            for server in servers:
                await server.publish_one(WARM_UP + n)
        busy = time.monotonic() - began
        for server in servers:
            server.control("--dump=deliveries")
        await asyncio.sleep(IDLE_SECONDS)
        for server in servers:
            server.control("--dump=idle")
        deliveries = subscribers * publications
        per: dict[str, float] = {}
        for server in servers:
            *_, during, idle = server.dumps()
            total, idle_rate = collected(during), collected(idle) / IDLE_SECONDS
            per[server.name] = (total - idle_rate * busy) / deliveries
        for server in servers:
            await server.close()
        cost = per["on"] - per["off"]
        return [
            f"{subscribers} subscribers x {publications} publications = {deliveries} deliveries"
            f" per server, one publication per write ({busy:.0f} s under callgrind)",
            f"histogram on:  {per['on']:,.0f} instructions per delivery (less the idle loop)",
            f"histogram off: {per['off']:,.0f} instructions per delivery",
            f"cost: {cost:,.0f} instructions per delivery, {cost / per['off']:+.2%} of off",
        ]
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.histogram_instructions",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--publications", type=int, default=200)
    parser.add_argument(
        "--same",
        action="store_true",
        help="both servers with the histogram on (an A/A run: the harness's own difference)",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (callgrind) is not installed")
    for line in asyncio.run(measure(args.subscribers, args.publications, same=args.same)):
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
