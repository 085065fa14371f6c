"""Client messages in ``BrokerWebSocketProtocol``: whole messages assembled from the frames
(``broker.client_frames`` for whole-message frames, ``websockets`` for the rest), handed to the
app's queue, and taken from it by the app.

* **Fragments** go into one growing buffer per message (bounded by the parser's size limit); a
  message in more than ``websocket.max_fragments`` frames is closed with 1009.
* **Text** is checked as UTF-8 here: invalid, the connection is failed with 1007 and logged once,
  rate-limited, through ``client_faults``.
* **Reading pauses** only when a message arrives while the one before is still unread (the app
  is behind), and resumes once the app has taken everything queued; uvicorn pauses after every
  message, an epoll change each way (docs/design.md, "When the server stops reading a client").
* **The app's reads**: the connection's reader takes messages with ``next_message`` and waits
  with ``message_arrival`` when nothing wraps the ASGI ``receive`` (``TransportLink.messages``),
  without a coroutine per message; ``receive`` is the same for everything else.
* **Messages taken at once**: while the reader waits with nothing queued, a message is offered
  to its ``take_now`` first, in this callback, and queued only if it declines. What it cannot
  finish without waiting it queues itself, as a continuation (``defer``), which the reader
  runs in its task before anything read after it. A publication or a ping then costs no
  future, no wake-up of the reader's task and no resumption of its chain of coroutines
  (docs/design.md, "Messages taken at once").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message as AsgiMessage
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame as WireFrame

from broker.client_faults import client_faults, peer
from broker.sockets import limits
from broker.transport_parts import ReceiveQueue

__all__ = ["DEFERRED", "ClientMessages"]

#: The type of a queued continuation (``ClientMessages.defer``): not an ASGI message type.
DEFERRED = "broker.deferred"


class ClientMessages(WebSocketsSansIOProtocol):
    """uvicorn's message assembly and ``receive``, replaced; see the module docstring."""

    # Set by ``BrokerWebSocketProtocol.__init__`` (slots there).
    #: The message being assembled from fragments, and how many frames it came in so far.
    fragments: bytearray | None
    fragment_count: int
    #: The reader's offer to handle a message now (text, or bytes), while it reads: True when
    #: it took it (done, or deferred behind everything else); False, and nothing was done,
    #: when the message must be queued as usual. None while nobody offers.
    take_now: Callable[[str | None, bytes | None], bool] | None

    def handle_text(self, event: WireFrame) -> None:
        self._begin_message("text", event)

    def handle_bytes(self, event: WireFrame) -> None:
        self._begin_message("bytes", event)

    def _begin_message(self, kind: Any, event: WireFrame) -> None:
        if self.close_sent:
            return
        self.curr_msg_data_type = kind
        if event.fin:
            self._deliver(bytes(event.data))
            return
        # One growing buffer for the whole message: its size is bounded by the parser
        # (``max_message_bytes``), and nothing is kept per fragment.
        self.fragments = bytearray(event.data)
        self.fragment_count = 1

    def handle_cont(self, event: WireFrame) -> None:
        fragments = self.fragments
        if fragments is None or self.close_sent:
            return
        self.fragment_count += 1
        if self.fragment_count > limits().max_fragments:
            self.fragments = None
            client_faults.info(
                "websocket.too_many_fragments",
                remote=peer(self.client),
                limit=limits().max_fragments,
            )
            self._fail(1009, "too many fragments")
            return
        fragments += event.data
        if event.fin:
            self.fragments = None
            self._deliver(bytes(fragments))

    def _deliver(self, data: bytes) -> None:
        if self.close_sent:
            # The app is past ``websocket.close``: discard the message, keep reading until the
            # peer's close reply arrives.
            return
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        # Read on while the app keeps up: pause only when a message arrives with the one before
        # still unread (see below).
        behind = not queue.empty()
        take_now = self.take_now
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                client_faults.info("websocket.invalid_utf8", remote=peer(self.client))
                self._fail(1007, "invalid UTF-8")
                return
            # Handled now when the reader would take it next anyway (module docstring).
            if take_now is not None and queue.reader_waiting() and take_now(text, None):
                return
            queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            if take_now is not None and queue.reader_waiting() and take_now(None, data):
                return
            queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if behind and not self.read_paused:
            # The app is behind (its reader waits for the hub's mailbox, say): stop reading
            # until it has taken everything queued (uvicorn's ``receive`` resumes then), so a
            # flood is pushed back to the client's TCP window. uvicorn pauses after every
            # message instead, which costs a ``pause_reading`` and a ``resume_reading`` per
            # message: two epoll changes (``epoll_ctl``, batched by libuv into about 1.6
            # ``io_uring_enter`` system calls), which NATS does not make; at most one message
            # more is queued this way than with uvicorn's rule.
            self.read_paused = True
            self.transport.pause_reading()

    def send_receive_event_to_app(self) -> None:  # pragma: no cover - replaced by _deliver
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        self._deliver(data)

    # --- the app's reads -----------------------------------------------------------------------

    def next_message(self) -> AsgiMessage | None:
        """uvicorn 0.54's ``receive`` without its wait: the next message for the app, or None
        while none is queued. Reading from the socket, paused when the app is behind
        (``_deliver``), resumes once the app has taken everything queued, as there.

        The connection's reader calls this, and ``message_arrival``, directly when nothing
        wraps the ASGI ``receive`` (``TransportLink.messages``): a message then costs it no
        coroutine (Starlette's ``WebSocket.receive``, this protocol's ``receive``, the queue's
        ``get``) and, when it is queued already, no future."""
        queue: ReceiveQueue = self.queue  # type: ignore[assignment]
        message = queue.pop()
        if message is not None and self.read_paused and queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def message_arrival(self) -> asyncio.Future[None]:
        """A future that ends once a message is queued for the app (``next_message``)."""
        return self.queue.arrival()  # type: ignore[attr-defined,no-any-return]

    def defer(self, then: Callable[[], Awaitable[None]]) -> None:
        """Queue ``then`` for the reader to await in its task, after everything queued before
        it: the rest of a message ``take_now`` took but could not finish without waiting."""
        self.queue.put_nowait({"type": DEFERRED, "then": then})  # type: ignore[arg-type]

    async def receive(self) -> Any:
        message = self.next_message()
        while message is None:
            await self.message_arrival()
            message = self.next_message()
        return message

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7) with ``code``: close frame, then close."""
        try:
            self.conn.fail(code, reason)
        except InvalidState:
            pass
        if self.conn.close_sent is None:  # the closing handshake had started already
            self.transport.close()
            return
        self.handle_parser_exception()
