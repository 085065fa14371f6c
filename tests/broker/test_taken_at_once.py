"""Messages taken at once (``ClientMessages.take_now``, ``Reader.take_message``,
``V1Reader.take_now``): under the broker's own server a ``/v1/ws`` message that arrives while the
reader waits is handled in the protocol's callback, a ``ping`` or ``publish`` there and then,
anything else deferred to the reader's task. Over real sockets: requests keep their order
whichever way each goes, what is taken counts as read (the connection's statistics, the
heartbeat), and a failure there ends the connection as a failure in the reader does (1011, the
traceback in the log, none to the client)."""

from __future__ import annotations

import struct

import msgspec
import pytest
import structlog

from broker.v1 import V1Reader
from protocol import (
    JSON,
    Ping,
    Pong,
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
    Welcome,
)
from tests.broker.v1.helpers import LEAK
from tests.conftest import serve_broker, wait_until
from tests.rawclient import masked_frame, open_raw, read_frames

pytestmark = pytest.mark.anyio


def request(message: Subscribe | Publish | Ping) -> bytes:
    return masked_frame(JSON.encode_client(message))


def payload(value: object) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(value))


async def test_a_publish_right_behind_a_subscribe_in_one_write_does_not_overtake_it() -> None:
    """The subscribe is deferred to the reader's task (it goes through the hub's mailbox); the
    publish and the ping behind it, which alone would be taken at once, wait their turn: the
    client is subscribed before its publish, so it gets its own publication, and every reply
    comes in request order."""
    async with serve_broker() as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        await wait_until(lambda: len(running.broker.connections) == 1)
        await raw.send(
            request(Subscribe(id=1, channel="news"))
            + request(Publish(id=2, channel="news", data=payload({"n": 1})))
            + request(Ping(id=3))
        )
        received: list[object] = []
        while len(received) < 4:
            frames = await read_frames(raw, idle=0.5)
            assert frames, f"only {received!r} arrived"
            for _opcode, data in frames:
                received += [m for m in JSON.decode_server(data) if not isinstance(m, Welcome)]
        kinds = [type(message) for message in received]
        assert kinds[0] is Subscribed and received[0].id == 1  # type: ignore[attr-defined]
        # The publication may come before or after ``published`` (docs/protocol.md).
        assert sorted(kinds[1:3], key=lambda kind: kind.__name__) == [Publication, Published]
        assert isinstance(received[3], Pong) and received[3].id == 3
        raw.reset()


async def test_messages_taken_at_once_count_as_read() -> None:
    async with serve_broker() as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        await wait_until(lambda: len(running.broker.connections) == 1)
        (connection,) = running.broker.connections.values()
        sent = [
            JSON.encode_client(Ping(id=1)),
            JSON.encode_client(Publish(id=2, channel="news", data=payload({"n": 1}))),
        ]
        for frame in sent:
            # One at a time, each answered before the next: every one finds the reader waiting.
            await raw.send(masked_frame(frame))
            assert await read_frames(raw, idle=0.5)
        assert connection.stats.messages_in == 2
        assert connection.stats.bytes_in == sum(len(frame) for frame in sent)
        raw.reset()


async def test_a_failure_while_taking_a_message_ends_the_connection_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(self: V1Reader, message: Publish) -> None:
        raise RuntimeError("a bug in the publish path")

    monkeypatch.setattr(V1Reader, "publish_taken", failing)
    async with serve_broker() as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        await wait_until(lambda: len(running.broker.connections) == 1)
        with structlog.testing.capture_logs() as logs:
            await raw.send(request(Publish(id=1, channel="news", data=payload({"n": 1}))))
            frames = await read_frames(raw, idle=1.0)
            await wait_until(lambda: not running.broker.connections)
        closes = [data for opcode, data in frames if opcode == 0x8]
        assert closes, f"no close frame: {frames!r}"
        assert struct.unpack("!H", closes[0][:2])[0] == 1011
        assert not any(LEAK.search(data.decode(errors="replace")) for _opcode, data in frames)
        failed = [entry for entry in logs if entry["event"] == "connection.failed"]
        assert len(failed) == 1 and failed[0]["log_level"] == "error"
        raw.reset()
