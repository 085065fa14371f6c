"""The WebSocket endpoints: ``/v1/ws`` (docs/protocol.md §1) and the plain ``/ws``, ``/ws/data`` and
``/ws/chat`` (§3). Each admits the client, runs a ``Connection`` with the endpoint's reader, and
leaves nothing behind when it ends.

They are FastAPI routes (``router``, with the ``get_broker`` and ``get_settings`` dependencies),
and ``ENDPOINTS`` lists them by path for ``BrokerApp`` (broker/app.py), which calls them directly
when nothing customises the app: a connection then holds no FastAPI frames for its lifetime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocketState

from broker.auth import Refused
from broker.centrifugo.endpoint import serve_centrifugo
from broker.client_faults import client_faults, peer
from broker.conformance import run_conformance_echo
from broker.connection import Connection
from broker.dependencies import BrokerDep, SettingsDep
from broker.logs import get_logger
from broker.plain import run_chat, run_data, run_echo
from broker.runtime import Broker
from broker.settings import Settings
from broker.transport import HOLD_RESPONSE
from broker.v1 import V1Reader
from protocol import (
    CLOSE_REASONS,
    CloseCode,
    Codec,
    Disconnect,
    codec_for_subprotocols,
)

router = APIRouter()
log = get_logger("broker.websocket")

#: The echo route for conformance tests (``websocket.conformance_echo``; 404 when off).
CONFORMANCE_ECHO = "/conformance/echo"


async def deny(
    websocket: WebSocket,
    status: int,
    reason: str,
    event: str = "connection.refused",
    **fields: object,
) -> None:
    """Refuse the handshake with an HTTP ``status`` and ``reason`` as a plain-text body, so that
    whoever reads it learns what was wrong. A server without the ASGI denial-response
    extension answers 403 with no body instead. Logged as ``connection.refused``, rate-limited
    with the other client faults: a client may try again and again."""
    client_faults.info(
        event,
        status=status,
        path=websocket.url.path[:200],
        remote=peer(websocket.scope.get("client")),
        reason=reason[:200],
        **fields,
    )
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
    else:
        await websocket.close(code=1008)


async def _admit(websocket: WebSocket, broker: Broker, codec: Codec | None) -> bool:
    """Accept the handshake, or refuse it; False when the connection must not go on."""
    origin = websocket.headers.get("origin")
    if not broker.origin_allowed(origin, websocket.headers.get("host")):
        await deny(
            websocket,
            403,
            f"origin {origin} is not allowed: server.allowed_origins (empty means the same "
            "origin as the broker's own address)",
            event="connection.origin_refused",
            origin=origin[:200] if origin else origin,
        )
        return False
    refusal: str | None = None
    if codec is None and broker.auth.enforced:
        # The plain endpoints have no ``connect`` message: the handshake must authenticate.
        try:
            if await broker.auth.identity_from_handshake(websocket) is None:
                refusal = "no token"
        except Refused as refused:
            refusal = refused.reason
    offered = websocket.scope.get("subprotocols") or []
    if websocket.client_state is WebSocketState.CONNECTING:
        await websocket.receive()  # the ASGI ``websocket.connect``, as ``accept`` does
    accept: dict[str, object] = {
        "type": "websocket.accept",
        "subprotocol": codec.encoding.subprotocol if codec and offered else None,
        "headers": [],
    }
    if codec is not None:
        # ``/v1/ws`` writes ``welcome`` in this turn: the 101 response waits for it.
        accept[HOLD_RESPONSE] = True
    await websocket.send(accept)
    if refusal is not None:
        client_faults.info("auth.refused", reason=refusal, endpoint=websocket.url.path)
        await websocket.close(code=CloseCode.UNAUTHORIZED, reason=refusal[:120])
        return False
    refusal = broker.admission_refusal(websocket.scope)
    if refusal is not None:
        broker.refused(refusal)
        code = CloseCode.TRY_AGAIN_LATER
        if codec is not None:
            notice = Disconnect(
                code=code,
                reason=CLOSE_REASONS[code],
                reconnect=True,
                retry_after=broker.settings.limits.retry_after,
            )
            if codec.text:
                await websocket.send_text(codec.encode(notice).decode())
            else:
                await websocket.send_bytes(codec.encode(notice))
        await websocket.close(code=code, reason=CLOSE_REASONS[code])
        return False
    return True


def _connection(
    websocket: WebSocket, broker: Broker, settings: Settings, codec: Codec | None, endpoint: str
) -> Connection:
    return Connection(
        websocket,
        hub=broker.hub,
        settings=settings,
        codec=codec,
        endpoint=endpoint,
        flusher=broker.flusher,
    )


async def _run(
    connection: Connection, broker: Broker, reader: Callable[[], Awaitable[None]]
) -> None:
    broker.add(connection)
    try:
        await connection.run(reader)
    finally:
        broker.remove(connection)


async def serve_v1(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    codec = codec_for_subprotocols(websocket.scope.get("subprotocols") or [])
    if codec is None:
        # Only unknown subprotocols offered: refuse the handshake (docs/protocol.md §1).
        offered = ", ".join(websocket.scope.get("subprotocols") or [])
        await deny(
            websocket,
            400,
            f"unknown subprotocol ({offered}): offer broker.v1.json or broker.v1.msgpack, "
            "or none for JSON",
        )
        return
    if not await _admit(websocket, broker, codec):
        return
    connection = _connection(websocket, broker, settings, codec, "/v1/ws")
    await _run(connection, broker, V1Reader(connection, broker, codec).run)


async def serve_echo(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    if not await _admit(websocket, broker, None):
        return
    connection = _connection(websocket, broker, settings, None, "/ws")
    await _run(connection, broker, lambda: run_echo(connection))


async def serve_data(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    if not await _admit(websocket, broker, None):
        return
    connection = _connection(websocket, broker, settings, None, "/ws/data")
    await _run(connection, broker, lambda: run_data(connection))


async def serve_chat(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    if not await _admit(websocket, broker, None):
        return
    connection = _connection(websocket, broker, settings, None, "/ws/chat")
    await _run(connection, broker, lambda: run_chat(connection, broker.hub))


async def serve_conformance_echo(websocket: WebSocket, broker: Broker, settings: Settings) -> None:
    if not settings.websocket.conformance_echo:
        await websocket.send_denial_response(PlainTextResponse("Not Found", status_code=404))
        return
    if not await _admit(websocket, broker, None):
        return
    connection = _connection(websocket, broker, settings, None, CONFORMANCE_ECHO)
    await _run(connection, broker, lambda: run_conformance_echo(connection))


Endpoint = Callable[[WebSocket, Broker, Settings], Awaitable[None]]

#: The WebSocket endpoints by path, for ``BrokerApp``'s direct dispatch.
ENDPOINTS: dict[str, Endpoint] = {
    "/v1/ws": serve_v1,
    "/ws": serve_echo,
    "/ws/data": serve_data,
    "/ws/chat": serve_chat,
    "/connection/websocket": serve_centrifugo,
    CONFORMANCE_ECHO: serve_conformance_echo,
}


def _route(path: str, endpoint: Endpoint) -> None:
    async def route(websocket: WebSocket, broker: BrokerDep, settings: SettingsDep) -> None:
        await endpoint(websocket, broker, settings)

    router.add_api_websocket_route(path, route, name=endpoint.__name__)


for _path, _endpoint in ENDPOINTS.items():
    _route(_path, _endpoint)
