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

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from broker import console, http_api, stats, web_client, websocket_routes
from broker.auth import Auth, Authenticate, Authorize
from broker.backplane import Backplane
from broker.config import ConfigError, validate
from broker.dependencies import get_broker, get_hub, get_settings
from broker.metrics import make_registry
from broker.monitor.workers import publish_snapshots
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
            if endpoint is None and not any(
                route.matches(scope)[0] is Match.FULL for route in self.router.routes
            ):
                # Starlette would answer a bare 403, which reads like an authentication failure.
                path = _route_path(scope)
                paths = ", ".join(websocket_routes.ENDPOINTS)
                await websocket_routes.deny(
                    WebSocket(scope, receive, send),
                    404,
                    f"no WebSocket endpoint at {path}; the endpoints are {paths}",
                )
                return
        if scope["type"] == "http":
            # Request duration by route template (metrics); measured here, not in a middleware,
            # because any user middleware sends WebSocket connections the slow way.
            started = time.perf_counter()
            try:
                await super().__call__(scope, receive, send)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                instruments = self.state.broker.hub.instruments
                instruments.http_request(route, time.perf_counter() - started)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Starlette keeps ``path`` whole under a Mount)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        return path[len(root_path) :]
    return path


def create_app(
    settings: Settings | None = None,
    *,
    authenticate: Authenticate | None = None,
    authorize: Authorize | None = None,
    backplane: Backplane | None = None,
) -> BrokerApp:
    """The broker app for ``settings`` (defaults when None). Its state holds ``broker``.

    ``authenticate``: the host app's authentication, called like a FastAPI dependency on the
    handshake (an ``HTTPConnection`` parameter, ``Cookie()``, ``Header()``, ``Depends(...)``),
    returning an ``Identity`` or None to refuse (broker/auth/hostapp.py); it replaces
    ``auth.mode``.
    Cookie-authenticated WebSockets are only safe with an ``Origin`` check, so it cannot be
    combined with ``allowed_origins = ["*"]``. ``authorize(identity, channel, action)``: the
    host app's per-channel decision (True, False, or None for the config's answer).
    ``backplane`` replaces the one ``settings.backplane`` names: any object that implements
    ``broker.backplane.Backplane``. Raises ``ConfigError`` for settings that break a rule
    (``broker.config.validate``).
    """
    settings = settings or Settings()
    validate(settings)
    if authenticate is not None and "*" in settings.server.allowed_origins:
        raise ConfigError(
            "settings: server.allowed_origins = ['*']: expected specific origins when the host "
            "app authenticates WebSockets (any web page could use its visitors' cookies)"
        )
    auth = Auth(settings, authenticate=authenticate, authorize=authorize)
    broker = Broker(settings, backplane, auth=auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broker.running(), anyio.create_task_group() as tasks:
            workers_dir: str | None = app.state.metrics_workers_dir
            if workers_dir is not None:
                # broker serve --workers N: share this worker's figures with the others.
                await tasks.start(publish_snapshots, app.state.metrics_registry, workers_dir)
            yield
            tasks.cancel_scope.cancel()

    app = BrokerApp(title="broker", lifespan=lifespan, redoc_url=None)
    app.state.broker = broker
    app.state.metrics_registry = make_registry(broker)
    #: Set by ``broker serve --workers N`` (``broker.monitor.workers``); None: this process only.
    app.state.metrics_workers_dir = None
    app.include_router(websocket_routes.router)
    app.include_router(http_api.router)
    stats.install(app)
    web_client.install(app)
    console.install(app, broker)
    return app
