"""A host app with the broker mounted at ``/broker``, as README.md shows it. Served by plain
``uvicorn tests.hostapp:app``, or run as a script (``python -m tests.hostapp``) through
``broker.server.run``, which serves it the way ``broker serve`` serves the broker alone."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from broker.app import create_app
from broker.config import load_settings
from broker.server import run

settings = load_settings(os.environ.get("BROKER_CONFIG"), os.environ)
broker_app = create_app(settings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with broker_app.state.broker.running():  # Starlette runs no mounted app's lifespan
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/broker", broker_app)  # clients connect to /broker/v1/ws


@app.get("/")
async def home() -> dict[str, str]:
    return {"app": "host"}


if __name__ == "__main__":
    run(app, settings)
