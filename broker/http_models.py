"""The HTTP API's bodies and answers as pydantic models, for its OpenAPI document only.

The routes read and write JSON with msgspec (broker/http_api.py); these models describe the same
shapes to FastAPI, which turns them into ``/openapi.json`` and the ``/docs`` page.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from protocol.channels import CHANNEL_PATTERN, MAX_CHANNEL_BYTES

# JSON Schema patterns are ECMAScript: "$" there, not Python's "\Z".
_CHANNEL = Field(
    min_length=1, max_length=MAX_CHANNEL_BYTES, pattern=CHANNEL_PATTERN.replace(r"\Z", "$")
)


class PublishRequest(BaseModel):
    channel: str = _CHANNEL
    data: Any = Field(description="Any JSON value, delivered to subscribers as is.")


class BroadcastRequest(BaseModel):
    channels: list[str] = Field(min_length=1, max_length=1000)
    data: Any


class UnsubscribeRequest(BaseModel):
    channel: str = _CHANNEL


class Position(BaseModel):
    offset: int = Field(ge=0, le=2**63 - 1)
    epoch: str


class SubscribeRequest(BaseModel):
    channel: str = _CHANNEL
    client: str | None = Field(
        default=None, description="Only this connection of the user (a client id)."
    )
    since: Position | None = Field(
        default=None,
        description="Subscribe from this position: the publications after it come with the "
        "subscription while the channel still retains them (Centrifugo's recover_since).",
    )


class Published(BaseModel):
    channel: str
    offset: int
    epoch: str


class BroadcastOutcome(BaseModel):
    channel: str
    offset: int | None = None
    epoch: str | None = None
    error: str | None = None


class BroadcastResult(BaseModel):
    results: list[BroadcastOutcome]


class ChannelEntry(BaseModel):
    channel: str
    subscribers: int


class ChannelList(BaseModel):
    channels: list[ChannelEntry]


class HistoryPublication(BaseModel):
    type: str = "message"
    channel: str
    offset: int
    epoch: str
    data: Any
    from_: str | None = Field(default=None, alias="from")


class HistoryResult(BaseModel):
    channel: str
    epoch: str
    offset: int
    publications: list[HistoryPublication]


class PresenceMember(BaseModel):
    client: str
    user: str | None = None
    info: dict[str, Any] | None = None


class PresenceResult(BaseModel):
    channel: str
    clients: list[PresenceMember]


class ClientDisconnected(BaseModel):
    client: str
    disconnected: bool


class UserDisconnected(BaseModel):
    user: str
    disconnected: int = Field(description="Connections closed on this process.")


class UserSubscribed(BaseModel):
    user: str
    channel: str
    subscribed: int = Field(description="Connections subscribed, on every process.")


class UserUnsubscribed(BaseModel):
    user: str
    channel: str
    unsubscribed: int = Field(description="Connections unsubscribed, on every process.")


class Health(BaseModel):
    status: str
    #: Why the broker failed; only with status "failed".
    reason: str | None = None


class Readiness(BaseModel):
    ready: bool


class ErrorBody(BaseModel):
    detail: str


class Unavailable(BaseModel):
    error: str = "unavailable"
    message: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer with these error codes."""
    text = {
        400: "Malformed body or parameter, or the feature is off in the channel's namespace.",
        401: "Missing or wrong API key.",
        403: "The API key may only publish.",
        404: "The path names no channel this route can take (a newline in it, for one).",
        413: "Body larger than websocket.max_message_bytes plus 1 KiB.",
        415: "Body not application/json.",
        503: "The backplane cannot serve this right now.",
    }
    return {
        code: {"model": Unavailable if code == 503 else ErrorBody, "description": text[code]}
        for code in codes
    }
