"""``GET /v1/stats``: the process's live figures as one JSON object, for the web console and
for scripts that do not speak Prometheus.

::

    {"pid": 4242, "uptime": 81.5, "connections": 3, "subscriptions": 5, "channels": 2,
     "publications": 120, "deliveries": 360,
     "drops": {"slow_consumer": 1, "heartbeat_timeout": 0, "rate_limit_abuse": 0,
               "message_too_big": 0, "idle": 0, "gap": 0},
     "outbox_messages": 0}

``publications`` and ``deliveries`` are totals since start (the hub's counters, the same as
``broker_publications`` and ``broker_deliveries`` in ``/metrics``): a reader computes rates from
two samples. ``drops`` counts clients dropped by the broker, by reason: ``slow_consumer`` (close
4008 or a reset: outbox overflow or a stuck write), ``heartbeat_timeout`` (4009),
``rate_limit_abuse`` (4029), ``message_too_big`` (1009), ``idle`` (1008), and ``gap``: ranges
of publications this process could not deliver (lost in a backplane outage and no longer
retained, or not encodable) and reported as ``gap``, like ``broker_gaps`` in ``/metrics``.
Publications an outbox drops under ``queue.overflow = "drop_oldest"`` are not counted here: the
broker keeps no total of them. ``outbox_messages`` is the number of frames queued in every
connection's outbox right now. Everything is read from counters the broker keeps anyway, at
request time. Like the rest of the HTTP API it needs an API key once ``[api]`` has keys.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, Field

from broker import http_models
from broker.dependencies import BrokerDep
from broker.http_auth import FullKey
from broker.runtime import Broker
from protocol import CloseCode

#: ``drops`` keys counted from close codes.
_CLOSE_DROPS: Final = {
    "heartbeat_timeout": CloseCode.HEARTBEAT_TIMEOUT,
    "rate_limit_abuse": CloseCode.RATE_LIMIT_ABUSE,
    "message_too_big": CloseCode.MESSAGE_TOO_BIG,
    "idle": CloseCode.POLICY_VIOLATION,
}

_encoder = msgspec.json.Encoder()


def snapshot(broker: Broker, started: float) -> dict[str, Any]:
    """The figures of ``broker``, which started at ``started`` (``time.monotonic()``)."""
    hub = broker.hub.statistics()
    connections = list(broker.connections.values())
    # Closed connections are in the totals; one being dropped right now is not yet.
    slow_now = sum(1 for connection in connections if connection.slow_consumer is not None)
    drops = {"slow_consumer": broker.totals.slow_consumers + slow_now}
    for name, code in _CLOSE_DROPS.items():
        drops[name] = broker.close_codes.get(code, 0)
    drops["gap"] = hub.gaps
    return {
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - started, 3),
        "connections": len(connections),
        "subscriptions": hub.subscriptions,
        "channels": hub.channels,
        "publications": hub.publications,
        "deliveries": hub.deliveries,
        "drops": drops,
        "outbox_messages": sum(len(connection.outbox) for connection in connections),
    }


router = APIRouter()


class Stats(BaseModel):
    """``GET /v1/stats`` for the OpenAPI document (the route writes it with msgspec)."""

    pid: int
    uptime: float = Field(description="Seconds since the app was created.")
    connections: int
    subscriptions: int
    channels: int
    publications: int = Field(description="Total since start.")
    deliveries: int = Field(description="Total since start.")
    drops: dict[str, int] = Field(description="Clients dropped by reason, and gap ranges.")
    outbox_messages: int = Field(description="Frames queued in every outbox now.")


@router.get(
    "/v1/stats",
    response_model=Stats,
    responses=http_models.errors(401, 403),
    dependencies=[FullKey],
)
async def stats(request: Request, broker: BrokerDep) -> Response:
    """The process's live figures (what the web console shows)."""
    body = _encoder.encode(snapshot(broker, request.app.state.stats_started))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def install(app: FastAPI) -> None:
    """Serve ``/v1/stats`` on ``app``, counting uptime from now."""
    app.state.stats_started = time.monotonic()
    app.include_router(router)
