"""A publication is encoded at most once per encoding, however many subscribers it has.

The proof counts work on the process-wide codecs (``messages_encoded``, ``payloads_converted``),
read before and after, so it holds whatever other tests did to the counters earlier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec
import pytest

from protocol import (
    JSON,
    MSGPACK,
    Codec,
    Encoding,
    Frame,
    Publication,
    PublicationFrames,
    Publish,
)

SUBSCRIBERS = 1_000

#: A payload as a publisher might type it: odd spacing, unsorted keys, escapes, a float's spelling.
JSON_DATA = b'{ "z":1,  "a" : [1.50, "\\u00e9t\\u00e9", null],\n "m":{"k": true} }'
VALUE = {"z": 1, "a": [1.5, "été", None], "m": {"k": True}}


@dataclass(frozen=True)
class Counts:
    json_encoded: int
    msgpack_encoded: int
    json_converted: int
    msgpack_converted: int

    @classmethod
    def now(cls) -> Counts:
        return cls(
            JSON.messages_encoded,
            MSGPACK.messages_encoded,
            JSON.payloads_converted,
            MSGPACK.payloads_converted,
        )

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.json_encoded - other.json_encoded,
            self.msgpack_encoded - other.msgpack_encoded,
            self.json_converted - other.json_converted,
            self.msgpack_converted - other.msgpack_converted,
        )


def publication(source: Codec, data: bytes, publisher: str | None = "c-1") -> PublicationFrames:
    return PublicationFrames(
        channel="chat:lobby",
        offset=42,
        epoch="e1",
        publisher=publisher,
        data=msgspec.Raw(data),
        source=source,
    )


def deliver(frames: PublicationFrames, encodings: list[Encoding]) -> list[Frame]:
    """What the hub does for one publication: one ``frame()`` call per subscriber."""
    return [frames.frame(encoding) for encoding in encodings]


def test_json_publication_to_many_subscribers_of_each_encoding() -> None:
    frames = publication(JSON, JSON_DATA)
    subscribers = [Encoding.JSON, Encoding.MSGPACK] * SUBSCRIBERS  # interleaved, as in a hub
    before = Counts.now()
    delivered = deliver(frames, subscribers)
    assert Counts.now() - before == Counts(
        json_encoded=1, msgpack_encoded=1, json_converted=0, msgpack_converted=1
    )
    json_frames = delivered[0::2]
    msgpack_frames = delivered[1::2]
    assert len(json_frames) == len(msgpack_frames) == SUBSCRIBERS
    # Every subscriber of an encoding gets the very same Frame object.
    assert all(frame is json_frames[0] for frame in json_frames)
    assert all(frame is msgpack_frames[0] for frame in msgpack_frames)
    assert json_frames[0] is not msgpack_frames[0]


def test_repeated_calls_after_delivery_encode_nothing() -> None:
    frames = publication(MSGPACK, msgspec.msgpack.encode(VALUE))
    deliver(frames, [Encoding.MSGPACK, Encoding.JSON])
    before = Counts.now()
    deliver(frames, [Encoding.MSGPACK] * SUBSCRIBERS + [Encoding.JSON] * SUBSCRIBERS)
    frames.payload(Encoding.JSON)
    frames.payload(Encoding.MSGPACK)
    assert Counts.now() - before == Counts(0, 0, 0, 0)


def test_only_json_subscribers_cost_no_conversion() -> None:
    frames = publication(JSON, JSON_DATA)
    before = Counts.now()
    deliver(frames, [Encoding.JSON] * SUBSCRIBERS)
    assert Counts.now() - before == Counts(1, 0, 0, 0)


def test_no_subscribers_cost_nothing() -> None:
    before = Counts.now()
    publication(JSON, JSON_DATA)
    assert Counts.now() - before == Counts(0, 0, 0, 0)


def test_msgpack_publication_converted_once_for_json_subscribers() -> None:
    frames = publication(MSGPACK, msgspec.msgpack.encode(VALUE))
    before = Counts.now()
    deliver(frames, [Encoding.MSGPACK] * SUBSCRIBERS + [Encoding.JSON] * SUBSCRIBERS)
    assert Counts.now() - before == Counts(
        json_encoded=1, msgpack_encoded=1, json_converted=1, msgpack_converted=0
    )


def test_added_payload_is_used_without_conversion() -> None:
    # The reader may convert a MessagePack payload to JSON early (PublicationFrames.add_payload).
    frames = publication(MSGPACK, msgspec.msgpack.encode(VALUE))
    frames.add_payload(Encoding.JSON, msgspec.Raw(JSON_DATA))
    before = Counts.now()
    json_frame = deliver(frames, [Encoding.JSON] * SUBSCRIBERS)[0]
    assert Counts.now() - before == Counts(1, 0, 0, 0)
    assert JSON_DATA in json_frame.data


@pytest.mark.parametrize(
    "source", [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]
)
def test_frames_of_both_encodings_carry_the_same_publication(source: Codec) -> None:
    data = JSON_DATA if source is JSON else msgspec.msgpack.encode(VALUE)
    frames = publication(source, data)
    json_frame = frames.frame(Encoding.JSON)
    msgpack_frame = frames.frame(Encoding.MSGPACK)

    # Read back with decoders that know nothing of the protocol's types.
    as_json = json.loads(json_frame.data.decode("utf-8"))
    as_msgpack = msgspec.msgpack.decode(msgpack_frame.data)
    expected = {
        "type": "message",
        "channel": "chat:lobby",
        "offset": 42,
        "epoch": "e1",
        "data": VALUE,
        "from": "c-1",
    }
    assert as_json == expected
    assert as_msgpack == expected

    # And with the protocol's own decoders.
    [from_json] = JSON.decode_server(json_frame.data)
    [from_msgpack] = MSGPACK.decode_server(msgpack_frame.data)
    assert isinstance(from_json, Publication)
    assert isinstance(from_msgpack, Publication)
    assert JSON.decode_payload(from_json.data) == MSGPACK.decode_payload(from_msgpack.data) == VALUE
    assert from_json == frames.message(Encoding.JSON)
    assert from_msgpack == frames.message(Encoding.MSGPACK)


def test_frame_records_channel_offset_and_size() -> None:
    frame = publication(JSON, JSON_DATA).frame(Encoding.JSON)
    assert frame.channel == "chat:lobby"
    assert frame.offset == 42
    assert frame.size == len(frame.data)


def test_http_publication_has_null_from() -> None:
    frames = publication(JSON, b"1", publisher=None)
    assert json.loads(frames.frame(Encoding.JSON).data)["from"] is None
    assert msgspec.msgpack.decode(frames.frame(Encoding.MSGPACK).data)["from"] is None


# --- Raw pass-through -----------------------------------------------------------------------------


def test_json_frame_holds_the_publishers_exact_bytes() -> None:
    # The path a publication takes: client frame -> Publish -> PublicationFrames -> JSON frame.
    client_frame = b'{"type":"publish","channel":"chat:lobby","id":3,"data":' + JSON_DATA + b"}"
    message = JSON.decode_client(client_frame)
    assert isinstance(message, Publish)
    frames = PublicationFrames(
        channel=message.channel,
        offset=42,
        epoch="e1",
        publisher="c-1",
        data=message.data,
        source=JSON,
    )
    json_frame = frames.frame(Encoding.JSON).data
    assert JSON_DATA in json_frame
    [decoded] = JSON.decode_server(json_frame)
    assert isinstance(decoded, Publication)
    assert bytes(decoded.data) == JSON_DATA


def test_msgpack_frame_holds_the_publishers_exact_bytes() -> None:
    # A float32 and a str8 header where a fixstr would do: re-encoding would change both.
    data = b"\x82\xa1x\xca\x3f\xc0\x00\x00\xa1s\xd9\x02hi"
    assert msgspec.msgpack.decode(data) == {"x": 1.5, "s": "hi"}
    frames = publication(MSGPACK, data)
    msgpack_frame = frames.frame(Encoding.MSGPACK).data
    assert data in msgpack_frame
    [decoded] = MSGPACK.decode_server(msgpack_frame)
    assert isinstance(decoded, Publication)
    assert bytes(decoded.data) == data
    assert json.loads(frames.frame(Encoding.JSON).data)["data"] == {"x": 1.5, "s": "hi"}
