"""The message types against the field names and type tags of docs/protocol.md §1.

Client frames are written out literally, as a client in another language would send them; server
frames are decoded with the standard library (JSON) or untyped msgspec (MessagePack), so these
tests check the bytes on the wire rather than msgspec's view of its own Structs.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec
import pytest

from protocol import (
    JSON,
    MSGPACK,
    ClientInfo,
    ClientMessage,
    Codec,
    DecodeFailure,
    Disconnect,
    Error,
    Gap,
    History,
    HistoryResult,
    Join,
    Leave,
    Ping,
    Pong,
    Presence,
    PresenceResult,
    Publication,
    Publish,
    Published,
    Refreshed,
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)

CODECS = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]

#: docs/protocol.md §1, "Client to server": type tag -> field names.
CLIENT_CONTRACT: dict[str, set[str]] = {
    "subscribe": {"id", "channel", "since", "token"},
    "unsubscribe": {"id", "channel"},
    "publish": {"id", "channel", "data", "idempotency_key"},
    "history": {"id", "channel", "since", "limit"},
    "presence": {"id", "channel"},
    "ping": {"id"},
    "connect": {"id", "token"},
    "refresh": {"id", "token"},
}

#: docs/protocol.md §1, "Server to client": type tag -> field names.
SERVER_CONTRACT: dict[str, set[str]] = {
    "welcome": {
        "client",
        "version",
        "heartbeat",
        "max_message_bytes",
        "user",
        "expires_at",
        "subs",
    },
    "subscribed": {"id", "channel", "epoch", "offset", "recovered", "publications"},
    "unsubscribed": {"id", "channel"},
    "published": {"id", "channel", "offset", "epoch"},
    "history": {"id", "channel", "epoch", "offset", "publications"},
    "presence": {"id", "channel", "clients"},
    "pong": {"id"},
    "refreshed": {"id", "expires_at"},
    "message": {"channel", "offset", "epoch", "data", "from"},
    "join": {"channel", "client", "user"},
    "leave": {"channel", "client", "user"},
    "gap": {"channel", "from_offset", "to_offset"},
    "disconnect": {"code", "reason", "reconnect", "retry_after"},
    "error": {"id", "code", "message"},
}


def client_frame(codec: Codec, text: str) -> bytes:
    """``text`` (a literal JSON message) as a client of ``codec``'s encoding would send it."""
    if codec is JSON:
        return text.encode()
    return msgspec.msgpack.encode(json.loads(text))


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def wire_value(codec: Codec, frame: bytes) -> Any:
    """A server frame as plain values, decoded without the protocol's types."""
    if codec is JSON:
        return json.loads(frame.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    return msgspec.msgpack.decode(frame)


def payload(codec: Codec, value: Any) -> msgspec.Raw:
    """``value`` as a publication payload in ``codec``'s encoding, as a publisher would send it."""
    if codec is JSON:
        return msgspec.Raw(msgspec.json.encode(value))
    return msgspec.Raw(msgspec.msgpack.encode(value))


# --- the Structs carry the contract's tags and field names ---------------------------------------


def _tags_and_fields(union: Any) -> dict[str, set[str]]:
    return {
        cls.__struct_config__.tag: {f.encode_name for f in msgspec.structs.fields(cls)}
        for cls in typing.get_args(union)
    }


def test_client_union_has_the_contract_types_and_field_names() -> None:
    assert _tags_and_fields(ClientMessage) == CLIENT_CONTRACT


def test_server_union_has_the_contract_types_and_field_names() -> None:
    assert _tags_and_fields(ServerMessage) == SERVER_CONTRACT


def test_the_tag_field_is_type() -> None:
    for cls in (*typing.get_args(ClientMessage), *typing.get_args(ServerMessage)):
        assert cls.__struct_config__.tag_field == "type", cls


def test_messages_are_frozen() -> None:
    ping = Ping(id=1)
    field = "id"  # through setattr: mypy does not know that msgspec subclasses stay frozen
    with pytest.raises(AttributeError):
        setattr(ping, field, 2)
    assert ping == Ping(id=1)


# --- client messages decode from literal frames ---------------------------------------------------

CLIENT_FRAMES: list[tuple[str, ClientMessage]] = [
    (
        '{"type": "subscribe", "id": 1, "channel": "chat:room-1"}',
        Subscribe(id=1, channel="chat:room-1"),
    ),
    (
        '{"type": "subscribe", "id": 2, "channel": "news", "since": {"offset": 41, "epoch": "e7"}}',
        Subscribe(id=2, channel="news", since=StreamPosition(offset=41, epoch="e7")),
    ),
    (
        '{"type": "subscribe", "id": 3, "channel": "news", "since": null}',
        Subscribe(id=3, channel="news"),
    ),
    (
        '{"type": "unsubscribe", "id": 4, "channel": "user@example.com/inbox"}',
        Unsubscribe(id=4, channel="user@example.com/inbox"),
    ),
    (
        '{"type": "history", "id": 5, "channel": "news"}',
        History(id=5, channel="news"),
    ),
    (
        '{"type": "history", "id": 6, "channel": "news",'
        ' "since": {"offset": 0, "epoch": "e1"}, "limit": 100}',
        History(id=6, channel="news", since=StreamPosition(offset=0, epoch="e1"), limit=100),
    ),
    (
        '{"type": "presence", "id": 7, "channel": "room.42"}',
        Presence(id=7, channel="room.42"),
    ),
    ('{"type": "ping", "id": 8}', Ping(id=8)),
    ('{"type": "ping", "id": 0}', Ping(id=0)),
    ('{"type": "ping", "id": 9223372036854775807}', Ping(id=2**63 - 1)),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("text", "expected"), CLIENT_FRAMES)
def test_client_message_decodes(codec: Codec, text: str, expected: ClientMessage) -> None:
    assert codec.decode_client(client_frame(codec, text)) == expected


PUBLISH_FRAMES: list[tuple[str, int | None, Any]] = [
    (
        '{"type": "publish", "id": 9, "channel": "chat:lobby",'
        ' "data": {"text": "hi", "n": [1, 2]}}',
        9,
        {"text": "hi", "n": [1, 2]},
    ),
    (
        '{"type": "publish", "channel": "chat:lobby", "data": "fire and forget"}',
        None,
        "fire and forget",
    ),
    ('{"type": "publish", "channel": "chat:lobby", "data": null, "id": 10}', 10, None),
    ('{"data": [1.5, true, "é"], "channel": "c", "type": "publish"}', None, [1.5, True, "é"]),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("text", "request_id", "value"), PUBLISH_FRAMES)
def test_publish_decodes_with_its_payload_in_the_frame_encoding(
    codec: Codec, text: str, request_id: int | None, value: Any
) -> None:
    message = codec.decode_client(client_frame(codec, text))
    assert isinstance(message, Publish)
    assert message.id == request_id
    assert message.channel in {"chat:lobby", "c"}
    assert codec.decode_payload(message.data) == value


def test_publish_data_is_the_exact_bytes_the_client_sent() -> None:
    data = b'{ "z" : 1,\n  "a" : [ 1.50, "\\u00e9" ] }'
    message = JSON.decode_client(b'{"type":"publish","channel":"c","data":' + data + b"}")
    assert isinstance(message, Publish)
    assert bytes(message.data) == data


@pytest.mark.parametrize("codec", CODECS)
def test_unknown_fields_are_ignored(codec: Codec) -> None:
    # Documented choice (protocol/messages.py): a newer client may send fields this broker does
    # not know yet; they are skipped, whatever their value, at any depth.
    text = (
        '{"type": "subscribe", "id": 11, "channel": "news", "priority": "high",'
        ' "since": {"offset": 3, "epoch": "e", "hint": [1, {"x": null}]}, "meta": {"a": [1]}}'
    )
    expected = Subscribe(id=11, channel="news", since=StreamPosition(offset=3, epoch="e"))
    assert codec.decode_client(client_frame(codec, text)) == expected


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("tag", ["teleport", "Ping", "pong", "message", "welcome", "error", ""])
def test_unknown_or_server_only_type_is_rejected(codec: Codec, tag: str) -> None:
    frame = client_frame(codec, json.dumps({"type": tag, "id": 12, "channel": "news"}))
    failure = codec.decode_client(frame)
    assert isinstance(failure, DecodeFailure)
    assert failure.id == 12
    assert "$.type" in failure.message


@pytest.mark.parametrize("codec", CODECS)
def test_missing_type_is_rejected(codec: Codec) -> None:
    failure = codec.decode_client(client_frame(codec, '{"id": 13}'))
    assert isinstance(failure, DecodeFailure)
    assert failure.id == 13
    assert "type" in failure.message


@pytest.mark.parametrize("codec", CODECS)
def test_server_decoder_rejects_unknown_type(codec: Codec) -> None:
    with pytest.raises(msgspec.ValidationError, match="type"):
        codec.decode_server(client_frame(codec, '{"type": "teleport", "id": 1}'))


# --- server messages encode with the contract's names ------------------------------------------


def server_examples(codec: Codec) -> list[tuple[ServerMessage, dict[str, Any]]]:
    """Every server message type with the wire map it must encode to."""
    data = {"text": "hi", "n": [1, 2.5, None]}
    publication = Publication(
        channel="chat:lobby", offset=7, epoch="e1", data=payload(codec, data), from_="c-1"
    )
    publication_wire = {
        "type": "message",
        "channel": "chat:lobby",
        "offset": 7,
        "epoch": "e1",
        "data": data,
        "from": "c-1",
    }
    return [
        (
            Welcome(client="c-1", heartbeat=25.0, max_message_bytes=65536),
            {
                "type": "welcome",
                "client": "c-1",
                "version": "1",
                "heartbeat": 25.0,
                "max_message_bytes": 65536,
                "user": None,
                "expires_at": None,
                "subs": [],
            },
        ),
        (
            Welcome(
                client="c-2",
                heartbeat=25.0,
                max_message_bytes=65536,
                user="42",
                expires_at=1700000000.0,
            ),
            {
                "type": "welcome",
                "client": "c-2",
                "version": "1",
                "heartbeat": 25.0,
                "max_message_bytes": 65536,
                "user": "42",
                "expires_at": 1700000000.0,
                "subs": [],
            },
        ),
        (Refreshed(id=9, expires_at=None), {"type": "refreshed", "id": 9, "expires_at": None}),
        (
            Subscribed(
                id=1,
                channel="chat:lobby",
                epoch="e1",
                offset=7,
                recovered=True,
                publications=[publication],
            ),
            {
                "type": "subscribed",
                "id": 1,
                "channel": "chat:lobby",
                "epoch": "e1",
                "offset": 7,
                "recovered": True,
                "publications": [publication_wire],
            },
        ),
        (
            Subscribed(id=2, channel="news", epoch="e2", offset=0),
            {
                "type": "subscribed",
                "id": 2,
                "channel": "news",
                "epoch": "e2",
                "offset": 0,
                "recovered": False,
                "publications": [],
            },
        ),
        (
            Unsubscribed(id=3, channel="news"),
            {"type": "unsubscribed", "id": 3, "channel": "news"},
        ),
        (
            Published(id=4, channel="news", offset=8, epoch="e2"),
            {"type": "published", "id": 4, "channel": "news", "offset": 8, "epoch": "e2"},
        ),
        (
            HistoryResult(
                id=5, channel="chat:lobby", epoch="e1", offset=7, publications=[publication]
            ),
            {
                "type": "history",
                "id": 5,
                "channel": "chat:lobby",
                "epoch": "e1",
                "offset": 7,
                "publications": [publication_wire],
            },
        ),
        (
            PresenceResult(
                id=6,
                channel="room",
                clients=[
                    ClientInfo(client="c-1", user="alice", info={"name": "Alice"}),
                    ClientInfo(client="c-2"),
                ],
            ),
            {
                "type": "presence",
                "id": 6,
                "channel": "room",
                "clients": [
                    {"client": "c-1", "user": "alice", "info": {"name": "Alice"}},
                    {"client": "c-2", "user": None, "info": None},
                ],
            },
        ),
        (Pong(id=7), {"type": "pong", "id": 7}),
        (publication, publication_wire),
        (
            Publication(channel="news", offset=9, epoch="e2", data=payload(codec, 42)),
            {
                "type": "message",
                "channel": "news",
                "offset": 9,
                "epoch": "e2",
                "data": 42,
                "from": None,
            },
        ),
        (
            Join(channel="room", client="c-3", user="bob"),
            {"type": "join", "channel": "room", "client": "c-3", "user": "bob"},
        ),
        (
            Leave(channel="room", client="c-4"),
            {"type": "leave", "channel": "room", "client": "c-4", "user": None},
        ),
        (
            Gap(channel="news", from_offset=10, to_offset=12),
            {"type": "gap", "channel": "news", "from_offset": 10, "to_offset": 12},
        ),
        (
            Disconnect(code=1001, reason="server shutting down", reconnect=True, retry_after=2.5),
            {
                "type": "disconnect",
                "code": 1001,
                "reason": "server shutting down",
                "reconnect": True,
                "retry_after": 2.5,
            },
        ),
        (
            Disconnect(code=4008, reason="slow consumer", reconnect=True),
            {
                "type": "disconnect",
                "code": 4008,
                "reason": "slow consumer",
                "reconnect": True,
                "retry_after": 0.0,
            },
        ),
        (
            Error(id=8, code="not_subscribed", message="not subscribed to news"),
            {
                "type": "error",
                "id": 8,
                "code": "not_subscribed",
                "message": "not subscribed to news",
            },
        ),
        (
            Error(id=None, code="bad_request", message="undecodable frame"),
            {"type": "error", "id": None, "code": "bad_request", "message": "undecodable frame"},
        ),
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_every_server_type_has_an_example(codec: Codec) -> None:
    tags = {message.__struct_config__.tag for message, _ in server_examples(codec)}
    assert tags == set(SERVER_CONTRACT)


@pytest.mark.parametrize("codec", CODECS)
def test_server_message_encodes_with_contract_names(codec: Codec) -> None:
    for message, expected in server_examples(codec):
        assert wire_value(codec, codec.encode(message)) == expected


@pytest.mark.parametrize("codec", CODECS)
def test_server_message_encodes_exact_keys(codec: Codec) -> None:
    # Nullable and defaulted fields are present (null / default), never omitted.
    for message, _ in server_examples(codec):
        wire = wire_value(codec, codec.encode(message))
        assert set(wire) == {"type"} | SERVER_CONTRACT[wire["type"]]


def test_json_frames_are_text() -> None:
    frame = JSON.encode(Join(channel="room", client="c-é", user="ünïcode"))
    assert json.loads(frame.decode("utf-8"))["user"] == "ünïcode"
    assert JSON.text
    assert not MSGPACK.text


@pytest.mark.parametrize("codec", CODECS)
def test_server_messages_decode_back(codec: Codec) -> None:
    for message, _ in server_examples(codec):
        assert codec.decode_server(codec.encode(message)) == [message]
