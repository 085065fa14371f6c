"""``Depends`` in the WebSocket routes: overridable like any dependency, and working when the
broker is mounted inside a host app that runs it from its own lifespan (broker/app.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed

from broker.app import create_app
from broker.dependencies import get_broker, get_settings
from broker.settings import Settings, WebSocketSettings
from broker.transport import BrokerWebSocketProtocol
from protocol import (
    Disconnect,
    Encoding,
    Ping,
    Pong,
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
)
from tests.conftest import TIMEOUT, RunningBroker, free_socket, serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


@contextmanager
def no_signals() -> Iterator[None]:
    yield


@asynccontextmanager
async def serve_app(app: FastAPI, **config: Any) -> AsyncIterator[str]:
    """Serve any ASGI app with uvicorn on 127.0.0.1 until the block ends; yields its base URL
    (``host:port``). The same pattern as ``tests.conftest.serve_broker``."""
    sock = free_socket()
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, **config)
    )
    server.capture_signals = no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


@contextmanager
def override(app: FastAPI, dependency: Any, value: Any) -> Iterator[None]:
    app.dependency_overrides[dependency] = lambda: value
    try:
        yield
    finally:
        del app.dependency_overrides[dependency]


async def roundtrip(sub: ProtocolClient, pub: ProtocolClient, channel: str) -> Publication:
    """Subscribe ``sub``, publish from ``pub``, return what ``sub`` receives."""
    await sub.send(Subscribe(id=1, channel=channel))
    await sub.expect(Subscribed)
    await pub.send(Publish(id=2, channel=channel, data=msgspec.Raw(pub.codec.encode_payload(7))))
    await pub.expect(Published)
    return await sub.expect(Publication)


async def close_code(client: ProtocolClient) -> int:
    """The code of the close frame that ends ``client``'s connection; fails on any message."""
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code


# --- dependency overrides -----------------------------------------------------------------------


async def test_overriding_get_settings_changes_what_the_websocket_route_uses(
    running: RunningBroker,
) -> None:
    custom = msgspec.structs.replace(
        running.broker.settings,
        websocket=WebSocketSettings(heartbeat=42.0, max_message_bytes=512),
    )
    with override(running.app, get_settings, custom):
        async with open_client(running.url()) as client:
            assert client.welcome is not None
            assert (client.welcome.heartbeat, client.welcome.max_message_bytes) == (42.0, 512)
            # Not only the welcome: the route enforces the overriding limit too.
            await client.ws.send('{"type": "ping", "id": 1, "pad": "' + "x" * 600 + '"}')
            assert (await client.expect(Disconnect)).code == 1009
            assert await close_code(client) == 1009
    async with open_client(running.url()) as client:
        assert client.welcome is not None
        assert client.welcome.heartbeat == Settings().websocket.heartbeat


async def test_overriding_get_broker_hands_the_websocket_route_another_broker() -> None:
    async with serve_broker() as first, serve_broker() as second:
        with override(first.app, get_broker, second.broker):
            async with (
                open_client(first.url()) as sub,
                open_client(second.url(), Encoding.MSGPACK) as pub,
            ):
                assert sub.welcome is not None
                assert sub.welcome.client in second.broker.connections
                assert sub.welcome.client not in first.broker.connections
                message = await roundtrip(sub, pub, "shared")
                assert sub.data(message.data) == 7


# --- mounted in a host app ----------------------------------------------------------------------


def host_app(settings: Settings, *, run_broker: bool = True) -> tuple[FastAPI, FastAPI]:
    """A host app with a route of its own and the broker app mounted under ``/broker``, run from
    the host's lifespan as broker/app.py describes (unless ``run_broker`` is false)."""
    broker_app = create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_broker:
            async with broker_app.state.broker.running():
                yield
        else:
            yield

    host = FastAPI(lifespan=lifespan)

    @host.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "host"}

    host.mount("/broker", broker_app)
    return host, broker_app


#: The broker's own protocol (the transport fast path) and uvicorn's stock one (plain ASGI sends).
WS_IMPLEMENTATIONS = pytest.mark.parametrize(
    "ws", [BrokerWebSocketProtocol, "websockets-sansio"], ids=["broker-protocol", "stock-uvicorn"]
)


@WS_IMPLEMENTATIONS
@pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])
async def test_a_mounted_broker_serves_v1_ws_end_to_end(ws: Any, encoding: Encoding) -> None:
    async with (
        serve_app(host_app(Settings())[0], ws=ws) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        url = f"ws://{address}/broker/v1/ws"
        async with open_client(url, encoding) as sub, open_client(url, encoding) as pub:
            message = await roundtrip(sub, pub, "mounted")
            assert pub.welcome is not None
            assert (message.offset, message.from_) == (1, pub.welcome.client)
            assert sub.data(message.data) == 7
            published = await http.post(
                "/broker/v1/publish", json={"channel": "mounted", "data": "via http"}
            )
            assert published.json()["offset"] == 2
            assert sub.data((await sub.expect(Publication)).data) == "via http"
        assert (await http.get("/hello")).json() == {"hello": "host"}
        assert (await http.get("/broker/readyz")).status_code == 200


@WS_IMPLEMENTATIONS
async def test_a_mounted_broker_closes_clients_with_disconnect_and_the_close_code(ws: Any) -> None:
    async with (
        serve_app(host_app(Settings())[0], ws=ws) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
        open_client(f"ws://{address}/broker/v1/ws") as client,
    ):
        assert client.welcome is not None
        await client.send(Ping(id=1))
        assert await client.recv() == Pong(id=1)
        response = await http.post(f"/broker/v1/clients/{client.welcome.client}/disconnect")
        assert response.json()["disconnected"] is True
        assert (await client.expect(Disconnect)).code == 4010
        assert await close_code(client) == 4010


async def test_a_mounted_broker_is_ready_only_while_its_host_runs_it() -> None:
    host, broker_app = host_app(Settings(), run_broker=False)
    async with (
        serve_app(host) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/broker/healthz")).status_code == 200
        assert (await http.get("/broker/readyz")).status_code == 503
        async with broker_app.state.broker.running():
            assert (await http.get("/broker/readyz")).status_code == 200
