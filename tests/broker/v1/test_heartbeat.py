"""``/v1/ws`` heartbeats over real sockets: silence closes with 4009, pings keep a client."""

from __future__ import annotations

import asyncio

import pytest

from broker.settings import (
    Settings,
    WebSocketSettings,
)
from protocol import (
    Disconnect,
    Encoding,
)
from tests.broker.v1.helpers import (
    ENCODINGS,
    assert_alive,
    clients,
    messages_until_closed,
)
from tests.conftest import serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


# --- heartbeat ----------------------------------------------------------------------------------

FAST_HEARTBEAT = Settings(websocket=WebSocketSettings(heartbeat=0.5, heartbeat_grace=0.3))


@ENCODINGS
async def test_a_silent_client_gets_disconnect_4009_after_heartbeat_and_grace(
    encoding: Encoding,
) -> None:
    loop = asyncio.get_running_loop()
    async with serve_broker(FAST_HEARTBEAT) as running, open_client(running.url(), encoding) as c:
        welcomed = loop.time()
        received, code = await messages_until_closed(c)
        elapsed = loop.time() - welcomed
        assert code == 4009
        assert len(received) == 1 and isinstance(received[0], Disconnect)
        assert received[0].code == 4009
        assert 0.7 <= elapsed < 2.0, elapsed


async def test_clients_that_ping_within_the_heartbeat_stay_connected() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serve_broker(FAST_HEARTBEAT) as running,
        clients(running, Encoding.JSON, Encoding.MSGPACK) as pingers,
    ):

        async def keep_pinging(client: ProtocolClient) -> None:
            request_id = 0
            deadline = loop.time() + 2.2
            while loop.time() < deadline:
                request_id += 1
                await assert_alive(client, request_id)
                await asyncio.sleep(0.2)  # the behaviour under test is a client's pace

        async with asyncio.TaskGroup() as tasks:
            for client in pingers:
                tasks.create_task(keep_pinging(client))
        assert len(running.broker.connections) == 2
