"""One WebSocket connection of the client: the handshake up to ``welcome``, and the requests
waiting for a reply on it. The session (``session.py``) replaces a ``Link`` when it is lost."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException
from websockets.typing import Subprotocol

from protocol import Codec, Disconnect, ServerMessage, Welcome

#: Close codes after which the same client would be refused again: do not reconnect
#: (protocol error, wrong frame kind, bad data, policy, too big, extension, unauthorized).
FINAL_CLOSE_CODES: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 4001})

#: What opening a connection can fail with, short of a bug.
OPEN_ERRORS: Final = (
    OSError,
    TimeoutError,
    WebSocketException,
    msgspec.MsgspecError,
    RecursionError,
    UnicodeDecodeError,
    ValueError,
)


class Refused(Exception):
    """The server answered the handshake with ``disconnect`` instead of ``welcome`` (1013)."""

    def __init__(self, notice: Disconnect) -> None:
        super().__init__(f"refused: {notice.code} {notice.reason}")
        self.notice = notice


@dataclass(eq=False, slots=True)
class Link:
    """One WebSocket connection, from ``welcome`` to its close."""

    ws: ClientConnection
    welcome: Welcome
    #: 1 for the client's first connection, then 2, 3, ...
    number: int
    #: Messages that came in the same frame as ``welcome``.
    backlog: list[ServerMessage]
    #: Every subscription has been sent on it: user requests may go.
    ready: bool = False
    #: The ``disconnect`` notice the server sent before closing, if any.
    notice: Disconnect | None = None
    #: The client gave up on it (a bad frame, an overdue pong): reconnect whatever the close code.
    broken: bool = False

    def abort(self) -> None:
        """Cut the connection at once, without a close handshake."""
        self.broken = True
        self.ws.transport.abort()


@dataclass(eq=False, slots=True)
class Pending:
    """A request waiting for its reply. ``on_reply`` runs in the reader, in stream order."""

    link: Link
    on_reply: Callable[[ServerMessage], None] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: ServerMessage | None = None
    error: BaseException | None = None

    def resolve(self, reply: ServerMessage) -> None:
        if self.on_reply is not None:
            self.on_reply(reply)
        self.reply = reply
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


async def open_link(
    url: str,
    *,
    codec: Codec,
    headers: Mapping[str, str],
    open_timeout: float,
    max_frame_bytes: int | None,
    number: int,
) -> Link:
    """A connection to ``url`` speaking ``codec``'s encoding that has read its ``welcome``.

    Raises one of ``OPEN_ERRORS``, or ``Refused`` when the server sent ``disconnect`` instead.
    """
    subprotocol = codec.encoding.subprotocol
    ws = await ws_connect(
        url,
        subprotocols=[Subprotocol(subprotocol)],
        additional_headers=dict(headers),
        compression=None,
        open_timeout=open_timeout,
        # Liveness is the protocol's ``ping``/``pong`` (the session's heartbeat); websockets'
        # own keepalive would only duplicate it.
        ping_interval=None,
        max_size=max_frame_bytes,
        close_timeout=2,
    )
    try:
        if ws.subprotocol != subprotocol:
            raise ValueError(
                f"the server chose subprotocol {ws.subprotocol!r}, not {subprotocol!r}"
            )
        with anyio.fail_after(open_timeout):
            frame = await ws.recv(decode=False)
        messages = codec.decode_server(frame)
        first = messages[0] if messages else None
        if isinstance(first, Disconnect):
            raise Refused(first)
        if not isinstance(first, Welcome):
            raise ValueError(f"expected welcome, got {first!r}")
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await ws.close()
        raise
    return Link(ws, first, number, messages[1:])
