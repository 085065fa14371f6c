"""The WebSocket protocol the broker serves with, and why its writes go below ASGI where uvicorn
allows it (the writing itself: ``broker.transport_link``).

The hub's design pays off only when a writer hands the socket every queued frame in one write (one
syscall) and can cut a stuck client loose (docs/stack-findings.md). ASGI offers neither: ``send``
takes one message at a time, and nothing in it can abort a transport. So
``BrokerWebSocketProtocol``, a small subclass of uvicorn's websockets-sansio protocol, publishes
a ``TransportLink`` in the ASGI scope's ``extensions`` under ``"broker.transport"``: frames for
many messages in one ``transport.write``, an ``abort`` that resets the socket (``SO_LINGER`` 0)
instead of leaving megabytes in FIN-WAIT-1, and a transport buffer capped at
``websocket.transport_buffer_bytes``, above which writers wait, so one client's hold is bounded.

Without the extension (the app mounted under another server), ``AsgiFrameSink`` falls back to
ASGI ``send``, and a stuck client is still dropped by the writer's deadline, without the reset.
docs/design.md ("The write path below ASGI") has every override and the alternatives rejected.

Hostile clients: the protocol holds every socket to bounds of memory and time (settings in
``broker.sockets.SocketLimits``; each case, its answer and its test in docs/hostile-clients.md):
pongs owed while the buffer is above its mark count against the outbox's bounds (only the latest
is kept); a message in more than ``websocket.max_fragments`` frames is closed with 1009; client
frames go through ``broker.client_frames`` (a partial frame bounded by the size limit); what the
handshake parser refuses gets its 431 or 414, and ``server.handshake_timeout`` its 408; invalid
UTF-8 is closed with 1007 and logged once, rate-limited, through ``client_faults``.

Verified on uvicorn 0.54 with websockets 17.4 (pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame as WireFrame
from websockets.http11 import Request
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

from broker.client_faults import client_faults, peer
from broker.client_frames import receive as receive_frames
from broker.handshake import (
    Opening,
    frame_protocol,
    response_head,
    switching_protocols,
    websocket_scope,
)
from broker.http_protocol import simple_response
from broker.keepalive import SweptKeepalive
from broker.sockets import SocketTally, limits, reset
from broker.tcp_cork import cork, corked
from broker.transport_link import (
    AsgiFrameSink,
    ClientGone,
    FrameSink,
    Send,
    TransportFrameSink,
    TransportLink,
    server_frame,
)
from broker.transport_messages import ClientMessages
from broker.transport_parts import WIRE_LOGGER, Flag, ReceiveQueue

__all__ = [
    "HOLD_RESPONSE",
    "TRANSPORT_EXTENSION",
    "AsgiFrameSink",
    "BrokerWebSocketProtocol",
    "ClientGone",
    "FrameSink",
    "Send",
    "TransportFrameSink",
    "TransportLink",
    "server_frame",
]

TRANSPORT_EXTENSION = "broker.transport"
#: A key of the ASGI ``websocket.accept`` message: true when the app writes its first frame in
#: the same turn of the loop (``/v1/ws``'s ``welcome``), so that the 101 response is held for it.
HOLD_RESPONSE = "broker.hold_response"


class BrokerWebSocketProtocol(SweptKeepalive, ClientMessages):
    """uvicorn's websockets-sansio protocol, plus the ``TransportLink`` extension, and lighter:
    an idle connection costs memory for as long as it lives (docs/performance.md)."""

    # Slots for every attribute ``__init__`` sets, uvicorn's included: its instance dictionary
    # of more than 30 keys could not share its keys and cost about 1.5 KiB per connection. What
    # uvicorn sets later (``request``, ``response``, ``scope``) still goes in the dictionary.
    __slots__ = (
        "answer",
        "app",
        "app_state",
        "asgi_version",
        "blocked_bytes",
        "blocked_replies",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "fast_frames",
        "fragment_count",
        "fragments",
        "frames",
        "frames_pending",
        "handshake_complete",
        "handshake_initiated",
        "handshake_timer",
        "heard_at",
        "initial_response",
        "last_ping_rtt",
        "link",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_at",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_owed",
        "pong_timer",
        "queue",
        "read_paused",
        "root_path",
        "scheme",
        "server",
        "sweep_tick",
        "take_now",
        "tally",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        _parsed: bool = False,
    ) -> None:
        # uvicorn 0.54's ``__init__``, minus what this class replaces at once (its
        # ``asyncio.Queue`` and ``asyncio.Event``) and two logger look-ups per connection: every
        # connection pays for this (docs/performance.md, "Connection rate").
        if not config.loaded:
            config.load()  # pragma: no cover - the server loads it before accepting
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        # uvicorn's info lines (one per accepted or refused handshake) are silenced: a client
        # could have one written per attempt. Refusals are logged, rate-limited, by the
        # endpoint (``websocket_routes.deny``); warnings and errors still go through.
        self.logger = WIRE_LOGGER  # type: ignore[assignment]
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None  # type: ignore[assignment]
        self.queue = ReceiveQueue(self.loop)  # type: ignore[assignment]
        #: Set by the app's reader while it reads (``ClientMessages.take_now``).
        self.take_now = None
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.heard_at = 0.0
        self.initial_response = None
        extensions = []
        if config.ws_per_message_deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
        # A handshake read by ``broker.handshake`` (``open``) needs no request parser.
        self.conn = (frame_protocol if _parsed else ServerProtocol)(
            extensions=extensions,
            max_size=config.ws_max_size,
            logger=WIRE_LOGGER,  # type: ignore[arg-type]
        )
        self.read_paused = False
        self.writable = Flag()  # type: ignore[assignment]
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.ping_timer = None
        self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"
        # The keepalive's place in the process's sweep (``broker.keepalive``).
        self.sweep_tick = None
        self.ping_at = 0.0
        # The broker's own state.
        self.link = TransportLink(self)
        self.close_timeout = limits().close_timeout
        #: The server's socket tally, once ``BrokerHttpProtocol`` hands the socket over.
        self.tally: SocketTally | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        #: A fragmented message being gathered, and how many frames it came in so far.
        self.fragments: bytearray | None = None
        self.fragment_count = 0
        #: Pongs held back while the socket's buffer is above its mark: the latest (the only
        #: one owed, RFC 6455 §5.5.3), and how many and how many bytes were held in all.
        self.pong_owed: bytes | None = None
        self.blocked_replies = 0
        self.blocked_bytes = 0
        #: The start of the 101 response, when the handshake was read by ``open``, until the
        #: app accepts.
        self.answer: bytes | None = None
        #: Whether whole-message frames are parsed here (``broker.client_frames``), from the
        #: handshake on, and a partial frame waiting for the rest.
        self.fast_frames = False
        self.frames_pending: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        high = limits().transport_buffer_bytes
        self.transport.set_write_buffer_limits(high=high, low=high // 4)

    def adopt(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        secure: bool,
    ) -> None:
        """``connection_made`` for a socket upgraded from ``BrokerHttpProtocol``, with the
        addresses it already has (no second ``getsockname``/``getpeername``)."""
        self.connections.add(self)
        self.transport = transport
        self.server = server
        self.client = client
        self.scheme = "wss" if secure else "ws"
        high = limits().transport_buffer_bytes
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def open(self, opening: Opening) -> bool:
        """Start the app for a handshake request ``broker.handshake`` has checked: what
        ``websockets``' parse and ``handle_connect`` do, from what httptools parsed. The protocol
        was made with ``_parsed`` (its ``websockets`` protocol reads frames from the start).
        False when the extensions offered are for ``websockets`` to refuse: the request then
        goes its way (``data_received``), with a ``websockets`` protocol that reads it."""
        conn = self.conn
        offered = None
        if opening.extensions and conn.available_extensions:
            try:
                offered, accepted = conn.process_extensions(
                    Headers([("Sec-WebSocket-Extensions", value) for value in opening.extensions])
                )
            except InvalidHandshake:
                self.conn = ServerProtocol(
                    extensions=conn.available_extensions,
                    max_size=conn.max_message_size,
                    logger=conn.logger,
                )
                return False
            conn.extensions = accepted
        self.handshake_initiated = True
        self.answer = response_head(opening.accept, offered)
        self.scope = websocket_scope(  # type: ignore[assignment]
            opening,
            asgi_version=self.asgi_version,
            scheme=self.scheme,
            server=self.server,
            client=self.client,
            root_path=self.root_path,
            state=self.app_state.copy(),
            extensions={"websocket.http.response": {}, TRANSPORT_EXTENSION: self.link},
        )
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)
        # Nothing after the request has reached ``websockets`` yet (the HTTP protocol forwards
        # it once this returns): client frames can be parsed here from the first.
        self.fast_frames = not conn.extensions
        return True

    def start_handshake_deadline(self, deadline: float, tally: SocketTally) -> None:
        """Take over the socket's deadline (``loop.time()``) and tally from the HTTP protocol."""
        self.tally = tally
        if self.disconnected:
            tally.discard(self.transport)
            return
        if not self.handshake_complete:
            self.handshake_timer = self.loop.call_at(deadline, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if self.handshake_complete or self.disconnected:
            return
        client_faults.info(
            "websocket.handshake_timeout",
            remote=peer(self.client),
            timeout=limits().handshake_timeout,
        )
        self._refuse_handshake(simple_response(408, "Request Timeout"))

    def _refuse_handshake(self, response: bytes) -> None:
        """Answer the handshake with ``response`` and close; the app, if it runs, sees 1006."""
        self.handshake_complete = True
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.transport.write(response)
        self.transport.close()
        self.close_timer = self.loop.call_later(self.close_timeout, self.abort_connection)

    def data_received(self, data: bytes) -> None:
        self.heard_at = self.loop.time()  # for the keepalive: no ping for a client heard from
        if self.fast_frames:
            receive_frames(self, data)
            return
        self.parse_wire(data)

    def parse_wire(self, data: bytes) -> None:
        """Hand ``data`` to ``websockets``' parser and handle what it made of it."""
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        if not self.handshake_initiated and conn.handshake_exc is not None:
            # The parser refused the request (a header line over 8 KiB, over 128 headers, a
            # request line over 8 KiB) and queued its 431 or 414: send it and close.
            client_faults.info(
                "websocket.bad_handshake",
                remote=peer(self.client),
                detail=str(conn.handshake_exc),
            )
            self.handshake_initiated = True
            self._refuse_handshake(b"".join(conn.data_to_send()))
            return
        self.handle_events()

    # --- pongs --------------------------------------------------------------------------------

    def handle_ping(self) -> None:
        output = b"".join(self.conn.data_to_send())
        if not output:
            return  # answered with an earlier ping of the same read
        if self.writable.is_set() or self.transport.is_closing():
            self.transport.write(output)
            return
        # The socket takes nothing now: keep the latest pong only, and count the reply.
        self.pong_owed = output
        self.blocked_replies += 1
        self.blocked_bytes += len(output)
        current = limits()
        on_reply_blocked = self.link.on_reply_blocked
        if on_reply_blocked is not None:
            on_reply_blocked(self.blocked_replies, self.blocked_bytes)
        elif self.blocked_replies > current.max_messages or self.blocked_bytes > current.max_bytes:
            client_faults.warning("websocket.replies_blocked", remote=peer(self.client))
            self.abort_connection()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created but has not run yet: the extension is in place before the
        # app sees the scope.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = self.link

    def pause_writing(self) -> None:
        super().pause_writing()
        self.link.refresh()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.link.refresh()
        self.blocked_replies = self.blocked_bytes = 0
        pong, self.pong_owed = self.pong_owed, None
        if pong is not None and not self.transport.is_closing():
            self.transport.write(pong)
        self._notify_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.tally is not None:
            self.tally.discard(self.transport)
        self.fragments = self.pong_owed = self.frames_pending = None
        # No close frame came (a reset, a vanished peer): RFC 6455 §7.1.5 calls that 1006.
        # uvicorn reports 1005, which the RFC reserves for a close frame without a status code.
        lost = self.handshake_complete and self.conn.close_rcvd is None
        super().connection_lost(exc)
        self.link.refresh()
        if lost:
            self.queue.relabel_last_disconnect(1006, "connection lost")  # type: ignore[attr-defined]
        self._notify_writable()

    def _notify_writable(self) -> None:
        on_writable = self.link.on_writable
        if on_writable is not None:
            on_writable()

    def shutdown(self) -> None:
        on_shutdown = self.link.on_shutdown
        if self.handshake_complete and not self.close_sent and on_shutdown is not None:
            # The app drains the connection itself; uvicorn waits for it up to its grace period.
            self.stop_keepalive()
            on_shutdown()
            return
        super().shutdown()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.accept" and not self.handshake_complete:
            await self._accept(message)
        else:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and self.close_sent:
                # A refusal (the denial-response extension) was sent whole: the handshake ended
                # as the app meant, and uvicorn would otherwise log "ASGI callable returned
                # without completing handshake." at error level for every refused client.
                self.handshake_complete = True
        if self.handshake_complete and self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if (
            message["type"] == "websocket.accept"
            and self.handshake_complete
            and hasattr(self, "request")  # not a handshake read by ``open``
        ):
            # The handshake's request and response (with their headers) are not used again;
            # the app keeps what it needs from the scope.
            del self.request, self.response
            conn = self.conn
            if not conn.reader.buffer:
                # websockets' server parser is a generator that keeps the handshake request (and
                # its headers) as a local for as long as the connection lives. With nothing
                # buffered it waits for a frame's first byte: a fresh frame parser, waiting at
                # the same point, holds nothing else.
                conn.parser = WebSocketProtocol.parse(conn)
                next(conn.parser)
                # At a frame boundary: client frames can be parsed here from now on.
                self.fast_frames = not conn.extensions
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn ends an unanswered close handshake with transport.close(), which waits for
            # the write buffer to drain: a client that stopped reading would keep its socket and
            # buffers forever. Reset it instead.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.abort_connection)

    async def _accept(self, message: Any) -> None:
        """uvicorn 0.54's ``websocket.accept``, without its info line per connection (the
        broker logs one line per connection, when it ends), and, when the message asks for it
        (``HOLD_RESPONSE``), with the 101 response held back for what the app writes in the same
        turn (``/v1/ws``: ``welcome``), so that both leave in one TCP segment: one wake-up of
        the client instead of two."""
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.initial_response is not None:
            await super().send(message)  # a denial response started: uvicorn raises
            return
        subprotocol = message.get("subprotocol")
        answer = self.answer
        transport = self.transport
        if answer is not None:
            # The handshake read by ``open``: the same response, without ``websockets``.
            if transport.is_closing():
                return
            self.answer = None
            self.handshake_complete = True
            self.conn.state = State.OPEN
            data = switching_protocols(
                answer, (*self.default_headers, *message.get("headers", ())), subprotocol
            )
            if message.get(HOLD_RESPONSE):
                cork(self.transport, self.loop)
            transport.write(data)
            self.start_keepalive()
            return
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in (self.default_headers + list(message.get("headers", [])))
        ]
        if subprotocol:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        response = self.response
        del response.headers["Date"]
        response.headers.update(headers)
        if not transport.is_closing():
            self.handshake_complete = True
            self.conn.send_response(response)
            if message.get(HOLD_RESPONSE):
                cork(self.transport, self.loop)
            transport.write(b"".join(self.conn.data_to_send()))
            self.start_keepalive()

    def handle_close(self, event: WireFrame) -> None:
        if not self.close_sent and not self.transport.is_closing():
            # The client closes first: the close frame that answers it and the FIN that follows
            # at once leave in one TCP segment (the socket is closed corked, which sends all).
            corked(self.transport)
        super().handle_close(event)

    def handle_parser_exception(self) -> None:
        close = self.conn.close_sent
        notice = self.link.close_notice
        if close is not None and notice is not None and not self.transport.is_closing():
            # The close frame is already queued in the protocol's output; what is written now
            # goes out before it.
            message = notice(close.code, close.reason)
            if message is not None:
                payload, text = message
                self.transport.write(server_frame(payload, text=text))
        super().handle_parser_exception()

    def abort_connection(self) -> None:
        transport = self.transport
        if transport is None or self.disconnected:
            return
        reset(transport)
