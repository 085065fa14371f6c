"""``TCP_CORK`` (Linux): hold what is written to a socket until the next turn of the loop, so that
what is written in one turn leaves in one TCP segment (the 101 response with ``welcome``; the
close frame that answers a client's with the FIN). A no-op where ``TCP_CORK`` does not exist."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["cork", "corked"]

#: ``TCP_CORK`` where the platform has it (Linux), else None.
_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)


def cork(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Cork the transport's socket until the next turn of ``loop``."""
    sock = corked(transport)
    if sock is not None:
        loop.call_soon(_uncork, transport, sock)


def corked(transport: asyncio.Transport) -> socket.socket | None:
    """Set ``TCP_CORK`` on the transport's socket; the socket, or None when that cannot be done
    (closing it then sends what is held)."""
    if _TCP_CORK is None:
        return None
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
    except OSError:
        return None
    return sock


def _uncork(transport: asyncio.Transport, sock: socket.socket) -> None:
    # Once the transport is closing its socket may be closed already (and its number taken by
    # another): closing sends what is held anyway.
    if transport.is_closing() or _TCP_CORK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
    except OSError:
        pass
