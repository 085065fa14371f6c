"""The server's WebSocket pings, from the process's sweep instead of two timers per connection.

uvicorn 0.54's websockets-sansio protocol keeps a ``TimerHandle`` per connection for its next
keepalive ping and another for the pong it waits for. ``SweptKeepalive`` does the same with one
entry in the process's ``broker.heartbeats`` sweep: a ping once ``ws_ping_interval`` seconds
have passed since the handshake, since the last ping (uvicorn subtracts the last round trip
from the wait after a pong: the same) and since anything was last received from the client
(``heard_at``, set by the protocol's ``data_received``); when no pong with the ping's payload
comes within ``ws_ping_timeout``, close 1011 ``keepalive ping timeout``, then a reset (uvicorn's
close would wait for a write buffer that a stuck client never drains). Each deadline is met up
to one tick of the sweep late (at most 1 s), never early.

A client heard from within the interval is alive: it is not pinged, as the NATS server does not
ping a client active within its ping interval ("Delaying PING due to client activity"). uvicorn
pings every interval whatever the client sends; at 10,000 ``/v1/ws`` clients, which send their
own ``ping`` every 17.5 s, that was 400 WebSocket pings written and 400 pongs parsed (by
``websockets``' generator parser, control frames not being on the fast path) every second for
nothing (docs/design.md, "Liveness deadlines: one sweep per process").
"""

from __future__ import annotations

import random
import struct

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame as WireFrame

from broker.heartbeats import Sweep, sweep
from broker.sockets import reset

__all__ = ["SweptKeepalive"]


class SweptKeepalive(WebSocketsSansIOProtocol):
    """uvicorn's keepalive (``start_keepalive`` ... ``keepalive_timeout``) on the sweep."""

    # Set by the subclass's ``__init__`` (slots there).
    #: The bucket of the sweep the connection is in (``broker.heartbeats``).
    sweep_tick: int | None
    #: When the next ping is due (``loop.time()``), while no ping waits for its pong.
    ping_at: float
    #: When something last came from the client (``loop.time()``, set by ``data_received``).
    heard_at: float

    def _sweep(self) -> Sweep | None:
        interval = self.ping_interval
        if interval is None or interval <= 0:
            return None
        timeout = self.ping_timeout
        return sweep(interval if timeout is None else min(interval, timeout))

    def start_keepalive(self) -> None:
        heartbeats = self._sweep()
        if heartbeats is not None:
            assert self.ping_interval is not None
            self.ping_at = self.loop.time() + self.ping_interval
            heartbeats.schedule(self, self.ping_at)

    def stop_keepalive(self) -> None:
        if self.sweep_tick is not None:
            heartbeats = self._sweep()
            if heartbeats is not None:
                heartbeats.cancel(self)
        self.pending_ping_payload = None

    def schedule_ping(self) -> None:  # pragma: no cover - uvicorn's, unused here
        self.start_keepalive()

    def handle_pong(self, event: WireFrame) -> None:
        # Unsolicited and stale pongs (another payload than the ping in flight) are ignored.
        payload = self.pending_ping_payload
        if payload is None or bytes(event.data) != payload:
            return
        now = self.loop.time()
        self.last_ping_rtt = now - self.ping_sent_at
        self.pending_ping_payload = None
        assert self.ping_interval is not None
        self.ping_at = now + max(0.0, self.ping_interval - self.last_ping_rtt)
        heartbeats = self._sweep()
        if heartbeats is not None:
            heartbeats.schedule(self, self.ping_at)

    def on_sweep(self, now: float) -> float | None:
        """Send the ping that is due, or give up on the pong that did not come."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            self.pending_ping_payload = None
            return None
        timeout = self.ping_timeout
        if self.pending_ping_payload is not None and timeout is not None:
            deadline = self.ping_sent_at + timeout
            if now < deadline:
                return deadline
            self.keepalive_timeout()
            return None
        if now < self.ping_at:
            return self.ping_at
        assert self.ping_interval is not None
        quiet_from = self.heard_at + self.ping_interval
        if now < quiet_from:
            # Heard from within the interval: no ping before a whole interval of silence.
            self.ping_at = quiet_from
            return quiet_from
        self.send_keepalive_ping()
        if timeout is None:
            assert self.ping_interval is not None
            self.ping_at = now + self.ping_interval
            return self.ping_at
        return now + timeout

    def send_keepalive_ping(self) -> None:
        # A random 4-byte payload identifies this ping (``handle_pong``).
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def keepalive_timeout(self) -> None:
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():  # pragma: no cover - on_sweep checks
            return
        self.conn.fail(1011, "keepalive ping timeout")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        # uvicorn closes gracefully here, which never ends for a client whose buffers are full.
        reset(self.transport)
