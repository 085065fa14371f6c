"""The HTTP API (PROTOCOL.md §2) for back-end services and operators.

Built so far: ``POST /v1/publish``, ``GET /v1/channels``, ``POST /v1/clients/{client}/disconnect``,
``GET /healthz``, ``GET /readyz`` and ``GET /metrics``. API-key auth is not built yet: bind the
broker to a private interface or put it behind a proxy until it is.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, HTTPException, Request, Response

from broker.backplane import BackplaneUnavailable
from broker.backplane.control import DisconnectClient
from broker.conversion import UnconvertibleData, convert_for_subscribers
from broker.dependencies import BrokerDep
from broker.metrics import CONTENT_TYPE, scrape
from protocol import JSON, Channel, IdempotencyKey, explain_channel_errors

router = APIRouter()


class PublishBody(msgspec.Struct, frozen=True):
    channel: Channel
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


_body_decoder = msgspec.json.Decoder(PublishBody)
_encoder = msgspec.json.Encoder()


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is larger than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
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
        head = await broker.publish(
            body.channel, body.data, JSON, None, converted, body.idempotency_key
        )
    except BackplaneUnavailable:
        return _json(
            {"error": "unavailable", "message": "the broker cannot publish right now"}, 503
        )
    return _json({"channel": body.channel, "offset": head.offset, "epoch": head.epoch})


@router.get("/v1/channels")
async def channels(broker: BrokerDep) -> Response:
    # For the whole broker: every process answers (on Redis, over the backplane's bus).
    try:
        listing = await broker.control.channels()
    except BackplaneUnavailable:
        return _json({"error": "unavailable", "message": "the broker cannot list channels"}, 503)
    return _json({"channels": [{"channel": name, "subscribers": n} for name, n in listing]})


@router.post("/v1/clients/{client}/disconnect")
async def disconnect(client: str, broker: BrokerDep) -> Response:
    # On whichever process the client is connected to.
    try:
        count = await broker.control.count(DisconnectClient(client))
    except BackplaneUnavailable:
        return _json({"error": "unavailable", "message": "the broker cannot reach it"}, 503)
    return _json({"client": client, "disconnected": count > 0})


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
