"""JSON and MessagePack codecs, built once per process and reused (docs/protocol.md §1).

``Codec.decode_client`` never raises: a frame that cannot be decoded or validated comes back as a
``DecodeFailure`` value naming the problem (and the request ``id`` when one could be read), which
the connection turns into an ``error`` reply with code ``bad_request``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from protocol.channels import explain_channel_errors
from protocol.messages import ClientMessage, Message, RequestId, ServerMessage

_Decoder = msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]


class Encoding(enum.Enum):
    """A wire encoding, named by the WebSocket subprotocol that selects it."""

    JSON = "broker.v1.json"
    MSGPACK = "broker.v1.msgpack"

    #: By identity, as equality is: ``Enum.__hash__`` is a Python function on 3.11 (it hashes the
    #: name), and encodings key the dicts a publication is looked up in several times.
    __hash__ = object.__hash__

    @property
    def subprotocol(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """A client frame that is not a valid message: answered with ``error`` ``bad_request``."""

    id: int | None
    message: str


class _RequestIdProbe(msgspec.Struct):
    """Reads only ``id`` out of an invalid message, so the error reply can name the request.

    An ``id`` out of range (docs/protocol.md: 0 to 2^63-1) is not read: the reply names none rather
    than echo a 4,000-digit number back."""

    id: RequestId | None = None


# Errors that decoding hostile input can raise besides msgspec's own (docs/stack-findings.md):
# deeply nested input overflows the recursion limit, and MessagePack str may hold invalid UTF-8.
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError)


class Codec:
    """Encoder and decoders for one encoding; one instance per encoding per process."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        #: Whether this encoding travels in text frames (JSON) or binary frames (MessagePack).
        self.text = encoding is Encoding.JSON
        #: How many server messages and publication payloads this codec has encoded or converted;
        #: tests read them to prove a publication is encoded once per encoding, not per subscriber.
        self.messages_encoded = 0
        self.payloads_converted = 0
        self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder
        self._client: _Decoder
        self._server: _Decoder
        self._probe: _Decoder
        self._any: _Decoder
        if encoding is Encoding.JSON:
            self._encoder = msgspec.json.Encoder()
            self._client = msgspec.json.Decoder(ClientMessage)
            self._server = msgspec.json.Decoder(ServerMessage | list[ServerMessage])
            self._probe = msgspec.json.Decoder(_RequestIdProbe)
            self._any = msgspec.json.Decoder()
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._client = msgspec.msgpack.Decoder(ClientMessage)
            self._server = msgspec.msgpack.Decoder(ServerMessage | list[ServerMessage])
            self._probe = msgspec.msgpack.Decoder(_RequestIdProbe)
            self._any = msgspec.msgpack.Decoder()

    # --- messages -------------------------------------------------------------------------------

    def encode(self, message: Message) -> bytes:
        """The frame for one message."""
        self.messages_encoded += 1
        return self._encoder.encode(message)

    def encode_client(self, message: ClientMessage) -> bytes:
        """The frame for one client message (used by the Python client and tests)."""
        return self._encoder.encode(message)

    def decode_client(self, frame: bytes | str) -> ClientMessage | DecodeFailure:
        """One client message, or a ``DecodeFailure`` saying what is wrong with the frame.

        A text frame may be given to the JSON codec as it was read (``str``): msgspec decodes
        JSON from it as from its UTF-8 bytes, with the same messages on failure, and no copy to
        ``bytes`` is made. (MessagePack frames are binary: always ``bytes``.)"""
        try:
            return self._client.decode(frame)  # type: ignore[no-any-return,arg-type]
        except msgspec.ValidationError as exc:
            return DecodeFailure(self._request_id(frame), explain_channel_errors(str(exc)))
        except _DECODE_ERRORS as exc:
            if isinstance(exc, RecursionError):
                return DecodeFailure(None, "message is nested too deeply")
            # The id may still be readable, e.g. when only another str holds invalid UTF-8.
            return DecodeFailure(self._request_id(frame), f"undecodable frame: {exc}")

    def decode_server(self, frame: bytes) -> list[ServerMessage]:
        """The messages of one server frame: a single message or a batch. Raises on bad input."""
        decoded = self._server.decode(frame)
        return decoded if isinstance(decoded, list) else [decoded]

    def _request_id(self, frame: bytes | str) -> int | None:
        try:
            probe: _RequestIdProbe = self._probe.decode(frame)  # type: ignore[arg-type]
        except (msgspec.ValidationError, *_DECODE_ERRORS):
            return None
        return probe.id

    def batch(self, frames: Sequence[bytes]) -> bytes:
        """One frame holding ``frames`` as an array, without decoding or re-encoding them."""
        if len(frames) == 1:
            return frames[0]
        if self.text:
            return b"[" + b",".join(frames) + b"]"
        return _msgpack_array_header(len(frames)) + b"".join(frames)

    # --- publication payloads -------------------------------------------------------------------

    def decode_payload(self, data: msgspec.Raw) -> Any:
        """A payload in this encoding as Python values."""
        return self._any.decode(data)

    def encode_payload(self, value: Any) -> msgspec.Raw:
        """Python values as a payload in this encoding."""
        self.payloads_converted += 1
        return msgspec.Raw(self._encoder.encode(value))


def _msgpack_array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 2**16:
        return b"\xdc" + struct.pack(">H", length)
    return b"\xdd" + struct.pack(">I", length)


CODECS: Final = {encoding: Codec(encoding) for encoding in Encoding}
JSON: Final = CODECS[Encoding.JSON]
MSGPACK: Final = CODECS[Encoding.MSGPACK]
#: The codecs by subprotocol name (looked up on every handshake).
_BY_SUBPROTOCOL: Final = {encoding.subprotocol: CODECS[encoding] for encoding in Encoding}


def codec_for_subprotocols(offered: Sequence[str]) -> Codec | None:
    """The codec a client asked for by its subprotocols; JSON when it offered none.

    ``None`` when it offered only subprotocols the broker does not speak: the handshake is refused.
    """
    if not offered:
        return JSON
    for name in offered:
        codec = _BY_SUBPROTOCOL.get(name)
        if codec is not None:
            return codec
    return None


def convert_payload(data: msgspec.Raw, source: Codec, target: Codec) -> msgspec.Raw:
    """``data`` re-encoded from ``source``'s encoding into ``target``'s. Raises if impossible."""
    if source is target:
        return data
    return target.encode_payload(source.decode_payload(data))
