"""Encoded frames as the broker queues them, and publications encoded once per encoding.

A publication reaches every subscriber of a channel; ``PublicationFrames`` makes sure that its
``message`` frame is encoded at most once per encoding, and its payload converted at most once per
encoding pair, however many subscribers there are. Every subscriber's outbox gets the same
``Frame`` object.
"""

from __future__ import annotations

import time

import msgspec

from protocol.codec import CODECS, Codec, Encoding, convert_payload
from protocol.messages import Publication


class Frame(msgspec.Struct, gc=False):
    """Bytes ready for the socket, with the publication they carry when they carry one.

    ``channel`` and ``offset`` let an outbox that drops frames (policy ``drop_oldest``) tell the
    client which publications it skipped; control frames have ``channel`` None. One ``Frame`` is
    shared by every subscriber of an encoding, so nothing but ``wire`` is ever changed after it
    is made.

    A msgspec Struct, not a dataclass: made in C, without a Python ``__init__`` (one for every
    publication and every reply). Untracked by the garbage collector: it holds bytes, a string
    and numbers only.
    """

    data: bytes
    channel: str | None = None
    offset: int = 0
    #: A binary frame on the plain endpoints (``/ws/data`` echoes bytes); ``/v1/ws`` frames take
    #: their kind from the connection's encoding instead.
    binary: bool = False
    #: The whole WebSocket frame (RFC 6455 header and payload), made by the transport the first
    #: time it is written and reused for every other subscriber.
    wire: bytes | None = None
    #: For a publication's ``message`` frame: when the broker process took the publication in
    #: (``time.monotonic()``), for the delivery latency metric; 0 for every other frame.
    accepted: float = 0.0

    @property
    def size(self) -> int:
        return len(self.data)


class PublicationFrames:
    """One publication and its frames, built lazily, at most once per encoding."""

    __slots__ = (
        "_frames",
        "_payloads",
        "accepted",
        "channel",
        "epoch",
        "offset",
        "publisher",
        "source",
    )

    def __init__(
        self,
        channel: str,
        offset: int,
        epoch: str,
        publisher: str | None,
        data: msgspec.Raw,
        source: Codec,
        accepted: float | None = None,
    ) -> None:
        #: When this process took the publication in (monotonic clock): now unless given. Made
        #: where a publication is accepted (in memory) or arrives from the backplane (Redis).
        self.accepted = time.monotonic() if accepted is None else accepted
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.publisher = publisher
        self.source = source
        self._payloads: dict[Encoding, msgspec.Raw] = {source.encoding: data}
        self._frames: dict[Encoding, Frame] = {}

    def add_payload(self, encoding: Encoding, data: msgspec.Raw) -> None:
        """Record an already converted payload (the reader converts MessagePack to JSON early)."""
        self._payloads[encoding] = data

    def payload(self, encoding: Encoding) -> msgspec.Raw:
        """The payload in ``encoding``, converted on first use."""
        data = self._payloads.get(encoding)
        if data is None:
            data = convert_payload(
                self._payloads[self.source.encoding], self.source, CODECS[encoding]
            )
            self._payloads[encoding] = data
        return data

    def message(self, encoding: Encoding) -> Publication:
        """The ``message`` Struct with its payload in ``encoding``."""
        return Publication(
            channel=self.channel,
            offset=self.offset,
            epoch=self.epoch,
            data=self.payload(encoding),
            from_=self.publisher,
        )

    def frame(self, encoding: Encoding) -> Frame:
        """The ``message`` frame in ``encoding``, encoded on first use and shared afterwards."""
        frame = self._frames.get(encoding)
        if frame is None:
            data = CODECS[encoding].encode(self.message(encoding))
            # Positional: keyword arguments to a class cost a dictionary per call.
            frame = Frame(data, self.channel, self.offset, False, None, self.accepted)
            self._frames[encoding] = frame
        return frame
