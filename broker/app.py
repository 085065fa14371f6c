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

from broker import http_api, websocket_routes
from broker.metrics import make_registry
from broker.runtime import Broker
from broker.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The broker app for ``settings`` (defaults when None). Its state holds ``broker``."""
    broker = Broker(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broker.running():
            yield

    app = FastAPI(title="broker", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.broker = broker
    app.state.metrics_registry = make_registry(broker)
    app.include_router(websocket_routes.router)
    app.include_router(http_api.router)
    return app
