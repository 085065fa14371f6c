"""What a connection costs the server while it is open, and the direct WebSocket dispatch.

An idle connection is the common case (most clients of a broker wait for rare messages), so its
cost is paid tens of thousands of times over: it holds one task, the one the server runs the app
in, and no FastAPI frames unless the app is customised (broker/app.py, ``BrokerApp``).
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.app import create_app
from broker.settings import Settings
from protocol import JSON, Subscribe
from tests.broker.test_dependencies import roundtrip, serve_app
from tests.conftest import RunningBroker, wait_until
from tests.rawclient import RawClient, masked_frame, open_raw
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

CLIENTS = 20


async def subscribed_raw(running: RunningBroker, path: str, channel: str) -> RawClient:
    raw = await open_raw(running.port, path, subprotocol="broker.v1.json")
    if path == "/v1/ws":
        await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel=channel))))
    return raw


@pytest.mark.parametrize("path", ["/v1/ws", "/ws/chat"])
async def test_an_open_idle_connection_holds_one_task_on_the_server(
    running: RunningBroker, path: str
) -> None:
    tasks_before = len(asyncio.all_tasks())
    clients = [await subscribed_raw(running, path, "quiet") for _ in range(CLIENTS)]
    await wait_until(lambda: len(running.broker.connections) == CLIENTS)
    if path == "/v1/ws":
        await wait_until(lambda: running.broker.hub.subscriber_count("quiet") == CLIENTS)
    # The raw clients run no tasks: every new task is the server's.
    assert len(asyncio.all_tasks()) - tasks_before == CLIENTS
    for client in clients:
        client.reset()
    await wait_until(lambda: not running.broker.connections)
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before)


class RecordingMiddleware:
    """Pure ASGI middleware that records the type of every scope it is handed."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["type"])
        await self.app(scope, receive, send)


async def test_middleware_added_to_the_broker_app_still_sees_websocket_connections() -> None:
    app = create_app(Settings())
    seen: list[str] = []
    app.add_middleware(RecordingMiddleware, seen=seen)
    async with serve_app(app) as address:
        url = f"ws://{address}/v1/ws"
        async with open_client(url) as sub, open_client(url) as pub:
            message = await roundtrip(sub, pub, "watched")
            assert sub.data(message.data) == 7
    assert seen.count("websocket") == 2


@pytest.mark.parametrize("path", ["/v1/ws", "/ws/chat"])
async def test_an_open_connection_holds_no_timer_and_no_handshake_headers(
    running: RunningBroker, path: str
) -> None:
    # The heartbeat and the server's pings are in the process's sweep (broker.heartbeats), not
    # in a timer per connection; the scope lets go of the request's headers once admitted.
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", None)
    if scheduled is None:
        pytest.skip("an event loop without asyncio's timer list")

    def timers() -> int:
        return sum(1 for handle in scheduled if not handle.cancelled())

    timers_before = timers()
    clients = [await subscribed_raw(running, path, "quiet") for _ in range(CLIENTS)]
    await wait_until(lambda: len(running.broker.connections) == CLIENTS)
    if path == "/v1/ws":
        await wait_until(lambda: running.broker.hub.subscriber_count("quiet") == CLIENTS)
    # At most the sweep's own timer (or two: the heartbeat's and the pings' resolutions).
    assert timers() - timers_before <= 2
    for connection in running.broker.connections.values():
        assert not connection.websocket.scope["headers"]
        assert not connection.websocket.headers
    # uvicorn's protocol keeps its attributes in slots: only the scope is in its dictionary.
    protocols = running.server.server_state.connections
    assert len(protocols) == CLIENTS
    for protocol in protocols:
        assert set(vars(protocol)) == {"scope"}
    for client in clients:
        client.reset()
    await wait_until(lambda: not running.broker.connections)
