"""The HTTP API (docs/protocol.md §2) for back-end services and operators.

Every route but ``/healthz`` and ``/readyz`` needs an API key once one is configured
(broker/http_auth.py); ``/metrics`` too unless ``api.metrics_require_key`` is false. Bodies are
``application/json`` only (415 otherwise). There is no CORS: browsers of other origins cannot
call it. ``/openapi.json`` describes every route with its error answers; ``/docs`` shows it.

Acting on clients (disconnect a client or a user, subscribe or unsubscribe a user) acts on the
connections of every process, over the control path (broker/control.py), and answers how many
it affected broker-wide.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from broker import http_models as models
from broker.backplane import BackplaneUnavailable
from broker.backplane.control import (
    DisconnectClient,
    DisconnectUser,
    SubscribeUser,
    UnsubscribeUser,
)
from broker.client_faults import client_faults
from broker.conversion import UnconvertibleData, convert_for_subscribers
from broker.dependencies import BrokerDep
from broker.http_auth import FullKey, JsonBody, MetricsKey, PublishKey
from broker.metrics import CONTENT_TYPE, scrape
from protocol import (
    JSON,
    Channel,
    IdempotencyKey,
    StreamPosition,
    explain_channel_errors,
    is_valid_channel,
    namespace_of,
)

router = APIRouter()
_T = TypeVar("_T")


class PublishBody(msgspec.Struct, frozen=True):
    channel: Channel
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


class BroadcastBody(msgspec.Struct, frozen=True):
    channels: Annotated[list[Channel], msgspec.Meta(min_length=1, max_length=1000)]
    data: msgspec.Raw


class UnsubscribeBody(msgspec.Struct, frozen=True):
    channel: Channel


class SubscribeBody(msgspec.Struct, frozen=True):
    channel: Channel
    #: Only this connection of the user.
    client: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    #: Subscribe from this position (Centrifugo's ``recover_since``).
    since: StreamPosition | None = None


_encoder = msgspec.json.Encoder()
_UNAVAILABLE = {"error": "unavailable", "message": "the broker cannot serve this right now"}


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


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


async def _decode(request: Request, limit: int, kind: type[_T]) -> _T:
    raw = await _read_body(request, limit)
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise HTTPException(
            status_code=400, detail=explain_channel_errors(str(exc))[:500]
        ) from None


def _channel(channel: str) -> str:
    if not is_valid_channel(channel):
        raise HTTPException(status_code=400, detail=f"not a channel name: {channel[:300]!r}")
    return channel


@router.post(
    "/v1/publish",
    response_model=models.Published,
    responses=models.errors(400, 401, 413, 415, 503),
    openapi_extra=_body_schema(models.PublishRequest),
    dependencies=[PublishKey, JsonBody],
)
async def publish(request: Request, broker: BrokerDep) -> Response:
    """Publish ``data`` in ``channel``; its offset and epoch."""
    # The same bound as a WebSocket client's message (websocket.max_message_bytes), plus room
    # for the JSON around ``data``.
    body = await _decode(request, broker.settings.websocket.max_message_bytes + 1024, PublishBody)
    try:
        converted = convert_for_subscribers(body.data, JSON)
    except UnconvertibleData as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    try:
        head = await broker.publish(
            body.channel, body.data, JSON, None, converted, body.idempotency_key
        )
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"channel": body.channel, "offset": head.offset, "epoch": head.epoch})


@router.post(
    "/v1/broadcast",
    response_model=models.BroadcastResult,
    responses=models.errors(400, 401, 413, 415),
    openapi_extra=_body_schema(models.BroadcastRequest),
    dependencies=[PublishKey, JsonBody],
)
async def broadcast(request: Request, broker: BrokerDep) -> Response:
    """Publish the same ``data`` in each of ``channels``; one outcome per channel, in order."""
    limit = broker.settings.websocket.max_message_bytes + 1024 + 256 * 1000
    body = await _decode(request, limit, BroadcastBody)
    try:
        converted = convert_for_subscribers(body.data, JSON)
    except UnconvertibleData as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    results: list[dict[str, object]] = []
    for channel in body.channels:
        try:
            head = await broker.publish(channel, body.data, JSON, None, converted)
        except BackplaneUnavailable:
            results.append({"channel": channel, "error": "unavailable"})
        else:
            results.append({"channel": channel, "offset": head.offset, "epoch": head.epoch})
    return _json({"results": results})


@router.get(
    "/v1/channels",
    response_model=models.ChannelList,
    responses=models.errors(401, 403, 503),
    dependencies=[FullKey],
)
async def channels(broker: BrokerDep) -> Response:
    """The channels with subscribers, with their count, for the whole broker: every process
    answers (on Redis, over the backplane's bus)."""
    try:
        listing = await broker.control.channels()
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"channels": [{"channel": name, "subscribers": n} for name, n in listing]})


@router.get(
    "/v1/channels/{channel:path}/history",
    response_model=models.HistoryResult,
    responses=models.errors(400, 401, 403, 404, 503),
    dependencies=[FullKey],
)
async def history(
    channel: str,
    broker: BrokerDep,
    limit: Annotated[int | None, Query(ge=0, le=10_000)] = None,
) -> Response:
    """The latest ``limit`` retained publications of ``channel`` (all when omitted), oldest
    first, as ``message`` objects."""
    _channel(channel)
    options = broker.settings.namespace(namespace_of(channel))
    if options.history_size == 0:
        raise HTTPException(
            status_code=400,
            detail=f"history is not enabled in namespace {namespace_of(channel)!r}",
        )
    try:
        page = await broker.backplane.latest(channel, limit, options)
        publications = [p.message(JSON.encoding) for p in page.publications]
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json(
        {
            "channel": channel,
            "epoch": page.head.epoch,
            "offset": page.head.offset,
            "publications": publications,
        }
    )


@router.get(
    "/v1/channels/{channel:path}/presence",
    response_model=models.PresenceResult,
    responses=models.errors(400, 401, 403, 404, 503),
    dependencies=[FullKey],
)
async def presence(channel: str, broker: BrokerDep) -> Response:
    """Who is subscribed to ``channel``, on every process."""
    _channel(channel)
    if not broker.settings.namespace(namespace_of(channel)).presence:
        raise HTTPException(
            status_code=400,
            detail=f"presence is not enabled in namespace {namespace_of(channel)!r}",
        )
    try:
        members = await broker.backplane.presence(channel)
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"channel": channel, "clients": members})


@router.post(
    "/v1/clients/{client}/disconnect",
    response_model=models.ClientDisconnected,
    responses=models.errors(401, 403),
    dependencies=[FullKey],
)
async def disconnect(client: str, broker: BrokerDep) -> Response:
    """Close the connection of ``client`` (4010, ``reconnect`` false), on whichever process
    has it."""
    try:
        count = await broker.control.count(DisconnectClient(client))
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"client": client, "disconnected": count > 0})


@router.post(
    "/v1/users/{user}/disconnect",
    response_model=models.UserDisconnected,
    responses=models.errors(401, 403, 503),
    dependencies=[FullKey],
)
async def disconnect_user(user: str, broker: BrokerDep) -> Response:
    """Close every connection of ``user`` (4010, ``reconnect`` false), on every process."""
    try:
        count = await broker.control.count(DisconnectUser(user))
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"user": user, "disconnected": count})


@router.post(
    "/v1/users/{user}/subscribe",
    response_model=models.UserSubscribed,
    responses=models.errors(400, 401, 403, 413, 415, 503),
    openapi_extra=_body_schema(models.SubscribeRequest),
    dependencies=[FullKey, JsonBody],
)
async def subscribe_user(user: str, request: Request, broker: BrokerDep) -> Response:
    """Subscribe every connection of ``user`` (or only ``client``) to ``channel``, on every
    process, as a server-side subscription: ``subscribed`` with id 0 on ``/v1/ws``, a
    ``subscribe`` push on Centrifugo's protocol. Connections already subscribed to it are left
    as they are; the answer counts those subscribed."""
    body = await _decode(request, 4096, SubscribeBody)
    command = SubscribeUser(user, body.channel, body.client, body.since)
    try:
        count = await broker.control.count(command)
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"user": user, "channel": body.channel, "subscribed": count})


@router.post(
    "/v1/users/{user}/unsubscribe",
    response_model=models.UserUnsubscribed,
    responses=models.errors(400, 401, 403, 413, 415, 503),
    openapi_extra=_body_schema(models.UnsubscribeRequest),
    dependencies=[FullKey, JsonBody],
)
async def unsubscribe_user(user: str, request: Request, broker: BrokerDep) -> Response:
    """Unsubscribe every connection of ``user`` from ``channel``, on every process; each gets
    ``unsubscribed`` with id 0."""
    body = await _decode(request, 4096, UnsubscribeBody)
    try:
        count = await broker.control.count(UnsubscribeUser(user, body.channel))
    except BackplaneUnavailable:
        return _json(_UNAVAILABLE, 503)
    return _json({"user": user, "channel": body.channel, "unsubscribed": count})


@router.get(
    "/healthz",
    response_model=models.Health,
    responses={503: {"model": models.Health, "description": "The broker has failed."}},
)
async def healthz(broker: BrokerDep) -> Response:
    """200 while the broker works; 503 with the reason once it has failed (its hub or backplane
    stopped): restart it."""
    if broker.failure is not None:
        return _json({"status": "failed", "reason": broker.failure}, 503)
    return _json({"status": "ok"})


@router.get(
    "/readyz",
    response_model=models.Readiness,
    responses={503: {"model": models.Readiness, "description": "Not ready."}},
)
async def readyz(broker: BrokerDep) -> Response:
    ready = broker.ready
    return _json({"ready": ready}, 200 if ready else 503)


@router.get(
    "/metrics",
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format."},
        **models.errors(401, 403),
    },
    dependencies=[MetricsKey],
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    body = await scrape(state.metrics_registry, state.metrics_workers_dir)
    return Response(body, media_type=CONTENT_TYPE)
