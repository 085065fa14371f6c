"""The benchmark generator's reading of the channel peers' protocols (NATS, socket.io).

A NATS server over WebSocket sends a byte stream cut into frames wherever it likes; a reader that
lost or duplicated a message at a frame boundary would make the peer look lossy or fast."""

from __future__ import annotations

import pytest

from benchmarks.peerwire import (
    NatsReader,
    nats_publish,
    nats_subscribe,
    socketio_message_payload,
    socketio_publish,
)
from benchmarks.wire import PayloadFactory, decode_payload

STREAM = (
    b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    b"MSG bench-1 1 5\r\nhello\r\n"
    b"PING\r\n"
    b"MSG bench-1 1 12\r\nwith\r\ninside\r\n"
    b"MSG bench-1 1 reply.to 0\r\n\r\n"
    b"PONG\r\n"
    b"-ERR 'Slow Consumer'\r\n"
)
EXPECTED = [
    (b"INFO", b'{"server_id":"x","max_payload":1048576}'),
    (b"MSG", b"hello"),
    (b"PING", b""),
    (b"MSG", b"with\r\ninside"),
    (b"MSG", b""),
    (b"PONG", b""),
    (b"-ERR", b"'Slow Consumer'"),
]


def test_a_nats_stream_in_one_frame_gives_every_message_in_order() -> None:
    assert list(NatsReader().feed(STREAM)) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 40])
def test_a_nats_stream_cut_anywhere_gives_the_same_messages(size: int) -> None:
    reader = NatsReader()
    got: list[tuple[bytes, bytes]] = []
    for start in range(0, len(STREAM), size):
        got.extend(reader.feed(STREAM[start : start + size]))
    assert got == EXPECTED


def test_what_the_publisher_sends_is_what_a_subscriber_reads() -> None:
    payload = PayloadFactory(200).payload(7, 123)
    frame = nats_publish("bench-3", payload)
    assert frame.startswith(b"PUB bench-3 %d\r\n" % len(payload.encode()))
    # The server relays the body unchanged in a MSG.
    relayed = frame.replace(b"PUB bench-3", b"MSG bench-3 1", 1)
    [(kind, body)] = list(NatsReader().feed(relayed))
    assert kind == b"MSG"
    decoded = decode_payload(body)
    assert (decoded.seq, decoded.ts) == (7, 123)


def test_a_nats_subscription_ends_with_a_ping_to_confirm_it() -> None:
    assert nats_subscribe("bench-0").split(b"\r\n")[1:] == [b"SUB bench-0 1", b"PING", b""]


def test_a_socketio_message_event_gives_its_payload_and_nothing_else_does() -> None:
    payload = PayloadFactory(100).payload(3, 99)
    # What the peer's io.to(room).emit("message", data) sends for a publish of this payload.
    event = socketio_publish("bench-0", payload).replace('"publish","bench-0"', '"message"')
    body = socketio_message_payload(event.encode())
    assert body is not None
    decoded = decode_payload(body)
    assert (decoded.seq, decoded.ts) == (3, 99)
    for other in (b"2", b'40{"sid":"abc"}', b"431[true]", b'42["other",{}]'):
        assert socketio_message_payload(other) is None
