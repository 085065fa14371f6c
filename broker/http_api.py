"""The HTTP API (PROTOCOL.md §2) for back-end services and operators.

Built so far: ``POST /v1/publish``, ``GET /v1/channels``, ``POST /v1/clients/{client}/disconnect``,
``GET /healthz``, ``GET /readyz`` and ``GET /metrics``. API-key auth is not built yet: bind the
broker to a private interface or put it behind a proxy until it is.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, HTTPException, Request, Response
from starlette.requests import ClientDisconnect

from broker.backplane import BackplaneUnavailable
from broker.client_faults import client_faults
from broker.conversion import UnconvertibleData, convert_for_subscribers
from broker.dependencies import BrokerDep, HubDep
from broker.hub import ChannelsQuery, Reply
from broker.metrics import CONTENT_TYPE, scrape
from protocol import JSON, Channel, CloseCode, explain_channel_errors

router = APIRouter()


class PublishBody(msgspec.Struct, frozen=True):
    channel: Channel
    data: msgspec.Raw


_body_decoder = msgspec.json.Decoder(PublishBody)
_encoder = msgspec.json.Encoder()


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is larger than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client's doing, not a fault of the broker: one line, no traceback (and none when
        # the request deadline already logged it). Nobody is left to read the answer.
        if not request.scope.get("broker.timed_out"):
            client = request.client
            client_faults.info(
                "http.client_disconnected",
                remote=None if client is None else f"{client.host}:{client.port}",
                path=request.url.path,
                received=size,
            )
        raise HTTPException(status_code=400, detail="client disconnected") from None
    return b"".join(chunks)


@router.post("/v1/publish")
async def publish(request: Request, broker: BrokerDep) -> Response:
    # The same bound as a WebSocket client's message (websocket.max_message_bytes), plus room
    # for the JSON around ``data``.
    limit = broker.settings.websocket.max_message_bytes + 1024
    raw = await _read_body(request, limit)
    try:
        body = _body_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise HTTPException(status_code=400, detail=explain_channel_errors(str(exc))) from None
    try:
        converted = convert_for_subscribers(body.data, JSON)
    except UnconvertibleData as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    try:
        head = await broker.publish(body.channel, body.data, JSON, None, converted)
    except BackplaneUnavailable:
        return _json(
            {"error": "unavailable", "message": "the broker cannot publish right now"}, 503
        )
    return _json({"channel": body.channel, "offset": head.offset, "epoch": head.epoch})


@router.get("/v1/channels")
async def channels(hub: HubDep) -> Response:
    reply: Reply[list[tuple[str, int]]] = Reply()
    await hub.submit(ChannelsQuery(reply))
    listing = await reply.wait()
    return _json(
        {
            "channels": [
                {"channel": name, "subscribers": count}
                for name, count in listing
                if not name.startswith("#")
            ]
        }
    )


@router.post("/v1/clients/{client}/disconnect")
async def disconnect(client: str, broker: BrokerDep) -> Response:
    connection = broker.connections.get(client)
    if connection is not None:
        connection.request_close(CloseCode.DISCONNECTED_BY_OPERATOR)
    return _json({"client": client, "disconnected": connection is not None})


@router.get("/healthz")
async def healthz(broker: BrokerDep) -> Response:
    """200 while the broker works; 503 with the reason once it has failed (its hub or backplane
    stopped): restart it."""
    if broker.failure is not None:
        return _json({"status": "failed", "reason": broker.failure}, 503)
    return _json({"status": "ok"})


@router.get("/readyz")
async def readyz(broker: BrokerDep) -> Response:
    ready = broker.ready
    return _json({"ready": ready}, 200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state
    body = await scrape(state.metrics_registry, state.metrics_workers_dir)
    return Response(body, media_type=CONTENT_TYPE)
