"""Which browser origins may open a WebSocket (``server.allowed_origins``).

Browsers always send ``Origin`` on a WebSocket handshake (RFC 6455 §4.1) and let any page open
one to any host, with the user's cookies. So: no ``Origin`` (a client that is not a browser) is
let in; the broker's own origin (``Origin``'s host and port equal to ``Host``) is let in; any other
only when listed, or when the list is ``["*"]``, which start-up logs as a warning.
"""

from __future__ import annotations

import urllib.parse


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the host the request was sent to."""
    if not host:
        return False
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a handshake with ``Origin: origin`` and ``Host: host`` may go on."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    return same_origin(origin, host)
