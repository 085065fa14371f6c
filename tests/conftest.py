"""Shared fixtures: a real uvicorn server on 127.0.0.1 and a free port, and real clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import uvicorn
from fastapi import FastAPI

from broker.runtime import Broker
from broker.server import uvicorn_config
from broker.settings import Settings

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

#: The one timeout every wait in the suite is scaled from.
TIMEOUT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class RunningBroker:
    """A broker served by a real uvicorn server in this process, on this event loop."""

    port: int
    app: FastAPI
    server: uvicorn.Server

    @property
    def broker(self) -> Broker:
        broker: Broker = self.app.state.broker
        return broker

    def url(self, path: str = "/v1/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_broker(
    settings: Settings | None = None, *, app: FastAPI | None = None
) -> AsyncIterator[RunningBroker]:
    """Serve a broker (or ``app``, made with ``create_app``) until the block ends; the server
    accepts connections once this yields."""
    sock = free_socket()
    config = uvicorn_config(settings or Settings(), app=app)
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers in the main thread; tests stop it through should_exit.
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    app = config.loaded_app
    while not isinstance(app, FastAPI):
        app = app.app  # unwrap uvicorn's middleware around the app
    try:
        yield RunningBroker(sock.getsockname()[1], app, server)
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


@contextmanager
def _no_signals() -> Iterator[None]:
    yield


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    """A broker on its defaults."""
    async with serve_broker() as running_broker:
        yield running_broker


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:  # noqa: ASYNC109
    """Poll ``condition()`` until it holds, for at most ``timeout`` seconds.

    Only for state that offers no event to await: the kernel's sockets, another process, the
    broker's internals seen from outside its loop turn.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to await: see the docstring
            await asyncio.sleep(0.02)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port, killed at the end of the test."""
    from tests.redis_server import RedisServer

    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
