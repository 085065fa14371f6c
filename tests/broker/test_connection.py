"""Connections: slow consumers are dropped by policy, and nothing outlives a connection."""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest
import structlog
from websockets.asyncio.client import connect

from broker.settings import OverflowPolicy, QueueSettings, Settings, WebSocketSettings
from protocol import (
    JSON,
    Disconnect,
    Gap,
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.rawclient import close_frame, masked_frame, open_raw, read_frames, server_holds
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

PAYLOAD = "x" * 2000


async def publish_many(
    pub: ProtocolClient, channel: str, count: int, readers: list[ProtocolClient]
) -> None:
    """Publish ``count`` 2 KB messages, reading every healthy subscriber along the way, so that
    none of them becomes a slow consumer itself (docs/stack-findings.md: keep the publisher from
    running ahead)."""
    for i in range(count):
        data = msgspec.Raw(JSON.encode_payload({"i": i, "pad": PAYLOAD}))
        await pub.send(Publish(id=i, channel=channel, data=data))
        await pub.expect(Published)
        for reader in readers:
            message = await reader.expect(Publication)
            assert reader.data(message.data)["i"] == i


async def subscribe_raw(running: RunningBroker, channel: str, rcvbuf: int = 4096):  # type: ignore[no-untyped-def]
    raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=rcvbuf)
    await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel=channel))))
    return raw


async def test_a_stalled_subscriber_is_dropped_with_4008_and_its_socket_is_freed() -> None:
    settings = Settings(queue=QueueSettings(max_messages=100, max_bytes=256 * 1024))
    async with serve_broker(settings) as running:
        stalled = await subscribe_raw(running, "busy")
        try:
            async with open_client(running.url()) as healthy, open_client(running.url()) as pub:
                await healthy.send(Subscribe(id=1, channel="busy"))
                await healthy.expect(Subscribed)
                await wait_until(lambda: running.broker.hub.subscriber_count("busy") == 2)
                with structlog.testing.capture_logs() as logs:
                    # 8 MB: more than the kernel buffers (~4 MB) plus the outbox can hold.
                    await publish_many(pub, "busy", 4000, [healthy])
                    await wait_until(lambda: len(running.broker.connections) == 2)
                assert running.broker.hub.subscriber_count("busy") == 1
                slow = [e for e in logs if e["event"] == "connection.slow_consumer"]
                assert [e["cause"] for e in slow] == ["outbox_full"]
                closed = [e for e in logs if e["event"] == "connection.closed"]
                assert closed[0]["code"] == 4008
                # The socket was reset, not left lingering with megabytes queued.
                await wait_until(lambda: not server_holds(running.port, stalled.local_port))
        finally:
            stalled.reset()


async def test_a_write_stuck_past_write_timeout_drops_the_client_even_with_room_in_its_outbox() -> (
    None
):
    settings = Settings(
        queue=QueueSettings(max_messages=100_000, max_bytes=64 * 1024 * 1024),
        websocket=WebSocketSettings(write_timeout=0.5),
    )
    async with serve_broker(settings) as running:
        stalled = await subscribe_raw(running, "busy")
        try:
            async with open_client(running.url()) as pub:
                await wait_until(lambda: running.broker.hub.subscriber_count("busy") == 1)
                with structlog.testing.capture_logs() as logs:
                    await publish_many(pub, "busy", 4000, [])
                    await wait_until(lambda: len(running.broker.connections) == 1)
                slow = [e for e in logs if e["event"] == "connection.slow_consumer"]
                assert [e["cause"] for e in slow] == ["write_timeout"]
                assert slow[0]["queued_messages"] < 4000
                await wait_until(lambda: not server_holds(running.port, stalled.local_port))
        finally:
            stalled.reset()


async def test_drop_oldest_tells_the_client_which_offsets_it_skipped() -> None:
    settings = Settings(
        queue=QueueSettings(
            max_messages=20, max_bytes=1024 * 1024, overflow=OverflowPolicy.DROP_OLDEST
        ),
    )
    async with serve_broker(settings) as running:
        slow = await subscribe_raw(running, "busy")
        async with open_client(running.url()) as pub:
            await wait_until(lambda: running.broker.hub.subscriber_count("busy") == 1)
            total = 4000
            await publish_many(pub, "busy", total, [])
            frames = await read_frames(slow)
        slow.reset()
    seen: list[int] = []
    for opcode, payload in frames:
        assert opcode == 0x1
        for message in JSON.decode_server(payload):
            match message:
                case Publication(offset=offset):
                    seen.append(offset)
                case Gap(from_offset=first, to_offset=last):
                    seen.extend(range(first, last + 1))
    # Every offset is accounted for exactly once, in order: delivered, or named in a gap.
    assert seen == list(range(1, total + 1))
    gaps = [m for _, p in frames for m in JSON.decode_server(p) if isinstance(m, Gap)]
    assert gaps, "the client was slow enough to skip publications"


async def test_a_client_that_sends_close_and_keeps_the_socket_open_is_let_go(
    running: RunningBroker,
) -> None:
    raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
    try:
        await wait_until(lambda: len(running.broker.connections) == 1)
        await raw.send(close_frame(1000))
        await wait_until(lambda: len(running.broker.connections) == 0)
        await wait_until(lambda: not server_holds(running.port, raw.local_port))
    finally:
        raw.reset()


async def test_a_thousand_connections_come_and_go_during_a_broadcast_and_leave_nothing_behind(
    running: RunningBroker,
) -> None:
    broker = running.broker
    tasks_before = len(asyncio.all_tasks())
    stop = anyio.Event()

    async def broadcast() -> None:
        async with open_client(running.url()) as pub:
            i = 0
            while not stop.is_set():
                i += 1
                await pub.send(Publish(id=i, channel="room", data=msgspec.Raw(b'"tick"')))
                await pub.expect(Published)

    async def clean_client() -> None:
        async with connect(running.url(), compression=None, open_timeout=TIMEOUT) as ws:
            await ws.send(JSON.encode_client(Subscribe(id=1, channel="room")).decode())
            await ws.recv()  # welcome

    async def abrupt_client() -> None:
        raw = await subscribe_raw(running, "room")
        raw.reset()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broadcast)
        for _ in range(10):
            async with anyio.create_task_group() as wave:
                for _ in range(50):
                    wave.start_soon(clean_client)
                    wave.start_soon(abrupt_client)
        stop.set()

    await wait_until(lambda: not broker.connections)
    await wait_until(lambda: broker.hub.statistics().subscriptions == 0)
    statistics = broker.hub.statistics()
    assert statistics.channels == 0
    assert broker.totals.connections_opened == 1001
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before)


async def test_a_server_initiated_close_sends_disconnect_first() -> None:
    settings = Settings(websocket=WebSocketSettings(heartbeat=0.3, heartbeat_grace=0.2))
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        notice = await client.expect(Disconnect)
        # A client gone silent may be on a bad network: it should come back and recover.
        assert (notice.code, notice.reconnect) == (4009, True)
        with pytest.raises(Exception) as closed:
            await client.recv()
        assert getattr(closed.value, "rcvd", None) is not None
        assert closed.value.rcvd.code == 4009  # type: ignore[attr-defined]
