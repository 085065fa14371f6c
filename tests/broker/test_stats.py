"""``GET /v1/stats``: the live figures the web console reads, in the agreed shape."""

from __future__ import annotations

import os

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from broker.client import connect
from broker.settings import ApiSettings, Settings, WebSocketSettings
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until

pytestmark = pytest.mark.anyio

KEYS = {
    "pid": int,
    "uptime": float,
    "connections": int,
    "subscriptions": int,
    "channels": int,
    "publications": int,
    "deliveries": int,
    "drops": dict,
    "outbox_messages": int,
}


async def stats(running: RunningBroker) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(running.http("/v1/stats"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    return body


async def test_stats_have_exactly_the_agreed_fields_and_count_traffic(
    running: RunningBroker,
) -> None:
    before = await stats(running)
    assert set(before) == set(KEYS)
    for key, kind in KEYS.items():
        assert isinstance(before[key], kind), key
    assert before["pid"] == os.getpid()
    assert before["connections"] == 0
    assert before["outbox_messages"] == 0
    drops = before["drops"]
    assert isinstance(drops, dict)
    assert set(drops) == {
        "slow_consumer",
        "heartbeat_timeout",
        "rate_limit_abuse",
        "message_too_big",
        "idle",
        "gap",
    }
    assert all(count == 0 for count in drops.values())

    url = running.url()
    async with connect(url) as alice, connect(url) as bob:
        a = await alice.subscribe("room")
        await bob.subscribe("room")
        for n in range(3):
            await alice.publish("room", n)
        assert [(await anext(a)).data for _ in range(3)] == [0, 1, 2]
        during = await stats(running)
        assert during["connections"] == 2
        assert during["subscriptions"] == 2
        assert during["channels"] == 1
        assert during["publications"] == 3
        assert during["deliveries"] == 6
        uptime, earlier = during["uptime"], before["uptime"]
        assert isinstance(uptime, float) and isinstance(earlier, float) and uptime >= earlier


async def test_a_client_dropped_for_silence_counts_as_a_heartbeat_timeout_drop() -> None:
    settings = Settings(websocket=WebSocketSettings(heartbeat=0.2, heartbeat_grace=0.0))
    async with serve_broker(settings) as running:
        async with ws_connect(running.url()) as ws:
            await ws.recv()  # welcome; then silence
            await ws.wait_closed()
            assert ws.close_code == 4009
        await wait_until(lambda: running.broker.close_codes.get(4009) == 1)
        drops = (await stats(running))["drops"]
        assert isinstance(drops, dict)
        assert drops["heartbeat_timeout"] == 1
        assert drops["slow_consumer"] == 0


async def test_stats_need_an_api_key_once_the_api_has_keys() -> None:
    settings = Settings(api=ApiSettings(keys=["k" * 32]))
    async with serve_broker(settings) as running, httpx.AsyncClient(timeout=TIMEOUT) as http:
        assert (await http.get(running.http("/v1/stats"))).status_code == 401
        wrong = await http.get(running.http("/v1/stats"), headers={"X-API-Key": "w" * 32})
        assert wrong.status_code == 401
        right = await http.get(
            running.http("/v1/stats"), headers={"Authorization": f"Bearer {'k' * 32}"}
        )
        assert right.status_code == 200
        assert set(right.json()) == set(KEYS)
