"""Instructions per delivery at many channels, and per recipient of a broadcast, counted by
callgrind, for A/B runs of the delivery path.

CPU time per delivery on a shared machine moves by more than the changes it is meant to judge;
the instructions the server executes do not. Each tree given (a directory holding a revision's
``broker`` and ``protocol`` packages, ``.`` for this checkout) gets its own ``broker serve``
under ``valgrind --tool=callgrind`` with collection off, and ``--channels`` x ``--per-channel``
``/v1/ws`` subscribers (JSON), each also subscribed to one channel all share. Two loads, counted
apart, the trees served alternately so that they see the same pace:

* **channels** (as ``benchmarks.moderate``'s 1,000 x 10 at 2,000/s): ``--publications``
  publications round-robin over the channels, one at a time, each waited for until its
  subscribers have it: every write carries one publication, as when a subscriber gets a
  couple per second. The clients ping as there (one ``ping`` per 35 deliveries, each answered).
* **fan-out** (as the 19,000-connection broadcast): ``--broadcasts`` publications on the shared
  channel, each waited for until every subscriber has it.

The counts are dumped after each load, then again after 10 s of idling, whose rate is
subtracted. The kernel's work (the sends and reads) is not in these counts: they are the
user-space part of the CPU per delivery (with the system calls' entry, not their work).

    git archive main broker protocol | tar -x -C /tmp/base
    .venv/bin/python -m benchmarks.delivery_instructions /tmp/base .     # about 5 minutes
    .venv/bin/python -m benchmarks.delivery_instructions --channels 50 --publications 200 .
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

from benchmarks import fastws
from benchmarks.callgrind_server import CallgrindServer, collected, wait_listening
from benchmarks.connrate_instructions import IDLE_SECONDS
from benchmarks.fdlimit import raise_nofile
from protocol import CODECS, Encoding, Ping, Pong, Publication, Publish, Subscribe, Subscribed

CODEC = CODECS[Encoding.JSON]
SHARED = "all"
#: One client ``ping`` per this many deliveries: 10,000 clients pinging once per 0.7 x 25 s
#: against 20,000 deliveries/s in ``benchmarks.moderate``.
PING_EVERY = 35
TIMEOUT = 300.0


class _Server(CallgrindServer):
    """One tree's server and its clients."""

    def __init__(self, out_dir: Path, name: str, tree: Path) -> None:
        super().__init__(
            out_dir,
            name,
            {
                "BROKER_LOG__LEVEL": "warning",
                "PYTHONPATH": str(tree),
                # Valgrind makes everything ~50x slower: no client must time out meanwhile.
                "BROKER_WEBSOCKET__HEARTBEAT": "3600",
                "BROKER_LIMITS__MAX_CONNECTIONS": "0",
            },
        )
        self.tree = tree
        self.clients: list[fastws.FastWebSocket] = []
        self.publisher: fastws.FastWebSocket | None = None
        self._outstanding = 0
        self._done: asyncio.Future[None] | None = None

    def _expect(self, count: int) -> asyncio.Future[None]:
        self._outstanding = count
        self._done = asyncio.get_running_loop().create_future()
        return self._done

    def _on_message(self, data: bytes, binary: bool) -> None:
        for message in CODEC.decode_server(data):
            if isinstance(message, Publication | Pong | Subscribed):
                self._outstanding -= 1
        if self._outstanding <= 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _connect(self) -> fastws.FastWebSocket:
        welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def first(data: bytes, binary: bool) -> None:
            if not welcomed.done():
                welcomed.set_result(None)
            else:
                self._on_message(data, binary)

        client = await fastws.connect(
            "127.0.0.1", self.port, "/v1/ws", first, subprotocol=None, open_timeout=TIMEOUT
        )
        await asyncio.wait_for(welcomed, TIMEOUT)
        return client

    async def open(self, channels: int, per_channel: int) -> None:
        for n in range(channels * per_channel):
            client = await self._connect()
            done = self._expect(2)
            for request, channel in ((1, f"c{n % channels}"), (2, SHARED)):
                client.send_text(
                    CODEC.encode_client(Subscribe(id=request, channel=channel)).decode()
                )
            await asyncio.wait_for(done, TIMEOUT)
            self.clients.append(client)
        self.publisher = await self._connect()

    async def publish(self, channel: str, n: int, recipients: int, pings: int = 0) -> None:
        """Publish one on ``channel``; wait until its ``recipients`` have it (and ``pings``
        clients, from ``n`` on, their pongs)."""
        assert self.publisher is not None
        done = self._expect(recipients + pings)
        data = msgspec.Raw(msgspec.json.encode({"n": n, "pad": "x" * 150}))
        self.publisher.send_text(CODEC.encode_client(Publish(channel=channel, data=data)).decode())
        for i in range(pings):
            client = self.clients[(n * 7 + i) % len(self.clients)]
            client.send_text(CODEC.encode_client(Ping(id=n)).decode())
        await asyncio.wait_for(done, TIMEOUT)

    async def close(self) -> None:
        for client in [*self.clients, *([self.publisher] if self.publisher else [])]:
            client.abort()


async def measure(
    trees: Sequence[Path],
    channels: int,
    per_channel: int,
    publications: int,
    broadcasts: int,
    keep: Path | None = None,
) -> list[str]:
    out_dir = keep or Path(tempfile.mkdtemp(prefix="delivery-instructions-"))
    servers = [_Server(out_dir, str(i), tree) for i, tree in enumerate(trees)]
    subscribers = channels * per_channel
    try:
        for server in servers:
            await asyncio.to_thread(wait_listening, server.port, 300)
            await server.open(channels, per_channel)
        # Warm-up: every channel once, and a broadcast.
        for n in range(channels):
            for server in servers:
                await server.publish(f"c{n}", n, per_channel)
        for server in servers:
            await server.publish(SHARED, 0, subscribers)
            server.control("-i", "on")
        # Channels: round-robin, one at a time; a ping for every PING_EVERY deliveries.
        began = time.monotonic()
        owed = 0.0
        for n in range(publications):
            owed += per_channel / PING_EVERY
            pings = int(owed)
            owed -= pings
            for server in servers:
                await server.publish(f"c{n % channels}", n, per_channel, pings)
        busy = {"channels": time.monotonic() - began}
        for server in servers:
            server.control("--dump=channels")
        began = time.monotonic()
        for n in range(broadcasts):
            for server in servers:
                await server.publish(SHARED, n, subscribers)
        busy["fanout"] = time.monotonic() - began
        for server in servers:
            server.control("--dump=fanout")
        await asyncio.sleep(IDLE_SECONDS)
        for server in servers:
            server.control("--dump=idle")
        deliveries = {"channels": publications * per_channel, "fanout": broadcasts * subscribers}
        lines = [
            f"channels: {channels} x {per_channel} subscribers, {publications} publications"
            f" round-robin = {deliveries['channels']} deliveries, one per write, a ping per"
            f" {PING_EVERY}; fan-out: {broadcasts} broadcasts x {subscribers} subscribers"
        ]
        for server in servers:
            *_, channels_dump, fanout_dump, idle_dump = server.dumps()
            idle_rate = collected(idle_dump) / IDLE_SECONDS
            per = {
                load: (collected(dump) - idle_rate * busy[load]) / deliveries[load]
                for load, dump in (("channels", channels_dump), ("fanout", fanout_dump))
            }
            lines.append(
                f"{server.tree}: channels {per['channels']:,.0f} instructions per delivery;"
                f" fan-out {per['fanout']:,.0f} per recipient (less the idle loop's"
                f" {idle_rate / 1e6:.2f} M/s)"
            )
        for server in servers:
            await server.close()
        return lines
    finally:
        for server in servers:
            server.stop()
        if keep is None:
            shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.delivery_instructions",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("trees", nargs="+", type=Path, help="revisions' trees (. for this one)")
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--publications", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument(
        "--keep", type=Path, help="a directory to keep the callgrind dumps in (callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (callgrind) is not installed")
    raise_nofile()
    trees = [tree.resolve() for tree in args.trees]
    lines = asyncio.run(
        measure(
            trees,
            args.channels,
            args.per_channel,
            args.publications,
            args.broadcasts,
            args.keep.resolve() if args.keep else None,
        )
    )
    for line in lines:
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
