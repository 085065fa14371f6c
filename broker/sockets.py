"""Accepted sockets, counted from accept: the limits every socket is held to before and after its
WebSocket handshake, and the client address behind a trusted proxy.

uvicorn builds its protocol instances itself, one per socket, from classes; what they need to
know (``SocketLimits``) is set once per process by ``configure``, and what they share per server
(``SocketTally``, one per uvicorn ``ServerState``) is looked up from the server state they are
given. The HTTP protocol (broker/http_protocol.py) counts a socket in when it is accepted; the
WebSocket protocol (broker/transport.py) counts it out when the socket is gone, whichever of them
holds it then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import weakref
from dataclasses import dataclass, field
from typing import Any

from broker.client_faults import client_faults
from broker.settings import Settings


@dataclass(frozen=True, slots=True)
class SocketLimits:
    """The per-socket limits of ``broker.settings`` the protocols apply."""

    transport_buffer_bytes: int = 64 * 1024
    close_timeout: float = 5.0
    handshake_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_fragments: int = 1024
    max_connections: int = 0
    max_connections_per_ip: int = 0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: The outbox bounds a connection's replies (pongs included) count against.
    max_messages: int = 1000
    max_bytes: int = 1024 * 1024
    retry_after: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SocketLimits:
        server, websocket, limits = settings.server, settings.websocket, settings.limits
        return cls(
            transport_buffer_bytes=websocket.transport_buffer_bytes,
            close_timeout=websocket.close_timeout,
            handshake_timeout=server.handshake_timeout,
            max_header_bytes=server.max_header_bytes,
            max_fragments=websocket.max_fragments,
            max_connections=limits.max_connections,
            max_connections_per_ip=limits.max_connections_per_ip,
            trusted_proxies=tuple(
                ipaddress.ip_network(proxy, strict=False) for proxy in server.trusted_proxies
            ),
            max_messages=settings.queue.max_messages,
            max_bytes=settings.queue.max_bytes,
            retry_after=limits.retry_after,
        )

    def trusts(self, host: str | None) -> bool:
        """Whether ``host`` is a trusted proxy, whose ``X-Forwarded-For`` names the client."""
        if host is None or not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


_limits: list[SocketLimits] = [SocketLimits()]


def configure(settings: Settings) -> None:
    """Set the limits every socket of this process is held to (``broker serve`` does), and the
    rate of client-fault log lines."""
    _limits[0] = SocketLimits.from_settings(settings)
    client_faults.configure(settings.log.client_faults_per_second)


def limits() -> SocketLimits:
    return _limits[0]


@dataclass(slots=True)
class SocketTally:
    """The sockets of one server, from accept until they are gone, in all and per client address.

    A socket from a trusted proxy is counted per address only once its request names the client
    (``assign``), at the WebSocket admission.
    """

    total: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    _sockets: dict[asyncio.BaseTransport, str | None] = field(default_factory=dict)

    def add(self, transport: asyncio.BaseTransport, address: str | None) -> None:
        if transport in self._sockets:
            return
        self._sockets[transport] = address
        self.total += 1
        if address is not None:
            self.by_address[address] = self.by_address.get(address, 0) + 1

    def assign(self, transport: asyncio.BaseTransport, address: str) -> None:
        """Count the socket under ``address`` (the client a trusted proxy names) from now on."""
        if transport not in self._sockets:
            return
        self._forget_address(self._sockets[transport])
        self._sockets[transport] = address
        self.by_address[address] = self.by_address.get(address, 0) + 1

    def discard(self, transport: asyncio.BaseTransport) -> None:
        if transport not in self._sockets:
            return
        self._forget_address(self._sockets.pop(transport))
        self.total -= 1

    def _forget_address(self, address: str | None) -> None:
        if address is None:
            return
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)

    def count(self, address: str) -> int:
        return self.by_address.get(address, 0)


_tallies: weakref.WeakKeyDictionary[Any, SocketTally] = weakref.WeakKeyDictionary()


def tally_for(server_state: Any) -> SocketTally:
    """The tally of the uvicorn server whose shared state is ``server_state``."""
    tally = _tallies.get(server_state)
    if tally is None:
        tally = _tallies[server_state] = SocketTally()
    return tally


def refusal_at_accept(tally: SocketTally, address: str | None) -> str | None:
    """Why a socket just counted in must be refused at once, or None.

    Past ``max_connections`` (or ``max_connections_per_ip``) WebSocket clients are still let
    through to be told 1013 with ``retry_after``; past twice as many sockets there is no room
    left even for that, and the socket is answered 503 and closed.
    """
    current = limits()
    if current.max_connections and tally.total > 2 * current.max_connections:
        return "max_connections"
    per_ip = current.max_connections_per_ip
    if per_ip and address is not None and tally.count(address) > 2 * per_ip:
        return "max_connections_per_ip"
    return None


def reset(transport: asyncio.BaseTransport) -> None:
    """Reset the connection now (``SO_LINGER`` on with 0, then abort): the kernel frees its
    buffers at once instead of lingering in FIN-WAIT-1 with data queued. A no-op once it is gone."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # Already closed by the peer: abort() below is all that is left to do.
    transport.abort()  # type: ignore[attr-defined]
