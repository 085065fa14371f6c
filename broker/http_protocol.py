"""The HTTP side of every socket until its request is complete: uvicorn's httptools protocol, held
to limits of time and size.

Every socket the server accepts starts here, WebSocket or not. uvicorn's own protocol keeps a
socket that never sends a request, or sends it a byte at a time, open indefinitely, and
accumulates request headers without bound. ``BrokerHttpProtocol`` adds:

* **counting from accept**: the socket is counted in ``SocketTally`` at once, so sockets still in
  their handshake count against ``limits.max_connections``; past twice that many (or twice
  ``limits.max_connections_per_ip`` from one address) it is answered 503 and closed at once;
* **a deadline** (``server.handshake_timeout``, from accept for the first request, from its first
  byte for later ones on a keep-alive connection): a request line, headers and body not complete
  by then are answered 408 (when no response has started) and the socket closed; a WebSocket
  upgrade carries the same deadline over to ``BrokerWebSocketProtocol``, until the handshake's
  answer;
* **a bound on the request head** (``server.max_header_bytes``): more is answered 431, or 414 while
  the request line is not complete, and the socket closed;
* client faults logged through the rate-limited ``client_faults`` (uvicorn's "Invalid HTTP
  request received." line included), once per connection, without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from broker.client_faults import client_faults, peer
from broker.handshake import read_opening
from broker.sockets import SocketTally, limits, refusal_at_accept, reset, tally_for


def simple_response(status: int, reason: str, headers: tuple[str, ...] = ()) -> bytes:
    """A complete HTTP/1.1 response with a short text body that closes the connection."""
    body = f"{reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _QuietLogger:
    """uvicorn's ``uvicorn.error`` logger for one protocol, with its warnings (all about the
    client: "Invalid HTTP request received.", "Unsupported upgrade request.") sent through the
    rate-limited ``client_faults`` at ``info``. Errors (the app's bugs) pass through unchanged."""

    __slots__ = ("client",)

    def __init__(self) -> None:
        #: The client's address, formatted only when something is logged.
        self.client: tuple[str, int] | None = None

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        client_faults.info("http.bad_request", remote=peer(self.client), detail=msg % args)

    def __getattr__(self, name: str) -> Any:
        return getattr(_UVICORN_ERROR, name)


_UVICORN_ERROR = logging.getLogger("uvicorn.error")
_UVICORN_ACCESS = logging.getLogger("uvicorn.access")


def _local_address(info: Any) -> tuple[str, int | None] | None:
    """``scope["server"]`` from the transport's ``sockname``, as uvicorn makes it from the
    socket's ``getsockname()``."""
    if isinstance(info, tuple):
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


def _remote_address(info: Any) -> tuple[str, int] | None:
    """``scope["client"]`` from the transport's ``peername``, as uvicorn makes it from the
    socket's ``getpeername()``."""
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) else None


class BrokerHttpProtocol(HttpToolsProtocol):
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn 0.54's ``__init__``, without its two logger look-ups per connection (every
        # socket pays for this: docs/performance.md, "Connection rate").
        if not config.loaded:
            config.load()  # pragma: no cover - the server loads it before accepting
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = _QuietLogger()  # type: ignore[assignment]
        self.access_logger = _UVICORN_ACCESS
        self.access_log = _UVICORN_ACCESS.hasHandlers()
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None
        self.pipeline = deque()
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle = None  # type: ignore[assignment]
        # The broker's own state.
        self.tally: SocketTally = tally_for(server_state)
        self._deadline: asyncio.TimerHandle | None = None
        #: The reset of a socket closed with an answer, if the client has not taken it by then.
        self._reset_timer: asyncio.TimerHandle | None = None
        self._accepted_at = 0.0
        #: Bytes of the request head received so far, while it is not complete.
        self._head_open = True
        self._head_bytes = 0
        self._refused = False
        #: ``_should_upgrade``'s answer, and the request (its header list) it is for.
        self._upgrade_for: list[tuple[bytes, bytes]] | None = None
        self._upgrade = False

    # --- accept ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn 0.54's ``connection_made``, with the addresses the transport already has
        # (uvloop reads them at accept): uvicorn asks a socket object made for the purpose,
        # which costs a system call to make and one to ask, twice per connection.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = _local_address(transport.get_extra_info("sockname"))
        self.client = _remote_address(transport.get_extra_info("peername"))
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        current = limits()
        host = None if self.client is None else self.client[0]
        address = None if current.trusts(host) else host
        self.tally.add(transport, address)
        self._accepted_at = self.loop.time()
        self.logger.client = self.client  # type: ignore[attr-defined]
        reason = refusal_at_accept(self.tally, address)
        if reason is not None:
            self._refused = True
            client_faults.warning(
                "connection.refused", stage="accept", reason=reason, remote=peer(self.client)
            )
            retry_after = max(1, round(current.retry_after))
            self._close_with(
                simple_response(503, "Service Unavailable", (f"Retry-After: {retry_after}",))
            )
            return
        self._deadline = self.loop.call_at(
            self._accepted_at + current.handshake_timeout, self._timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._reset_timer is not None:
            # Gone: its socket object is closed, and asking it for anything would raise.
            self._reset_timer.cancel()
            self._reset_timer = None
        self.tally.discard(self.transport)
        super().connection_lost(exc)

    # --- the request head -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._head_open:
            room = limits().max_header_bytes - self._head_bytes
            if len(data) > room:
                # Feed what fits; if the head is still not complete, it is too large.
                head, rest = data[: max(room, 0)], data[max(room, 0) :]
                if head:
                    self._head_bytes += len(head)
                    super().data_received(head)
                if self._head_open and not self.transport.is_closing():
                    self._head_too_large()
                    return
                self._forward(rest)
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def _forward(self, data: bytes) -> None:
        """Hand ``data`` to whichever protocol holds the socket now (the WebSocket one, after an
        upgrade in the middle of a chunk)."""
        if not data or self.transport.is_closing():
            return
        protocol = self.transport.get_protocol()
        if protocol is self:
            self.data_received(data)
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def _head_too_large(self) -> None:
        # The URL arrives in pieces as it is parsed; headers only whole. When the URL is about
        # all that came (the method and the spaces aside), the request line never ended.
        url: bytes = getattr(self, "url", b"")
        if len(url) >= self._head_bytes - 32:
            status, reason = 414, "URI Too Long"
        else:
            status, reason = 431, "Request Header Fields Too Large"
        client_faults.info(
            "http.request_too_large",
            remote=peer(self.client),
            status=status,
            limit=limits().max_header_bytes,
        )
        self._close_with(simple_response(status, reason))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        if self._deadline is None:
            # A later request on a keep-alive connection: its own deadline from its first byte.
            self._deadline = self.loop.call_later(limits().handshake_timeout, self._timed_out)

    def _should_upgrade(self) -> bool:
        # uvicorn asks this up to three times per request (headers complete, the parser's
        # upgrade exception, message complete), each time a walk over the headers: answered
        # once per request.
        headers = self.headers
        if self._upgrade_for is not headers:
            self._upgrade_for = headers
            self._upgrade = super()._should_upgrade()
        return self._upgrade

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        """uvicorn 0.54's upgrade, passing on the addresses this protocol already has when the
        WebSocket protocol is the broker's, and the socket's deadline and tally. The request is
        checked here (``broker.handshake``) and handed over parsed (``open``); uvicorn's way
        (the request as received, for the WebSocket protocol to parse and answer) is kept for
        what the check leaves to ``websockets``."""
        self._cancel_deadline()
        protocol_class: Any = self.ws_protocol_class
        if protocol_class is None or not hasattr(protocol_class, "adopt"):
            super().handle_websocket_upgrade()
            # Another WebSocket protocol: it counts the socket out itself, or not at all.
            self.tally.discard(self.transport)
            return
        method: str = self.scope["method"]
        # The request checked and answered from what httptools parsed (broker.handshake);
        # anything unusual is handed to ``websockets`` to parse and answer, as uvicorn does.
        opening = read_opening(method, self.url, self.headers)
        if isinstance(opening, bytes):
            client_faults.info(
                "websocket.bad_handshake",
                remote=peer(self.client),
                detail="unsupported Sec-WebSocket-Version",
            )
            self._close_with(opening)
            return
        self.connections.discard(self)
        # broker.transport.BrokerWebSocketProtocol (which imports this module).
        # The loop passed on: asyncio.get_event_loop() would ask for it again (a getpid(2)).
        protocol: Any = protocol_class(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
            _parsed=opening is not None,
        )
        transport = self.transport
        protocol.adopt(transport, self.server, self.client, self.scheme == "https")
        if opening is None or not protocol.open(opening):
            output = [method.encode(), b" ", self.url, b" HTTP/1.1\r\n"]
            for name, value in self.headers:
                output += [name, b": ", value, b"\r\n"]
            output.append(b"\r\n")
            protocol.data_received(b"".join(output))
        transport.set_protocol(protocol)
        protocol.start_handshake_deadline(
            self._accepted_at + limits().handshake_timeout, self.tally
        )

    # --- the deadline ---------------------------------------------------------------------------

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        # The app may have answered already (a 415 before reading the body, say): then no 408
        # follows its answer; the socket is only let go.
        answered = cycle is not None and (cycle.response_started or cycle.response_complete)
        client_faults.info(
            "http.request_timeout",
            remote=peer(self.client),
            timeout=limits().handshake_timeout,
            received=self._head_bytes if self._head_open else None,
        )
        if cycle is not None and not cycle.response_complete:
            # The app is waiting for the rest of the body: it sees the client leave, and has
            # nothing more to log about it.
            cycle.scope["broker.timed_out"] = True  # type: ignore[typeddict-unknown-key]
        if answered:
            self._close_with(b"")
            return
        self._close_with(simple_response(408, "Request Timeout"))

    def _close_with(self, response: bytes) -> None:
        """Write ``response``, close, and reset the socket if the client does not take it within
        ``websocket.close_timeout``."""
        self._cancel_deadline()
        self._head_open = False
        transport = self.transport
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        transport.write(response)
        transport.close()
        if self._reset_timer is None:
            self._reset_timer = self.loop.call_later(limits().close_timeout, self._abort)

    def _abort(self) -> None:
        # The socket is still there (``connection_lost`` cancels this): what the client would
        # not take is dropped.
        self._reset_timer = None
        reset(self.transport)
