"""``/connection/websocket``: admission, then a ``CentrifugoConnection`` with its reader.

Admission is that of ``/v1/ws``: the ``Origin`` check, then the connection limit, answered in
Centrifugo's form (a ``disconnect`` push, 4013, reconnect). Centrifugo's Protobuf framing (the
``centrifuge-protobuf`` subprotocol, or ``?format=protobuf``) is refused at the handshake with
HTTP 400 saying so.
"""

from __future__ import annotations

from fastapi import WebSocket
from starlette.responses import PlainTextResponse

from broker.centrifugo.connection import CentrifugoConnection
from broker.centrifugo.reader import CentrifugoReader
from broker.runtime import Broker
from broker.settings import Settings
from protocol import CloseCode
from protocol.centrifugo.framing import encode_reply
from protocol.centrifugo.render import disconnect_push

PATH = "/connection/websocket"
PROTOBUF = "centrifuge-protobuf"


async def _deny(websocket: WebSocket, status: int, reason: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
    else:
        await websocket.close(code=1008)


async def serve_centrifugo(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    offered = websocket.scope.get("subprotocols") or []
    if PROTOBUF in offered or websocket.query_params.get("format") == "protobuf":
        await _deny(
            websocket, 400, "Centrifugo's Protobuf framing is not supported: use its JSON protocol"
        )
        return
    origin = websocket.headers.get("origin")
    if not broker.origin_allowed(origin, websocket.headers.get("host")):
        await _deny(websocket, 403, f"origin {origin} is not allowed (server.allowed_origins)")
        return
    await websocket.accept()
    if broker.at_capacity():
        broker.refused()
        code = CloseCode.TRY_AGAIN_LATER
        notice = disconnect_push(code, "", True)
        await websocket.send_text(encode_reply(notice).decode())
        push = notice.push
        assert push is not None and push.disconnect is not None
        await websocket.close(code=push.disconnect.code, reason=push.disconnect.reason)
        return
    connection = CentrifugoConnection(
        websocket, hub=broker.hub, settings=settings, endpoint=PATH, flusher=broker.flusher
    )
    broker.add(connection)
    try:
        await connection.run(CentrifugoReader(connection, broker).run)
    finally:
        broker.remove(connection)
