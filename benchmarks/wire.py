"""The benchmark payload and the frames each protocol needs, for the real and the raw clients.

A payload is a JSON object ``{"seq": N, "ts": T, "pad": "..."}``: ``seq`` numbers the
publications of one run from 0 (warm-up publications use -1), ``ts`` is the publisher's
``time.time_ns()`` just before the send (one clock for every process on this machine), and
``pad`` brings the payload to the requested size.

Two protocols are spoken:

- ``chat``: the tutorial's ``/ws/chat``. The payload is sent as a text frame; every member gets
  ``Client says: <payload>``.
- ``v1``: the broker's ``/v1/ws`` with subprotocol ``broker.v1.json``. The payload is the ``data``
  of a ``publish``; subscribers get ``message`` objects, one per frame or batched in a JSON array.
- ``v1-msgpack``: the same with subprotocol ``broker.v1.msgpack``: binary frames holding
  MessagePack maps (the payload a map with the same keys), batches as MessagePack arrays.
- ``nats`` and ``socketio``: the channel peers' own protocols (``benchmarks.peerwire``): the
  NATS text protocol over WebSocket (the payload is a message's body) and socket.io 4 events
  (the payload is the data of a ``publish`` and of the ``message`` each room member gets).

``encode_publish``, ``encode_subscribe``, ``encode_ping`` and ``decode_v1_frame`` speak either
v1 encoding; the older ``publish_frame``, ``subscribe_frame``, ``ping_frame`` and ``decode_v1``
are the JSON forms.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec
from websockets.typing import Subprotocol

from benchmarks import peerwire

CHAT_PREFIX: Final = "Client says: "
V1_SUBPROTOCOL: Final = Subprotocol("broker.v1.json")
V1_MSGPACK_SUBPROTOCOL: Final = Subprotocol("broker.v1.msgpack")
WARMUP_SEQ: Final = -1


class Protocol(enum.Enum):
    """The client protocol a target speaks."""

    CHAT = "chat"
    V1 = "v1"
    V1_MSGPACK = "v1-msgpack"
    NATS = "nats"
    SOCKETIO = "socketio"

    @property
    def v1(self) -> bool:
        """Whether this is the broker's ``/v1/ws`` protocol (either encoding)."""
        return self is Protocol.V1 or self is Protocol.V1_MSGPACK

    @property
    def channels(self) -> bool:
        """Whether a client can subscribe to one channel of many (everything but ``chat``)."""
        return self is not Protocol.CHAT

    @property
    def binary(self) -> bool:
        """Whether frames are binary (MessagePack) rather than text."""
        return self is Protocol.V1_MSGPACK

    @property
    def subprotocol(self) -> Subprotocol | None:
        """The WebSocket subprotocol to offer, if any."""
        if self is Protocol.V1:
            return V1_SUBPROTOCOL
        if self is Protocol.V1_MSGPACK:
            return V1_MSGPACK_SUBPROTOCOL
        return None


class Payload(msgspec.Struct):
    """The fields of a payload a receiver needs; ``pad`` is skipped without being decoded."""

    seq: int
    ts: int


class Publication(msgspec.Struct, kw_only=True):
    """Any server message of ``/v1/ws``, loosely: only the fields the benchmark reads."""

    type: str
    id: int | None = None
    channel: str | None = None
    offset: int | None = None
    data: Payload | None = None
    heartbeat: float | None = None
    code: str | int | None = None
    reason: str | None = None
    message: str | None = None


class _FullPayload(msgspec.Struct):
    seq: int
    ts: int
    pad: str


class _Publish(msgspec.Struct, tag_field="type", tag="publish"):
    channel: str
    data: _FullPayload


class _Subscribe(msgspec.Struct, tag_field="type", tag="subscribe"):
    id: int
    channel: str


class _Ping(msgspec.Struct, tag_field="type", tag="ping"):
    id: int


_CHAT_PREFIX_BYTES: Final = CHAT_PREFIX.encode()
_V1_FRAME = Publication | list[Publication]
_payload_decoder: Final = msgspec.json.Decoder(Payload)
_v1_decoder: Final = msgspec.json.Decoder(_V1_FRAME)
_v1_msgpack_decoder: Final = msgspec.msgpack.Decoder(_V1_FRAME)
_msgpack_encoder: Final = msgspec.msgpack.Encoder()


class PayloadFactory:
    """Builds payloads of one size quickly: the pad is made once."""

    def __init__(self, message_bytes: int) -> None:
        # {"seq":<=10 digits,"ts":19 digits,"pad":""} takes at most 50 bytes.
        self._pad = "x" * max(0, message_bytes - 50)

    def payload(self, seq: int, ts: int) -> str:
        return f'{{"seq":{seq},"ts":{ts},"pad":"{self._pad}"}}'

    @property
    def pad(self) -> str:
        return self._pad


def publish_frame(protocol: Protocol, channel: str, payload: str) -> str:
    """The text frame a publisher sends for one payload."""
    if protocol is Protocol.CHAT:
        return payload
    return f'{{"type":"publish","channel":"{channel}","data":{payload}}}'


def subscribe_frame(channel: str, request_id: int = 1) -> str:
    """A ``/v1/ws`` subscribe command."""
    return f'{{"type":"subscribe","id":{request_id},"channel":"{channel}"}}'


def ping_frame(request_id: int) -> str:
    """A ``/v1/ws`` application-level ping (keeps the heartbeat alive)."""
    return f'{{"type":"ping","id":{request_id}}}'


def decode_payload(data: bytes | memoryview) -> Payload:
    """A payload's JSON (a NATS message body, a socket.io event's data)."""
    return _payload_decoder.decode(data)


def decode_chat(frame: bytes) -> Payload | None:
    """The payload inside a chat broadcast (raw UTF-8 frame), or None for any other chat text."""
    if not frame.startswith(_CHAT_PREFIX_BYTES):
        return None
    return _payload_decoder.decode(memoryview(frame)[len(_CHAT_PREFIX_BYTES) :])


def decode_v1(frame: str | bytes) -> list[Publication]:
    """The messages of one ``/v1/ws`` server frame (a single message or a batch)."""
    decoded = _v1_decoder.decode(frame)
    if isinstance(decoded, list):
        return decoded
    return [decoded]


def encode_publish(
    protocol: Protocol, channel: str, factory: PayloadFactory, seq: int, ts: int
) -> str | bytes:
    """The frame a publisher sends for publication ``seq``: text, or bytes for MessagePack."""
    if protocol is Protocol.V1_MSGPACK:
        return _msgpack_encoder.encode(_Publish(channel, _FullPayload(seq, ts, factory.pad)))
    if protocol is Protocol.NATS:
        return peerwire.nats_publish(channel, factory.payload(seq, ts))
    if protocol is Protocol.SOCKETIO:
        return peerwire.socketio_publish(channel, factory.payload(seq, ts))
    return publish_frame(protocol, channel, factory.payload(seq, ts))


def encode_subscribe(protocol: Protocol, channel: str, request_id: int = 1) -> str | bytes:
    """A ``/v1/ws`` subscribe command in the protocol's encoding; for NATS the connect, the
    subscription and a ping; for socket.io the namespace connect (the subscription follows its
    answer)."""
    if protocol is Protocol.NATS:
        return peerwire.nats_subscribe(channel, request_id)
    if protocol is Protocol.SOCKETIO:
        return peerwire.SOCKETIO_CONNECT
    if protocol is Protocol.V1_MSGPACK:
        return _msgpack_encoder.encode(_Subscribe(request_id, channel))
    return subscribe_frame(channel, request_id)


def encode_ping(protocol: Protocol, request_id: int) -> str | bytes:
    """A ``/v1/ws`` application-level ping in the protocol's encoding."""
    if protocol is Protocol.V1_MSGPACK:
        return _msgpack_encoder.encode(_Ping(request_id))
    return ping_frame(request_id)


def decode_v1_frame(protocol: Protocol, frame: bytes) -> list[Publication]:
    """The messages of one ``/v1/ws`` server frame in the protocol's encoding."""
    if protocol is Protocol.V1_MSGPACK:
        decoded = _v1_msgpack_decoder.decode(frame)
        return decoded if isinstance(decoded, list) else [decoded]
    return decode_v1(frame)
