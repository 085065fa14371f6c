"""FastAPI dependencies: how every route, WebSocket ones included, reaches the broker.

They take ``HTTPConnection`` (not ``Request``) so the same dependency serves HTTP and WebSocket
routes; ``Depends`` works in WebSocket routes, whatever older tutorials say. A host app may
override them (``app.dependency_overrides``) like any other dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from broker.hub import Hub
from broker.runtime import Broker
from broker.settings import Settings


def get_broker(connection: HTTPConnection) -> Broker:
    broker: Broker = connection.app.state.broker
    return broker


def get_settings(broker: Annotated[Broker, Depends(get_broker)]) -> Settings:
    return broker.settings


def get_hub(broker: Annotated[Broker, Depends(get_broker)]) -> Hub:
    return broker.hub


BrokerDep = Annotated[Broker, Depends(get_broker)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
HubDep = Annotated[Hub, Depends(get_hub)]
