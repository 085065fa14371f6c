"""What a Centrifugo subscriber costs the broker, beside a ``/v1/ws`` JSON subscriber.

For each protocol a fresh ``broker serve`` gets N subscribers on one channel (over that
protocol), and one ``/v1/ws`` publisher sends M publications in bursts, with at most a few
bursts not yet received by every subscriber. The run prints the broker's CPU time per delivery
during the publishing (from ``psutil``), and the wall time.

    .venv/bin/python -m benchmarks.centrifugo_fanout                       # 100 x 2,000
    .venv/bin/python -m benchmarks.centrifugo_fanout --subscribers 50 --publications 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect

from benchmarks.server import ServerProcess
from benchmarks.targets import broker_command

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHANNEL = "bench"
PROTOCOLS = {
    "v1": ("/v1/ws", b'"type":"message"'),
    "centrifugo": ("/connection/websocket", b'"pub":'),
}


async def subscriber(
    url: str, protocol: str, total: int, ready: asyncio.Event, counts: list[int], index: int
) -> None:
    """Subscribe, then count publications (in ``counts[index]``) until ``total`` arrived."""
    async with connect(url, max_size=None, compression=None) as websocket:
        if protocol == "v1":
            await websocket.recv()  # welcome
            await websocket.send(
                msgspec.json.encode({"type": "subscribe", "id": 1, "channel": CHANNEL}).decode()
            )
        else:
            connect_command = {"id": 1, "connect": {"name": "bench"}}
            subscribe_command = {"id": 2, "subscribe": {"channel": CHANNEL}}
            lines = [msgspec.json.encode(connect_command), msgspec.json.encode(subscribe_command)]
            await websocket.send(b"\n".join(lines).decode())
        await _until_subscribed(websocket, protocol)
        ready.set()
        marker = PROTOCOLS[protocol][1]
        seen = 0
        while seen < total:
            frame = await websocket.recv()
            data = frame.encode() if isinstance(frame, str) else frame
            if protocol == "centrifugo" and data == b"{}":
                await websocket.send("{}")
                continue
            seen += data.count(marker)
            counts[index] = seen


async def _until_subscribed(websocket: ClientConnection, protocol: str) -> None:
    needle = b'"subscribed"' if protocol == "v1" else b'"subscribe":'
    while True:
        frame = await websocket.recv()
        data = frame.encode() if isinstance(frame, str) else frame
        if needle in data:
            return


async def measure(
    protocol: str, subscribers: int, publications: int, size: int, burst: int
) -> tuple[float, float]:
    """(broker CPU µs per delivery, wall seconds) for one protocol."""
    with ServerProcess(broker_command(), log_path=RESULTS_DIR / f"cf-{protocol}.log") as server:
        path = PROTOCOLS[protocol][0]
        url = f"ws://127.0.0.1:{server.port}{path}"
        readies = [asyncio.Event() for _ in range(subscribers)]
        counts = [0] * subscribers
        tasks = [
            asyncio.create_task(subscriber(url, protocol, publications, ready, counts, index))
            for index, ready in enumerate(readies)
        ]
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 30)
        process = psutil.Process(server.pid)
        payload = msgspec.json.encode({"pad": "x" * size}).decode()
        async with connect(f"ws://127.0.0.1:{server.port}/v1/ws", compression=None) as publisher:
            await publisher.recv()  # welcome
            cpu = process.cpu_times()
            began = time.perf_counter()
            sent = 0
            while sent < publications:
                count = min(burst, publications - sent)
                frames = [
                    f'{{"type":"publish","channel":"{CHANNEL}","data":{payload}}}'
                    for _ in range(count)
                ]
                for frame in frames:
                    await publisher.send(frame)
                sent += count
                # At most a few bursts in flight, so that no outbox fills (this measures cost,
                # not the slow-consumer policy).
                while min(counts) < sent - 4 * burst:  # noqa: ASYNC110 - counters, no event
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            wall = time.perf_counter() - began
            after = process.cpu_times()
        used = (after.user + after.system) - (cpu.user + cpu.system)
        return used / (subscribers * publications) * 1e6, wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--publications", type=int, default=2000)
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--burst", type=int, default=20, help="publications sent together")
    args = parser.parse_args(argv)
    for protocol in PROTOCOLS:
        per_delivery, wall = asyncio.run(
            measure(protocol, args.subscribers, args.publications, args.message_bytes, args.burst)
        )
        sys.stdout.write(
            f"{protocol:>10}: {args.subscribers} subscribers x {args.publications} publications"
            f" of {args.message_bytes} B: {per_delivery:.1f} µs broker CPU per delivery,"
            f" {wall:.2f} s\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
