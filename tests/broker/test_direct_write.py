"""The outbox's direct path (``Outbox.offer`` -> ``TransportLink.write_now``), over real
sockets: a publication for an idle connection goes straight to its socket, a stalled client on
that path is still dropped with bounded memory, order holds where direct and queued writes
interleave, and the link's ``_open`` flag decides as the whole condition would at every
delivery."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import msgspec
import pytest

from broker.connection import Connection
from broker.settings import QueueSettings, Settings
from broker.transport_link import TransportLink
from protocol import JSON, Frame, Ping, Pong, Publication, Publish, Published, Subscribe, Subscribed
from tests.conftest import serve_broker, wait_until
from tests.rawclient import (
    RawClient,
    close_frame,
    masked_frame,
    open_raw,
    read_frames,
    server_holds,
)
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

#: 2,000 publications of 4 KB: 8 MB for the stalled client, well past what the kernel absorbs.
COUNT, PAD = 2000, "x" * 4000


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[tuple[object, str]]]:
    """Counts, per connection (by its ``TransportLink``), the publications written straight
    (``direct``) and the writes of what was queued (``queued``)."""
    counts: Counter[tuple[object, str]] = Counter()
    write_now = TransportLink.write_now
    write_through = Connection._write_through
    service = Connection._service

    def counting_write_now(self: TransportLink, frame: Frame) -> bool:
        # The flag the protocol keeps (``_open``) and what ``write_now`` checks itself decide
        # exactly as the whole condition would, at every delivery of every test here: through
        # a socket pushing back (pause and resume), an overflow, a reset and a close.
        expected = self.open_now()
        wrote = write_now(self, frame)
        assert wrote == expected
        if wrote:
            counts[self, "direct"] += 1
        return wrote

    def counting_write_through(self: Connection) -> bool:
        if len(self.outbox):
            counts[self.link, "queued"] += 1
        return write_through(self)

    def counting_service(self: Connection) -> None:
        if len(self.outbox):
            counts[self.link, "queued"] += 1
        service(self)

    monkeypatch.setattr(TransportLink, "write_now", counting_write_now)
    monkeypatch.setattr(Connection, "_write_through", counting_write_through)
    monkeypatch.setattr(Connection, "_service", counting_service)
    yield counts


def server_side(broker_connections: dict[str, Connection], port: int) -> Connection:
    for connection in broker_connections.values():
        if connection.remote is not None and connection.remote.endswith(f":{port}"):
            return connection
    raise LookupError(port)


@pytest.mark.parametrize("flush_interval", [0.0, 0.005])
async def test_a_stalled_client_on_the_direct_path_is_dropped_with_bounded_memory(
    paths: Counter[tuple[object, str]], flush_interval: float
) -> None:
    queue = QueueSettings(max_messages=200, max_bytes=512 * 1024, flush_interval=flush_interval)
    settings = Settings(queue=queue)
    mark = settings.websocket.transport_buffer_bytes
    async with serve_broker(settings) as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        try:
            await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel="busy"))))
            async with (
                open_client(running.url(), max_queue=None) as healthy,
                open_client(running.url()) as publisher,
            ):
                await healthy.send(Subscribe(id=1, channel="busy"))
                await healthy.expect(Subscribed)
                broker = running.broker
                await wait_until(lambda: broker.hub.subscriber_count("busy") == 2)
                stalled = server_side(broker.connections, raw.local_port)
                link = stalled.link
                assert link is not None
                buffered: list[int] = []
                received: list[int] = []
                for i in range(COUNT):
                    data = msgspec.Raw(JSON.encode_payload({"i": i, "pad": PAD}))
                    await publisher.send(Publish(id=i, channel="busy", data=data))
                    await publisher.expect(Published)
                    # One at a time: each goes straight to the healthy client's idle socket.
                    received.append((await healthy.expect(Publication)).offset)
                    if not stalled.outbox.closed:
                        buffered.append(link.buffered_bytes())
                assert received == list(range(1, COUNT + 1))
                # The stalled client was written to directly until its socket pushed back, then
                # queued for, and dropped; what the server held for it stayed within the mark
                # plus one frame (direct writes only when below it) plus the outbox's bound.
                assert paths[stalled.link, "direct"] > 0
                assert max(buffered) <= mark + queue.max_bytes + 5000
                await wait_until(lambda: broker.hub.subscriber_count("busy") == 1)
                await wait_until(lambda: not server_holds(running.port, raw.local_port))
                assert broker.totals.slow_consumers == 1
                assert stalled.slow_consumer is not None
                healthy_side = server_side(broker.connections, healthy.ws.local_address[1])
                # Without coalescing every one of them can go straight out; with it, at least the
                # first (a stream this fast may count as dense, and be coalesced, afterwards).
                least = COUNT // 2 if not flush_interval else 0
                assert paths[healthy_side.link, "direct"] > least
        finally:
            raw.reset()


async def test_order_holds_where_direct_and_queued_writes_interleave(
    paths: Counter[tuple[object, str]],
) -> None:
    """Single publications go straight out; a burst handled in one turn goes out as one
    straight write and then one queued write; replies in between keep their place."""
    async with serve_broker() as running:
        raw: RawClient = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        try:
            async with open_client(running.url(), max_queue=None) as subscriber:
                await subscriber.send(Subscribe(id=1, channel="mixed"))
                await subscriber.expect(Subscribed)
                broker = running.broker
                await wait_until(lambda: broker.hub.subscriber_count("mixed") == 1)
                side = next(
                    c
                    for c in broker.connections.values()
                    if c is not server_side(broker.connections, raw.local_port)
                )
                expected: list[object] = []
                offset = 0
                rounds, burst = 20, 6
                for round_ in range(rounds):
                    # A burst in one client write: one read, one turn of the hub.
                    frames = b""
                    for _ in range(burst if round_ % 2 else 1):
                        offset += 1
                        publish = Publish(channel="mixed", data=msgspec.Raw(b"%d" % offset))
                        frames += masked_frame(JSON.encode_client(publish))
                        expected.append(offset)
                    await raw.send(frames)
                    await subscriber.send(Ping(id=round_ + 10))
                    expected.append(("pong", round_ + 10))
                    # Wait for the round to arrive, so the next starts on an idle connection.
                    got: list[object] = []
                    while len(got) < (burst if round_ % 2 else 1) + 1:
                        received = await subscriber.recv()
                        if isinstance(received, Publication):
                            got.append(received.offset)
                        elif isinstance(received, Pong):
                            got.append(("pong", received.id))
                    # The pong may come before the publications (the subscriber's own read can
                    # run first) but never among them: each kind keeps its order.
                    publications = [g for g in got if isinstance(g, int)]
                    assert (
                        publications
                        == [g for g in expected if isinstance(g, int)][-len(publications) :]
                    )
                assert offset == rounds // 2 * burst + rounds // 2
                direct, queued = paths[side.link, "direct"], paths[side.link, "queued"]
                # Every single one straight; each burst's first straight, its rest queued
                # (one write), never one write per publication.
                assert direct <= rounds
                assert queued >= 1
                assert direct + queued < offset
        finally:
            raw.reset()


async def test_a_publication_waits_behind_a_queued_reply(
    paths: Counter[tuple[object, str]],
) -> None:
    """Nothing overtakes what is queued: the first reply of a turn goes straight out, the second
    is queued (one direct write per turn), the publication after it is queued too, and all
    leave in order."""
    async with serve_broker() as running:
        async with open_client(running.url()) as subscriber:
            await subscriber.send(Subscribe(id=1, channel="c"))
            await subscriber.expect(Subscribed)
            broker = running.broker
            (side,) = broker.connections.values()
            message = Publication(channel="c", offset=1, epoch="e", data=msgspec.Raw(b"1"))
            publication = Frame(JSON.encode(message), "c", 1)
            before = paths[side.link, "direct"]  # the replies so far went straight out too
            assert side.send_frame(JSON.encode(Pong(id=7)))
            assert not len(side.outbox) and paths[side.link, "direct"] == before + 1
            assert side.send_frame(JSON.encode(Pong(id=8)))
            assert side.outbox.offer(publication) and len(side.outbox) == 2
            assert await subscriber.recv() == Pong(id=7)
            assert await subscriber.recv() == Pong(id=8)
            assert await subscriber.recv() == message
            assert paths[side.link, "direct"] == before + 1
            # Once it is all written, the next one goes straight out.
            await wait_until(lambda: not len(side.outbox))
            assert side.outbox.offer(Frame(JSON.encode(message), "c", 2))
            assert not len(side.outbox) and paths[side.link, "direct"] == before + 2
            assert await subscriber.recv() == message


async def test_nothing_is_written_straight_to_a_client_after_its_close_frame(
    paths: Counter[tuple[object, str]],
) -> None:
    """Publications keep coming while a subscriber closes: those after its close frame are not
    written to it (the close reply is the last frame it gets), and the ones before went
    straight out (no coalescing: a stream this fast would otherwise be held for the timer, and
    what is held when the close frame comes is let go)."""
    settings = Settings(queue=QueueSettings(flush_interval=0.0))
    async with serve_broker(settings) as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        async with open_client(running.url()) as publisher:
            await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel="c"))))
            broker = running.broker
            await wait_until(lambda: broker.hub.subscriber_count("c") == 1)
            side = server_side(broker.connections, raw.local_port)
            for i in range(40):
                if i == 20:
                    await raw.send(close_frame(1000))
                data = msgspec.Raw(JSON.encode_payload({"i": i}))
                await publisher.send(Publish(id=i, channel="c", data=data))
                await publisher.expect(Published)
            frames = await read_frames(raw)
    raw.sock.close()
    opcodes = [opcode for opcode, _ in frames]
    assert opcodes[-1] == 0x8 and opcodes.count(0x8) == 1
    offsets = [JSON.decode_server(payload) for opcode, payload in frames if opcode == 0x1]
    publications = [m.offset for batch in offsets for m in batch if isinstance(m, Publication)]
    # Every publication before the close frame, in order, and none after it.
    assert publications == list(range(1, len(publications) + 1))
    assert 20 <= len(publications) < 40
    assert paths[side.link, "direct"] >= 20
