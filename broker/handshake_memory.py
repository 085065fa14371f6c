"""Letting go of the handshake's request once nothing reads it any more.

uvicorn's ASGI scope keeps the request's headers (a list of byte-string pairs: about 0.8 KiB for
a browser's dozen headers) for as long as the connection lives, and Starlette's ``WebSocket``
caches what it parsed of them (``headers``, ``query_params``, ``url``). The broker reads them
only before the connection starts: the origin and a plain endpoint's token at the handshake
(``broker.websocket_routes``), ``/v1/ws``'s token right after it (``broker.auth.session``).
``forget_handshake`` is called past those points, and the scope then holds no headers.
"""

from __future__ import annotations

from starlette.websockets import WebSocket

__all__ = ["forget_handshake"]

#: What Starlette's ``HTTPConnection`` caches of the request, parsed on first use.
_CACHED = ("_headers", "_query_params", "_url", "_base_url", "_cookies")


def forget_handshake(websocket: WebSocket) -> None:
    """Drop the request's headers from ``websocket``'s scope and what was parsed of them.

    Read again afterwards, ``websocket.headers`` is empty (and the query string, which is kept,
    is parsed anew)."""
    websocket.scope["headers"] = ()
    cached = websocket.__dict__
    for name in _CACHED:
        cached.pop(name, None)
