"""The WebSocket opening handshake (RFC 6455 §4.2), checked and answered from the request
httptools has already parsed: no second parse, no ``websockets`` request and response objects.

uvicorn hands a WebSocket protocol the upgrade request as bytes it rebuilds from what httptools
parsed, and ``websockets`` parses them again, checks them, and builds its response through its
``Headers`` (docs/performance.md, "Connection rate"). ``read_opening`` does the checks on the
parsed request instead, for the request a client sends in practice, and gives up (None) on
anything else, which then goes ``websockets``' way exactly as before. It gives up wherever
``websockets`` would refuse, or would read the request differently:

* a method other than ``GET``; a ``Transfer-Encoding`` or ``Content-Length`` header;
* a request line or header line longer than ``websockets``' limit (8 KiB), more than its 128
  headers (``websockets`` answers 414 or 431);
* ``Connection`` or ``Sec-WebSocket-Protocol`` values that are not plain comma-separated token
  lists (empty list elements, stray characters), more than one ``Upgrade`` or ``Origin``
  header;
* a ``Sec-WebSocket-Key`` that is not exactly one base64 encoding of 16 bytes, a
  ``Sec-WebSocket-Version`` missing or given twice (400).

Then the answer is the same as before, byte for byte, and so is the ASGI scope. One answer is
new, and given here: a ``Sec-WebSocket-Version`` other than 13 is answered ``426 Upgrade
Required`` with ``Sec-WebSocket-Version: 13``, as RFC 6455 §4.4 asks (``websockets`` answered
400 without it).

When the request passes, ``Opening`` holds what the answer and the scope need;
``switching_protocols`` writes the 101 response when the app accepts, and ``frame_protocol``
makes the ``websockets`` protocol that frames the connection from there on.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from websockets.extensions import ServerExtensionFactory
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS
from websockets.protocol import CONNECTING, SERVER
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import LoggerLike

#: RFC 6455 §1.3.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: ``websockets``' request line: method, space, target, `` HTTP/1.1\r\n``.
_REQUEST_LINE_EXTRA = 1 + len(b" HTTP/1.1\r\n")
#: ``name: value\r\n``.
_HEADER_LINE_EXTRA = len(b": \r\n")
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
#: A comma-separated list of tokens without empty elements: what ``websockets`` reads the same.
_TOKEN_LIST = re.compile(_TOKEN + rb"(?:[ \t]*,[ \t]*" + _TOKEN + rb")*")
#: Exactly the base64 encodings of 16 bytes.
_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
_WHITESPACE = b" \t"

_CONNECTION = b"connection"
_UPGRADE = b"upgrade"
_KEY_NAME = b"sec-websocket-key"
_VERSION = b"sec-websocket-version"
_ORIGIN = b"origin"
_PROTOCOL = b"sec-websocket-protocol"
_EXTENSIONS = b"sec-websocket-extensions"
#: Headers ``websockets`` refuses a handshake for, whatever their value (but ``Content-Length:
#: 0``, left to it as well).
_BODY = (b"transfer-encoding", b"content-length")
_NOTED = frozenset((_CONNECTION, _UPGRADE, _KEY_NAME, _VERSION, _ORIGIN, _PROTOCOL, _EXTENSIONS))


class Opening:
    """A handshake request that passed: what the 101 response and the ASGI scope are made of."""

    __slots__ = ("accept", "extensions", "headers", "path", "subprotocols")

    def __init__(
        self,
        accept: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]],
        subprotocols: list[str],
        extensions: list[str],
    ) -> None:
        #: The ``Sec-WebSocket-Accept`` value.
        self.accept = accept
        #: The request target (path and query), as sent.
        self.path = path
        #: The request's headers, names lower case, values without surrounding whitespace.
        self.headers = headers
        #: The subprotocols offered, in order.
        self.subprotocols = subprotocols
        #: The ``Sec-WebSocket-Extensions`` values, for the protocol's own negotiation.
        self.extensions = extensions


def accept_value(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def read_opening(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> Opening | bytes | None:
    """Check an upgrade request parsed by httptools (``headers``: names lower case, as uvicorn
    keeps them). An ``Opening`` when it passes; a complete refusal (426) for a version other
    than 13; None when ``websockets`` is to read the request instead (see the module
    docstring)."""
    if (
        method != "GET"
        or len(headers) > MAX_NUM_HEADERS
        or len(method) + len(target) + _REQUEST_LINE_EXTRA > MAX_LINE_LENGTH
        or not target.isascii()
    ):
        return None
    key: bytes | None = None
    version: bytes | None = None
    upgrades = origins = 0
    subprotocols: list[str] = []
    extensions: list[str] = []
    clean = headers
    for index, (name, value) in enumerate(headers):
        if len(name) + len(value) + _HEADER_LINE_EXTRA > MAX_LINE_LENGTH:
            return None
        if value[-1:] in _WHITESPACE:
            # httptools keeps trailing whitespace; ``websockets`` (and so the scope) does not.
            value = value.rstrip(_WHITESPACE)
            if clean is headers:
                clean = list(headers)
            clean[index] = (name, value)
        if name not in _NOTED:
            if name in _BODY:
                return None
            continue
        if name == _KEY_NAME:
            if key is not None:
                return None
            key = value
        elif name == _VERSION:
            if version is not None:
                return None
            version = value
        elif name == _CONNECTION:
            if _TOKEN_LIST.fullmatch(value) is None:
                return None
        elif name == _UPGRADE:
            upgrades += 1
        elif name == _ORIGIN:
            origins += 1
        elif name == _PROTOCOL:
            if _TOKEN_LIST.fullmatch(value) is None:
                return None
            subprotocols += [item.strip() for item in value.decode("ascii").split(",")]
        else:  # _EXTENSIONS
            extensions.append(value.decode("latin-1"))
    # uvicorn upgrades only when the last ``Upgrade`` is ``websocket`` and the last
    # ``Connection`` names ``upgrade``; ``websockets`` wants one ``Upgrade`` protocol in all.
    if key is None or _KEY.fullmatch(key) is None or version is None or upgrades != 1:
        return None
    if version != b"13":
        return version_refusal(version)
    if origins > 1:
        return None
    return Opening(accept_value(key), target.decode("ascii"), clean, subprotocols, extensions)


def version_refusal(version: bytes) -> bytes:
    """``426 Upgrade Required`` naming the version this server speaks (RFC 6455 §4.4)."""
    shown = version[:40].decode("latin-1")
    body = (
        f"Failed to open a WebSocket connection: unsupported Sec-WebSocket-Version {shown}; "
        "this server speaks version 13.\n"
    ).encode("latin-1")
    return b"".join(
        (
            b"HTTP/1.1 426 Upgrade Required\r\n",
            b"Connection: close\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Upgrade: websocket\r\n",
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            body,
        )
    )


def response_head(accept: bytes, extensions: str | None) -> bytes:
    """The start of the 101 response: what ``websockets``' ``accept`` answers, minus its
    ``Date`` (uvicorn drops it for its own)."""
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    )
    if extensions is not None:
        head += b"Sec-WebSocket-Extensions: " + extensions.encode("latin-1") + b"\r\n"
    return head


def switching_protocols(
    head: bytes, headers: Iterable[tuple[bytes, bytes]], subprotocol: str | None
) -> bytes:
    """The whole 101 response: ``head`` (``response_head``), then ``headers`` (uvicorn's
    default ones and the app's, names lower case, as uvicorn writes them) and the subprotocol
    chosen."""
    parts = [head]
    for name, value in headers:
        parts += (name.lower(), b": ", value, b"\r\n")
    if subprotocol:
        parts += (b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def scope_path(root_path: str, target: str) -> tuple[str, bytes, bytes]:
    """``path``, ``raw_path`` and ``query_string`` of the ASGI scope, as uvicorn's
    websockets protocol makes them from the request target."""
    raw_path, _, query = target.partition("?")
    return (
        root_path + unquote(raw_path),
        root_path.encode("ascii") + raw_path.encode("ascii"),
        query.encode("ascii"),
    )


def websocket_scope(
    opening: Opening,
    *,
    asgi_version: str,
    scheme: str,
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    root_path: str,
    state: dict[str, Any],
    extensions: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI scope of the connection, as uvicorn's websockets protocol makes it."""
    path, raw_path, query_string = scope_path(root_path, opening.path)
    return {
        "type": "websocket",
        "asgi": {"version": asgi_version, "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": scheme,
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": path,
        "raw_path": raw_path,
        "query_string": query_string,
        "headers": opening.headers,
        "subprotocols": opening.subprotocols,
        "state": state,
        "extensions": extensions,
    }


#: The ``id`` of every ``frame_protocol``: ``websockets`` uses it in its own logs only, which
#: the broker's protocol does not write; a ``uuid4`` per connection costs a ``getrandom(2)``.
NO_ID = uuid.UUID(int=0)


def frame_protocol(
    *,
    extensions: Sequence[ServerExtensionFactory] | None,
    max_size: int | None,
    logger: LoggerLike,
) -> ServerProtocol:
    """A ``websockets`` ``ServerProtocol`` as ``ServerProtocol(extensions=..., max_size=...,
    logger=...)`` makes it, for a handshake read by ``read_opening``: its parser starts with
    frames instead of the request (as after ``websockets``' own parse of it), in state
    CONNECTING until the 101 is written; without the ``uuid4`` (``NO_ID``) and the request
    parser it would start and drop. The attributes are those of ``websockets`` 17.4's
    constructors (tests/hostile/test_handshake_answers.py compares them)."""
    conn = ServerProtocol.__new__(ServerProtocol)
    conn.__dict__.update(
        id=NO_ID,
        logger=logger,
        debug=logger.isEnabledFor(logging.DEBUG),
        side=SERVER,
        _state=CONNECTING,
        max_message_size=max_size,
        max_fragment_size=None,
        current_size=None,
        expect_continuation_frame=False,
        origin=None,
        extensions=[],
        subprotocol=None,
        close_rcvd=None,
        close_sent=None,
        close_rcvd_then_sent=None,
        handshake_exc=None,
        eof_sent=False,
        reader=StreamReader(),
        events=[],
        writes=[],
        parser_exc=None,
        origins=None,
        available_extensions=extensions,
        available_subprotocols=None,
        accept_called=False,
    )
    conn.parser = WebSocketProtocol.parse(conn)
    next(conn.parser)
    return conn
