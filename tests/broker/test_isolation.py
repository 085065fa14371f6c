"""Stalled clients hold nobody back: the promise of the design, over real sockets."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from broker.settings import QueueSettings, Settings
from protocol import JSON, Publication, Publish, Published, Subscribe, Subscribed
from tests.conftest import serve_broker, wait_until
from tests.rawclient import RawClient, masked_frame, open_raw, server_holds
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

#: 2,000 publications of 4 KB: 8 MB per stalled client, well past what the kernel absorbs (~3 MB).
COUNT, PAD = 2000, "x" * 4000


async def read_all(client: ProtocolClient, latencies: list[float]) -> list[int]:
    offsets: list[int] = []
    while len(offsets) < COUNT:
        message = await client.expect(Publication)
        offsets.append(message.offset)
        latencies.append(time.monotonic() - client.data(message.data)["t"])
    return offsets


@pytest.mark.parametrize("stalled_count", [1, 5])
async def test_healthy_subscribers_get_every_message_in_order_and_promptly_beside_stalled_ones(
    stalled_count: int,
) -> None:
    settings = Settings(queue=QueueSettings(max_messages=200, max_bytes=512 * 1024))
    async with serve_broker(settings) as running:
        stalled: list[RawClient] = []
        try:
            for _ in range(stalled_count):
                raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
                await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel="busy"))))
                stalled.append(raw)
            async with (
                open_client(running.url(), max_queue=None) as a,
                open_client(running.url(), max_queue=None) as b,
                open_client(running.url(), max_queue=None) as c,
                open_client(running.url()) as publisher,
            ):
                healthy = [a, b, c]
                for client in healthy:
                    await client.send(Subscribe(id=1, channel="busy"))
                    await client.expect(Subscribed)
                hub = running.broker.hub
                await wait_until(lambda: hub.subscriber_count("busy") == 3 + stalled_count)
                latencies: list[float] = []
                async with asyncio.TaskGroup() as tasks:
                    readers = [tasks.create_task(read_all(c, latencies)) for c in healthy]
                    for i in range(COUNT):
                        value = {"i": i, "t": time.monotonic(), "pad": PAD}
                        data = msgspec.Raw(JSON.encode_payload(value))
                        await publisher.send(Publish(id=i, channel="busy", data=data))
                        await publisher.expect(Published)
                for reader in readers:
                    assert reader.result() == list(range(1, COUNT + 1))
                # "Promptly": no healthy client ever waited on a stalled one. Generous bound for
                # a busy 2-core machine; a stall behind a full client would be seconds.
                assert max(latencies) < 1.0, f"max latency {max(latencies):.3f} s"
                # Every stalled client was dropped, and its socket released.
                await wait_until(lambda: hub.subscriber_count("busy") == 3)
                ports = [raw.local_port for raw in stalled]
                await wait_until(lambda: not any(server_holds(running.port, p) for p in ports))
                assert running.broker.totals.slow_consumers == stalled_count
        finally:
            for raw in stalled:
                raw.reset()
