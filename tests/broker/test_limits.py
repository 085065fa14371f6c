"""Operator limits (``[limits]``, ``server.allowed_origins``), each with a clear answer."""

from __future__ import annotations

import msgspec
import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker.settings import LimitSettings, ServerSettings, Settings
from protocol import (
    JSON,
    Disconnect,
    Error,
    Ping,
    Pong,
    Publish,
    Published,
    Subscribe,
    Subscribed,
)
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


async def closed_code(client: ProtocolClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_past_max_connections_a_client_is_told_to_retry_later_with_1013() -> None:
    settings = Settings(limits=LimitSettings(max_connections=2, retry_after=7.5))
    async with serve_broker(settings) as running:
        async with open_client(running.url()), open_client(running.url()):
            with structlog.testing.capture_logs() as logs:
                async with connect(running.url(), open_timeout=TIMEOUT) as refused:
                    client = ProtocolClient(refused, JSON)
                    notice = await client.expect(Disconnect)
                    assert (notice.code, notice.reconnect, notice.retry_after) == (1013, True, 7.5)
                    assert await closed_code(client) == 1013
            assert [e["event"] for e in logs].count("connection.refused") == 1
            # The plain endpoints count against the same limit.
            async with connect(running.url("/ws"), open_timeout=TIMEOUT) as plain:
                with pytest.raises(ConnectionClosed) as closed:
                    await plain.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1013
        # Once the others leave, there is room again.
        await wait_until(lambda: not running.broker.connections)
        async with open_client(running.url()) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)


async def test_publishing_over_the_rate_limit_is_refused_and_sustained_abuse_closes_4029() -> None:
    settings = Settings(
        limits=LimitSettings(publish_rate=1.0, publish_burst=5, rate_limit_strikes=10)
    )
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        data = msgspec.Raw(b"1")
        for i in range(5):
            await client.send(Publish(id=i, channel="news", data=data))
            await client.expect(Published)
        await client.send(Publish(id=5, channel="news", data=data))
        error = await client.expect(Error)
        assert (error.id, error.code) == (5, "rate_limited")
        # Still connected and served.
        await client.send(Ping(id=99))
        await client.expect(Pong)
        for i in range(6, 20):
            await client.send(Publish(id=i, channel="news", data=data))
        notice = None
        while notice is None:
            message = await client.recv()
            if isinstance(message, Disconnect):
                notice = message
            else:
                assert isinstance(message, Error) and message.code == "rate_limited"
        assert notice.code == 4029
        assert await closed_code(client) == 4029


async def test_a_connection_without_subscriptions_is_closed_after_idle_timeout() -> None:
    settings = Settings(limits=LimitSettings(idle_timeout=0.3))
    async with serve_broker(settings) as running:
        async with open_client(running.url()) as idle, open_client(running.url()) as busy:
            await busy.send(Subscribe(id=1, channel="news"))
            await busy.expect(Subscribed)
            notice = await idle.expect(Disconnect)
            assert (notice.code, notice.reconnect) == (1008, False)
            assert await closed_code(idle) == 1008
            # The subscribed client outlives the idle one, and is still served.
            await busy.send(Ping(id=2))
            await busy.expect(Pong)


async def test_a_browser_origin_not_allowed_is_refused_at_the_handshake() -> None:
    settings = Settings(server=ServerSettings(allowed_origins=["https://app.example"]))
    async with serve_broker(settings) as running:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(running.url(), origin="https://evil.example", open_timeout=TIMEOUT):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        async with connect(running.url(), origin="https://app.example", open_timeout=TIMEOUT) as ok:  # type: ignore[arg-type]
            await ok.recv()
        # Clients that are not browsers send no Origin and are let in.
        async with open_client(running.url()) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)
