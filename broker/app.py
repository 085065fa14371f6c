"""``create_app``: the broker as a FastAPI app, to run alone or mount in a host app.

Run alone, its lifespan starts the broker (the hub) before the first connection is accepted. When
mounted in a host app, Starlette does not run a mounted app's lifespan, so the host runs the
broker from its own::

    broker_app = create_app(settings)

    @asynccontextmanager
    async def lifespan(app):
        async with broker_app.state.broker.running():
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/broker", broker_app)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from broker import console, http_api, stats, web_client, websocket_routes
from broker.dependencies import get_broker, get_hub, get_settings
from broker.metrics import make_registry
from broker.runtime import Broker
from broker.settings import Settings

#: Overriding any of these sends WebSocket connections through FastAPI's routing again, where
#: the overrides apply as usual.
_BROKER_DEPENDENCIES = (get_broker, get_settings, get_hub)


class BrokerApp(FastAPI):
    """The FastAPI app, with its WebSocket endpoints called straight from ``__call__``.

    A WebSocket connection lives as long as its client: every frame between the server and the
    endpoint stays in memory all that time. Through FastAPI's middleware stack, router and
    dependency solver that is about 10 KiB per connection (measured, docs/performance.md);
    called directly, none. HTTP requests, unknown paths, and every connection once the app has
    user middleware or overrides a broker dependency go through FastAPI as usual.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not self.user_middleware:
            endpoint = websocket_routes.ENDPOINTS.get(_route_path(scope))
            overridden = self.dependency_overrides and any(
                dependency in self.dependency_overrides for dependency in _BROKER_DEPENDENCIES
            )
            if endpoint is not None and not overridden:
                scope["app"] = self
                broker: Broker = self.state.broker
                await endpoint(WebSocket(scope, receive, send), broker, broker.settings)
                return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Starlette keeps ``path`` whole under a Mount)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        return path[len(root_path) :]
    return path


def create_app(settings: Settings | None = None) -> BrokerApp:
    """The broker app for ``settings`` (defaults when None). Its state holds ``broker``."""
    broker = Broker(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broker.running():
            yield

    app = BrokerApp(title="broker", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.broker = broker
    app.state.metrics_registry = make_registry(broker)
    app.include_router(websocket_routes.router)
    app.include_router(http_api.router)
    stats.install(app)
    web_client.install(app)
    console.install(app, broker.settings)
    return app
