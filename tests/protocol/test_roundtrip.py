"""Property tests: every valid message survives the wire, and no input makes decoding raise."""

from __future__ import annotations

import string
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    is_valid_channel,
)

BOTH = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]
CLIENT_TYPES = (Subscribe, Unsubscribe, Publish, History, Presence, Ping)

ALPHABET = string.ascii_letters + string.digits + "_-:.@/"

# Moderate example counts: the whole file runs in a few seconds.
moderate = settings(max_examples=100, deadline=None)

channels = st.text(alphabet=ALPHABET, min_size=1, max_size=255)
request_ids = st.integers(min_value=0, max_value=2**63 - 1)
offsets = st.integers(min_value=0, max_value=2**63 - 1)
limits = st.integers(min_value=0, max_value=2**31 - 1)
positions = st.builds(StreamPosition, offset=offsets, epoch=st.text())
finite_floats = st.floats(allow_nan=False, allow_infinity=False)

#: Anything JSON can carry that MessagePack can carry too (MessagePack ints are 64-bit).
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | finite_floats
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=10,
)


def encode_value(codec: Codec, value: Any) -> msgspec.Raw:
    """``value`` as a payload in ``codec``'s encoding, the way a client encodes it."""
    if codec is JSON:
        return msgspec.Raw(msgspec.json.encode(value))
    return msgspec.Raw(msgspec.msgpack.encode(value))


def client_messages(codec: Codec) -> st.SearchStrategy[tuple[ClientMessage, Any]]:
    """A valid client message and, for ``publish``, the value its data encodes (else None)."""
    publishes = st.builds(
        lambda channel, request_id, value: (
            Publish(channel=channel, id=request_id, data=encode_value(codec, value)),
            value,
        ),
        channels,
        st.none() | request_ids,
        json_values,
    )
    others: st.SearchStrategy[ClientMessage] = st.one_of(
        st.builds(Subscribe, id=request_ids, channel=channels, since=st.none() | positions),
        st.builds(Unsubscribe, id=request_ids, channel=channels),
        st.builds(
            History,
            id=request_ids,
            channel=channels,
            since=st.none() | positions,
            limit=st.none() | limits,
        ),
        st.builds(Presence, id=request_ids, channel=channels),
        st.builds(Ping, id=request_ids),
    )
    return publishes | others.map(lambda message: (message, None))


def without_data(message: ClientMessage) -> ClientMessage:
    if isinstance(message, Publish):
        return msgspec.structs.replace(message, data=msgspec.Raw(b"null"))
    return message


@pytest.mark.parametrize("codec", BOTH)
@moderate
@given(data=st.data())
def test_client_message_roundtrip(codec: Codec, data: st.DataObject) -> None:
    message, value = data.draw(client_messages(codec))
    decoded = codec.decode_client(codec.encode_client(message))
    assert not isinstance(decoded, DecodeFailure), decoded
    assert without_data(decoded) == without_data(message)
    if isinstance(message, Publish):
        assert isinstance(decoded, Publish)
        assert codec.decode_payload(decoded.data) == value


def server_messages(codec: Codec) -> st.SearchStrategy[ServerMessage]:
    # Short names: channel validation is a client-side concern, covered above.
    channels = st.text(alphabet=ALPHABET, min_size=1, max_size=20)
    small_ints = st.integers(min_value=0, max_value=2**63 - 1)
    texts = st.text(max_size=20)
    seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
    publications = st.builds(
        Publication,
        channel=channels,
        offset=small_ints,
        epoch=texts,
        data=json_values.map(lambda value: encode_value(codec, value)),
        from_=st.none() | texts,
    )
    return st.one_of(
        st.builds(
            Welcome,
            client=texts,
            heartbeat=seconds,
            max_message_bytes=small_ints,
            version=st.just("1"),
        ),
        st.builds(
            Subscribed,
            id=small_ints,
            channel=channels,
            epoch=texts,
            offset=small_ints,
            recovered=st.booleans(),
            publications=st.lists(publications, max_size=2),
        ),
        st.builds(Unsubscribed, id=small_ints, channel=channels),
        st.builds(Published, id=small_ints, channel=channels, offset=small_ints, epoch=texts),
        st.builds(
            HistoryResult,
            id=small_ints,
            channel=channels,
            epoch=texts,
            offset=small_ints,
            publications=st.lists(publications, max_size=2),
        ),
        st.builds(
            PresenceResult,
            id=small_ints,
            channel=channels,
            clients=st.lists(
                st.builds(ClientInfo, client=texts, user=st.none() | texts), max_size=3
            ),
        ),
        st.builds(Pong, id=small_ints),
        publications,
        st.builds(Join, channel=channels, client=texts, user=st.none() | texts),
        st.builds(Leave, channel=channels, client=texts, user=st.none() | texts),
        st.builds(Gap, channel=channels, from_offset=small_ints, to_offset=small_ints),
        st.builds(
            Disconnect,
            code=st.integers(min_value=1000, max_value=4999),
            reason=texts,
            reconnect=st.booleans(),
            retry_after=seconds,
        ),
        st.builds(Error, id=st.none() | small_ints, code=texts, message=texts),
    )


@pytest.mark.parametrize("codec", BOTH)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_server_batch_roundtrip(codec: Codec, data: st.DataObject) -> None:
    messages = data.draw(st.lists(server_messages(codec), min_size=1, max_size=6))
    frame = codec.batch([codec.encode(message) for message in messages])
    assert codec.decode_server(frame) == messages


@pytest.mark.parametrize("codec", BOTH)
@settings(max_examples=500, deadline=None)
@given(frame=st.binary(max_size=200))
def test_decode_client_never_raises_on_bytes(codec: Codec, frame: bytes) -> None:
    result = codec.decode_client(frame)
    assert isinstance(result, (*CLIENT_TYPES, DecodeFailure))


#: Maps that look like messages: real field names and type tags mixed with junk values.
near_messages = st.dictionaries(
    st.sampled_from(["type", "id", "channel", "data", "since", "limit", "offset", "epoch", "x"]),
    st.sampled_from(["subscribe", "publish", "history", "ping", "pong", "news"])
    | json_values
    | st.dictionaries(st.sampled_from(["offset", "epoch"]), json_values, max_size=2),
    max_size=6,
)


@pytest.mark.parametrize("codec", BOTH)
@moderate
@given(value=near_messages | json_values)
def test_decode_client_never_raises_on_near_messages(codec: Codec, value: Any) -> None:
    frame = bytes(encode_value(codec, value))
    result = codec.decode_client(frame)
    assert isinstance(result, (*CLIENT_TYPES, DecodeFailure))
    if isinstance(result, DecodeFailure):
        assert result.message
        request_id = value.get("id") if isinstance(value, dict) else None
        if result.id is not None:
            assert result.id == request_id


def reference_is_valid_channel(name: str) -> bool:
    """docs/protocol.md §1 read literally: 1 to 255 bytes of ``A-Z a-z 0-9 _ - : . @ /``, then
    optionally ``#`` and user ids of the same characters and ``,``."""
    base, _, users = name.partition("#")
    return (
        1 <= len(name.encode("utf-8")) <= 255
        and bool(base)
        and all(char in ALPHABET for char in base)
        and all(char in ALPHABET + "," for char in users)
    )


channel_candidates = (
    st.text(max_size=300)
    | st.text(alphabet=ALPHABET, max_size=300)
    | st.text(alphabet=ALPHABET + " \n\r\t\x00#,é\u212a", max_size=260)
    | st.builds(
        lambda name, suffix: name + suffix,
        st.text(alphabet=ALPHABET, min_size=1, max_size=255),
        st.sampled_from(["", "\n", " ", "é"]),
    )
)


@moderate
@given(name=channel_candidates)
def test_is_valid_channel_matches_the_rule(name: str) -> None:
    assert is_valid_channel(name) is reference_is_valid_channel(name)
