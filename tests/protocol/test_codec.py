"""Codecs: hostile client frames, batch frames and subprotocol negotiation (docs/protocol.md §1)."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import pytest

from protocol import (
    CODECS,
    JSON,
    MSGPACK,
    Codec,
    DecodeFailure,
    Disconnect,
    Encoding,
    Error,
    Gap,
    Join,
    Ping,
    Pong,
    Publication,
    Published,
    ServerMessage,
    codec_for_subprotocols,
    convert_payload,
)

BOTH = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]


def frame_of(codec: Codec, value: Any) -> bytes:
    """``value`` encoded as a client of ``codec``'s encoding would (no protocol types involved)."""
    if codec is JSON:
        return json.dumps(value).encode()
    return msgspec.msgpack.encode(value)


def mp_str(raw: bytes) -> bytes:
    """A MessagePack fixstr holding ``raw`` as is, valid UTF-8 or not."""
    assert len(raw) < 32
    return bytes((0xA0 | len(raw),)) + raw


def mp_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A MessagePack fixmap of already encoded keys and values."""
    return bytes((0x80 | len(pairs),)) + b"".join(key + value for key, value in pairs)


def failure_of(codec: Codec, frame: bytes) -> DecodeFailure:
    """``decode_client(frame)``, which must not raise and must fail with a readable message."""
    result = codec.decode_client(frame)
    assert isinstance(result, DecodeFailure), result
    assert isinstance(result.message, str)
    assert result.message.strip()
    return result


# --- undecodable frames ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xff\xfe\x00",
        b'{"type": "ping", "id": 1',
        b'{"type": "ping", "id": 1}}',
        b"{'type': 'ping', 'id': 1}",
        b'{"type": "ping", "id": 01}',
        b'{"type": "ping", "id": NaN}',
        b'{"type": "ping" "id": 1}',
        b"ping",
    ],
)
def test_json_undecodable(frame: bytes) -> None:
    failure = failure_of(JSON, frame)
    assert failure.id is None
    assert "undecodable" in failure.message or "malformed" in failure.message


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used in MessagePack
        b"\x82\xa4type",  # truncated map
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 G elements, with no data
        b"\xdf\xff\xff\xff\xff",  # same for a map
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GiB
        msgspec.msgpack.encode({"type": "ping", "id": 1}) + b"\x00",  # trailing data
    ],
)
def test_msgpack_undecodable(frame: bytes) -> None:
    failure = failure_of(MSGPACK, frame)
    assert failure.id is None


@pytest.mark.parametrize("codec", BOTH)
@pytest.mark.parametrize("value", [42, "ping", None, True, 1.5, {}, {"id": 1}])
def test_valid_encoding_but_not_a_message(codec: Codec, value: Any) -> None:
    failure_of(codec, frame_of(codec, value))


# --- invalid messages: the reply names the problem and, when readable, the request --------------

INVALID_MESSAGES: list[tuple[dict[str, Any], int | None, str]] = [
    # (message, the id the failure carries, a fragment of its message)
    ({"type": "subscribe", "id": 5}, 5, "channel"),
    ({"type": "unsubscribe", "channel": "news"}, None, "id"),
    ({"type": "publish", "channel": "news", "id": 6}, 6, "data"),
    ({"type": "subscribe", "id": 7, "channel": 42}, 7, "$.channel"),
    ({"type": "subscribe", "id": 8, "channel": ["news"]}, 8, "$.channel"),
    ({"type": "subscribe", "id": 9, "channel": "news", "since": 5}, 9, "$.since"),
    ({"type": "subscribe", "id": 10, "channel": "news", "since": {"offset": 1}}, 10, "epoch"),
    (
        {"type": "subscribe", "id": 11, "channel": "news", "since": {"offset": -1, "epoch": "e"}},
        11,
        "$.since.offset",
    ),
    (
        {"type": "subscribe", "id": 12, "channel": "news", "since": {"offset": "1", "epoch": "e"}},
        12,
        "$.since.offset",
    ),
    ({"type": "history", "id": 13, "channel": "news", "limit": "ten"}, 13, "$.limit"),
    ({"type": "history", "id": 14, "channel": "news", "limit": -1}, 14, "$.limit"),
    ({"type": "history", "id": 15, "channel": "news", "limit": 2**31}, 15, "$.limit"),
    ({"type": "ping", "id": "16"}, None, "$.id"),
    ({"type": "ping", "id": 1.5}, None, "$.id"),
    ({"type": "ping", "id": True}, None, "$.id"),
    ({"type": "ping", "id": None}, None, "$.id"),
    ({"type": "ping"}, None, "id"),
    # An id out of range (docs/protocol.md: 0 to 2^63-1) is itself the error: never echoed.
    ({"type": "ping", "id": -1}, None, "$.id"),
    ({"type": "presence", "id": -(2**63), "channel": "news"}, None, "$.id"),
    ({"type": "ping", "id": 2**63}, None, "$.id"),
    ({"type": "teleport", "id": 17}, 17, "$.type"),
    ({"type": 1, "id": 18}, 18, "$.type"),
    ({"id": 19, "channel": "news"}, 19, "type"),
]


@pytest.mark.parametrize("codec", BOTH)
@pytest.mark.parametrize(("message", "request_id", "fragment"), INVALID_MESSAGES)
def test_invalid_message(
    codec: Codec, message: dict[str, Any], request_id: int | None, fragment: str
) -> None:
    failure = failure_of(codec, frame_of(codec, message))
    assert failure.id == request_id
    assert fragment in failure.message


BAD_CHANNELS = [
    pytest.param("", id="empty"),
    pytest.param("a b", id="space"),
    pytest.param("x" * 256, id="256-bytes"),
    pytest.param("café", id="non-ascii"),
    pytest.param("é" * 128, id="256-bytes-of-non-ascii"),
    pytest.param("news\n", id="trailing-newline"),
    pytest.param("\nnews", id="leading-newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("#news", id="leading-hash"),
    pytest.param("a#b#c", id="two-hashes"),
    pytest.param("news?x=1", id="query"),
]


@pytest.mark.parametrize("codec", BOTH)
@pytest.mark.parametrize("channel", BAD_CHANNELS)
@pytest.mark.parametrize("tag", ["subscribe", "unsubscribe", "history", "presence", "publish"])
def test_bad_channel_name(codec: Codec, channel: str, tag: str) -> None:
    message = {"type": tag, "id": 20, "channel": channel, "data": None}
    failure = failure_of(codec, frame_of(codec, message))
    assert failure.id == 20
    assert "$.channel" in failure.message


TEXT_FRAMES = [
    *(json.dumps(message).encode() for message, _, _ in INVALID_MESSAGES),
    *(
        json.dumps({"type": "subscribe", "id": 20, "channel": p.values[0]}).encode()
        for p in BAD_CHANNELS
    ),
    json.dumps({"type": "publish", "id": 1, "channel": "news", "data": {"é": ["ü", 1.5]}}).encode(),
    rb'{"type":"publish","id":2,"channel":"news","data":"\u00e9\ud83d\ude00"}',
    '{"type":"publish","id":3,"channel":"news","data":"😀"}'.encode(),
    '{"type":"publish","id":4,"channel":"é","data":1}'.encode(),
    b'{"type": "ping", "id": 1',
    b'{"type": "ping", "id": 01}',
    rb'{"type":"ping","id":5,"x":"\ud800"}',
    b"ping",
    b"",
]


@pytest.mark.parametrize("frame", TEXT_FRAMES)
def test_a_json_text_frame_decodes_from_str_as_from_its_bytes(frame: bytes) -> None:
    # ``/v1/ws`` hands the text of a frame to ``decode_client`` as it was read (``V1Reader``).
    assert JSON.decode_client(frame.decode()) == JSON.decode_client(frame)


@pytest.mark.parametrize("codec", BOTH)
def test_longest_channel_name_is_accepted(codec: Codec) -> None:
    message = codec.decode_client(
        frame_of(codec, {"type": "presence", "id": 1, "channel": "x" * 255})
    )
    assert not isinstance(message, DecodeFailure)


@pytest.mark.parametrize("codec", BOTH)
def test_batch_from_a_client_is_rejected(codec: Codec) -> None:
    # Clients send exactly one message per frame (docs/protocol.md §1); only the server batches.
    frame = frame_of(codec, [{"type": "ping", "id": 1}, {"type": "ping", "id": 2}])
    failure = failure_of(codec, frame)
    assert failure.id is None
    assert "array" in failure.message
    assert "array" in failure_of(codec, frame_of(codec, [{"type": "ping", "id": 1}])).message


# --- deeply nested input: RecursionError must not escape ---------------------------------------

DEPTH = 100_000


def test_json_deeply_nested_payload() -> None:
    nested = b"[" * DEPTH + b"]" * DEPTH
    failure = failure_of(
        JSON, b'{"type": "publish", "id": 1, "channel": "c", "data": ' + nested + b"}"
    )
    assert "nested" in failure.message
    objects = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
    assert "nested" in failure_of(JSON, b'{"type": "ping", "id": 1, "x": ' + objects + b"}").message
    # Nested at the top: rejected at the first level, an array is not a message.
    failure_of(JSON, nested)


def test_msgpack_deeply_nested_payload() -> None:
    nested = b"\x91" * DEPTH + b"\xc0"  # [[[...[nil]...]]]
    frame = mp_map(
        (mp_str(b"type"), mp_str(b"publish")),
        (mp_str(b"channel"), mp_str(b"c")),
        (mp_str(b"data"), nested),
    )
    assert "nested" in failure_of(MSGPACK, frame).message
    objects = b"\x81\xa1a" * DEPTH + b"\x01"  # {"a": {"a": ... 1}}
    frame = mp_map(
        (mp_str(b"type"), mp_str(b"ping")), (mp_str(b"id"), b"\x01"), (mp_str(b"x"), objects)
    )
    assert "nested" in failure_of(MSGPACK, frame).message
    failure_of(MSGPACK, nested)


# --- invalid UTF-8 inside a MessagePack str ----------------------------------------------------


def test_msgpack_invalid_utf8_in_a_field_value() -> None:
    frame = mp_map(
        (mp_str(b"type"), mp_str(b"unsubscribe")),
        (mp_str(b"id"), b"\x15"),
        (mp_str(b"channel"), mp_str(b"news\xff")),
    )
    failure = failure_of(MSGPACK, frame)
    assert failure.id == 21  # the id is still readable: only the channel is broken
    assert "utf-8" in failure.message.lower()


def test_msgpack_invalid_utf8_in_the_type() -> None:
    frame = mp_map((mp_str(b"type"), mp_str(b"p\xc3ng")), (mp_str(b"id"), b"\x16"))
    failure = failure_of(MSGPACK, frame)
    assert failure.id == 22


def test_msgpack_invalid_utf8_in_a_key() -> None:
    frame = mp_map((mp_str(b"type"), mp_str(b"ping")), (mp_str(b"\xed\xa0\x80"), b"\x17"))
    failure = failure_of(MSGPACK, frame)
    assert failure.id is None


def test_msgpack_invalid_utf8_in_an_unknown_field_is_skipped() -> None:
    frame = mp_map(
        (mp_str(b"type"), mp_str(b"ping")),
        (mp_str(b"id"), b"\x18"),
        (mp_str(b"extra"), mp_str(b"\xff\xfe")),
    )
    assert MSGPACK.decode_client(frame) == Ping(id=24)


def test_msgpack_non_string_keys_and_extensions() -> None:
    int_keys = b"\x82\x01\x02" + mp_str(b"type") + mp_str(b"ping")
    failure_of(MSGPACK, int_keys)
    ext_id = msgspec.msgpack.encode({"type": "ping", "id": msgspec.msgpack.Ext(5, b"\x00")})
    assert "$.id" in failure_of(MSGPACK, ext_id).message
    timestamp_id = mp_map(
        (mp_str(b"type"), mp_str(b"ping")), (mp_str(b"id"), b"\xd6\xff" + b"\xff" * 4)
    )
    assert "$.id" in failure_of(MSGPACK, timestamp_id).message


# --- batch frames (docs/protocol.md §1: a server frame holds one message or an array of them) -----


def sample_messages(count: int, codec: Codec) -> list[ServerMessage]:
    """``count`` server messages of assorted types, each distinguishable by its position."""
    kinds: list[ServerMessage] = [
        Pong(id=0),
        Publication(
            channel="news",
            offset=1,
            epoch="e",
            data=msgspec.Raw(frame_of(codec, {"n": 1, "s": "é"})),
            from_=None,
        ),
        Join(channel="room", client="c", user=None),
        Gap(channel="news", from_offset=1, to_offset=2),
        Error(id=None, code="bad_request", message="bad"),
        Published(id=0, channel="news", offset=1, epoch="e"),
        Disconnect(code=1001, reason="bye", reconnect=True, retry_after=0.5),
    ]
    if count > 100:
        return [Pong(id=i) for i in range(count)]
    messages: list[ServerMessage] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if isinstance(kind, Pong | Error | Published):
            kind = msgspec.structs.replace(kind, id=i)
        elif isinstance(kind, Publication | Gap):
            kind = msgspec.structs.replace(kind, channel=f"news-{i}")
        messages.append(kind)
    return messages


BATCH_SIZES = [1, 2, 15, 16, 17, 65535, 65536, 70000]


@pytest.mark.parametrize("codec", BOTH)
@pytest.mark.parametrize("count", BATCH_SIZES)
def test_batch_decodes_to_the_messages_in_order(codec: Codec, count: int) -> None:
    messages = sample_messages(count, codec)
    frames = [codec.encode(message) for message in messages]
    frame = codec.batch(frames)
    assert codec.decode_server(frame) == messages
    if count == 1:
        # A batch of one is sent as the message itself.
        assert frame == frames[0]


@pytest.mark.parametrize(
    ("count", "header"),
    [
        (2, b"\x92"),
        (15, b"\x9f"),
        (16, b"\xdc\x00\x10"),
        (17, b"\xdc\x00\x11"),
        (65535, b"\xdc\xff\xff"),
        (65536, b"\xdd\x00\x01\x00\x00"),
        (70000, b"\xdd" + struct.pack(">I", 70000)),
    ],
)
def test_msgpack_batch_header(count: int, header: bytes) -> None:
    frames = [MSGPACK.encode(Pong(id=i)) for i in range(count)]
    frame = MSGPACK.batch(frames)
    assert frame == header + b"".join(frames)
    # An independent decoder reads the same array.
    assert msgspec.msgpack.decode(frame) == [{"type": "pong", "id": i} for i in range(count)]


def test_json_batch_is_a_json_array() -> None:
    frames = [JSON.encode(Pong(id=1)), JSON.encode(Join(channel="room", client="c"))]
    assert json.loads(JSON.batch(frames)) == [
        {"type": "pong", "id": 1},
        {"type": "join", "channel": "room", "client": "c", "user": None},
    ]


@pytest.mark.parametrize("codec", BOTH)
def test_single_message_decodes_to_a_one_element_list(codec: Codec) -> None:
    assert codec.decode_server(codec.encode(Pong(id=3))) == [Pong(id=3)]


@pytest.mark.parametrize("codec", BOTH)
def test_decode_server_raises_on_bad_input(codec: Codec) -> None:
    with pytest.raises(msgspec.DecodeError):
        codec.decode_server(b"\xc1{")
    with pytest.raises(msgspec.ValidationError):
        codec.decode_server(frame_of(codec, [{"type": "pong", "id": 1}, {"type": "ping", "id": 2}]))


# --- subprotocol negotiation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], JSON),
        (["broker.v1.json"], JSON),
        (["broker.v1.msgpack"], MSGPACK),
        (["chat", "broker.v1.msgpack"], MSGPACK),
        (["broker.v1.msgpack", "broker.v1.json"], MSGPACK),
        (["broker.v1.json", "broker.v1.msgpack"], JSON),
        (["broker.v2.json", "x", "broker.v1.json"], JSON),
        (["chat"], None),
        (["chat", "superchat", "broker.v2.msgpack", "BROKER.V1.JSON", ""], None),
    ],
)
def test_codec_for_subprotocols(offered: list[str], expected: Codec | None) -> None:
    assert codec_for_subprotocols(offered) is expected
    assert codec_for_subprotocols(tuple(offered)) is expected


def test_codecs_match_their_encodings() -> None:
    assert JSON.encoding is Encoding.JSON
    assert MSGPACK.encoding is Encoding.MSGPACK
    assert Encoding.JSON.subprotocol == "broker.v1.json"
    assert Encoding.MSGPACK.subprotocol == "broker.v1.msgpack"
    assert CODECS == {Encoding.JSON: JSON, Encoding.MSGPACK: MSGPACK}


# --- payload conversion ---------------------------------------------------------------------------


def test_convert_payload_within_one_encoding_is_the_same_object() -> None:
    data = msgspec.Raw(b'{"a" :1}')
    before = (JSON.payloads_converted, MSGPACK.payloads_converted)
    assert convert_payload(data, JSON, JSON) is data
    assert (JSON.payloads_converted, MSGPACK.payloads_converted) == before


def test_convert_payload_between_encodings() -> None:
    value = {"text": "héllo", "n": [1, -2, 3.25, None, True], "big": 2**64 - 1}
    as_json = msgspec.Raw(json.dumps(value).encode())
    as_msgpack = convert_payload(as_json, JSON, MSGPACK)
    assert msgspec.msgpack.decode(bytes(as_msgpack)) == value
    assert json.loads(bytes(convert_payload(as_msgpack, MSGPACK, JSON))) == value


def test_convert_payload_raises_on_bad_data() -> None:
    with pytest.raises(msgspec.DecodeError):
        convert_payload(msgspec.Raw(b"{"), JSON, MSGPACK)
