"""The writer side of a Centrifugo connection: what the hub sends, rendered as Centrifugo.

To the hub a Centrifugo client is a subscriber of the JSON encoding like any ``/v1/ws`` JSON
client: same outbox bounds, slow-consumer policy, recovery and fan-out. Its connection renders,
just before writing, every frame in the broker's own JSON form (``{"type": ...``) as a Centrifugo
reply or push (``protocol.centrifugo.render``); frames the Centrifugo reader made itself pass
as they are. Several messages leave in one text frame, one a line, within the batch limits of
``/v1/ws``.

A publication frame is the same object for every JSON subscriber of the process, so its
Centrifugo rendering is cached by identity (``RenderedPublications``): a publication is
rendered once per process however many Centrifugo clients get it, and they share the rendered
``Frame`` (and its WebSocket framing) as ``/v1/ws`` clients share theirs.

Close codes stay the broker's (logs and the close frame); the ``disconnect`` push written
before the close frame carries Centrifugo's code, reason and reconnect advice, which the SDKs act
on. A ``gap`` becomes a close with 3010 "insufficient state", so that the SDK reconnects and
recovers.

While the connect reply waits for the answers to the server-side subscribes
(``RequestBook.connect``), what else is rendered is held back and follows it: the SDK learns of
a server-side channel from the connect reply before any of its publications. At most
``_MAX_HELD`` messages are held; beyond that the client is closed with 3010 and recovers.
"""

from __future__ import annotations

from typing import Final

from starlette.websockets import WebSocket

from broker.connection import CloseRequest, Connection
from broker.flusher import FlushScheduler
from broker.hub import Hub
from broker.logs import get_logger
from broker.settings import Settings
from protocol import JSON, Frame, namespace_of
from protocol import messages as ours
from protocol.centrifugo.codes import INSUFFICIENT_STATE, DisconnectCode
from protocol.centrifugo.framing import encode_reply
from protocol.centrifugo.render import (
    InsufficientState,
    RequestBook,
    ServerSubscribed,
    render,
)

log = get_logger("broker.centrifugo")

#: How a frame in the broker's own JSON form starts (msgspec writes the tag field first).
_OURS: Final = b'{"type":'
#: Messages held back behind an unfinished connect reply, at most.
_MAX_HELD: Final = 10_000


class RenderedPublications:
    """Centrifugo renderings of recent publication frames, by frame identity.

    Holds at most ``size`` entries (the oldest goes first); an entry keeps its frame alive, so an
    identity cannot be reused while it is cached."""

    __slots__ = ("_entries", "hits", "size")

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._entries: dict[int, tuple[Frame, Frame, str]] = {}
        self.hits = 0

    def get(self, frame: Frame) -> tuple[Frame, str] | None:
        """The rendering of ``frame`` and the epoch of its publication, if cached."""
        entry = self._entries.get(id(frame))
        if entry is not None and entry[0] is frame:
            self.hits += 1
            return entry[1], entry[2]
        return None

    def put(self, frame: Frame, rendered: Frame, epoch: str) -> None:
        entries = self._entries
        if len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[id(frame)] = (frame, rendered, epoch)


#: The process's one cache (the hub, and so every connection, lives on one event loop).
RENDERED = RenderedPublications()


class CentrifugoConnection(Connection):
    """A ``Connection`` whose frames are rendered as Centrifugo's protocol on their way out."""

    __slots__ = ("book", "held")

    def __init__(
        self,
        websocket: WebSocket,
        *,
        hub: Hub,
        settings: Settings,
        endpoint: str,
        flusher: FlushScheduler | None = None,
    ) -> None:
        super().__init__(
            websocket, hub=hub, settings=settings, codec=JSON, endpoint=endpoint, flusher=flusher
        )
        #: What the reader noted of its commands, for rendering the hub's answers.
        self.book = RequestBook(recoverable=self._keeps_history)
        #: Messages rendered while the connect reply is being assembled, sent after it.
        self.held: list[Frame] = []

    # --- rendering --------------------------------------------------------------------------

    def render(self, frames: list[Frame]) -> list[Frame]:
        """``frames`` in Centrifugo's form, up to the first ``gap`` (which closes with 3010);
        while a connect reply is being assembled, held back until it is done."""
        out: list[Frame] = []
        book = self.book
        held = self.held
        for frame in frames:
            target = out if book.connect is None else held
            data = frame.data
            if not data.startswith(_OURS):
                target.append(frame)
                continue
            channel = frame.channel
            if channel is not None:
                cached = RENDERED.get(frame)
                if cached is not None and book.epochs.get(channel, cached[1]) == cached[1]:
                    target.append(cached[0])
                    continue
            try:
                messages = JSON.decode_server(data)
            except Exception:
                log.exception("centrifugo.render_failed")
                continue
            for message in messages:
                pending = book.connect
                rendered = render(message, book)
                if rendered is None:
                    continue
                if isinstance(rendered, InsufficientState):
                    self._insufficient_state(rendered.channel)
                    return out
                if isinstance(rendered, ServerSubscribed):
                    target.extend(Frame(encode_reply(reply)) for reply in rendered.replies)
                    continue
                line = Frame(encode_reply(rendered), frame.channel, frame.offset)
                if channel is not None and isinstance(message, ours.Publication):
                    RENDERED.put(frame, line, message.epoch)
                if rendered.connect is not None:
                    # The assembled connect reply, then what waited for it.
                    if pending is not None and pending.refused:
                        log.info("centrifugo.server_subs_refused", channels=pending.refused)
                    out.append(line)
                    out.extend(held)
                    held.clear()
                    target = out
                    continue
                target.append(line)
        if len(held) > _MAX_HELD:
            held.clear()
            self._insufficient_state("(server-side subscriptions)")
        return out

    def _keeps_history(self, channel: str) -> bool:
        return self.settings.namespace(namespace_of(channel)).history_size > 0

    def _insufficient_state(self, channel: str) -> None:
        if self.close_request is None:
            log.info("centrifugo.insufficient_state", channel=channel)
            self.close_with(INSUFFICIENT_STATE)

    def close_with(self, code: DisconnectCode) -> None:
        """Close with one of Centrifugo's own codes (``request_close`` takes the broker's); the
        first close requested wins."""
        if self.close_request is None:
            self.close_request = CloseRequest(code.code, code.reason, code.reconnect)
            self.outbox.interrupt()
            self._interrupt_write()

    def encode(self, frames: list[Frame]) -> list[tuple[list[Frame], bool]]:
        """Text frames of newline-separated Centrifugo messages, within ``queue.max_batch`` and
        about ``queue.max_batch_bytes`` each (a lone message keeps its shared ``Frame``)."""
        self.observe_latency(frames)
        frames = self.render(frames)
        stats = self.stats
        stats.messages_out += len(frames)
        if not frames:
            return []
        if len(frames) == 1:
            stats.bytes_out += len(frames[0].data)
            return [(frames, True)]
        queue = self.settings.queue
        batches: list[Frame] = []
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            data = frame.data
            if batch and (
                len(batch) >= queue.max_batch or size + len(data) > queue.max_batch_bytes
            ):
                batches.append(Frame(b"\n".join(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data) + 1
        if batch:
            batches.append(Frame(b"\n".join(batch)))
        stats.bytes_out += sum(len(frame.data) for frame in batches)
        return [(batches, True)]

    def _close_notice(self, code: int, reason: str) -> tuple[bytes, bool] | None:
        """The ``disconnect`` push before a close made by the frame parser (1009 and co)."""
        notice = super()._close_notice(code, reason)
        if notice is None:
            return None
        rendered = self.render([Frame(notice[0])])
        return (rendered[0].data, True) if rendered else None
