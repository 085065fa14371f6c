"""The Python client with a token provider: a fresh token for every connection, and ``refresh``
ahead of each expiry, against a real broker with JWT authentication."""

from __future__ import annotations

import asyncio

import pytest

from broker.client import ConnectFailed, connect
from protocol import CloseCode
from tests.broker.auth.helpers import jwt_settings
from tests.broker.auth.tokens import claims, hs256
from tests.conftest import serve_broker, wait_until

pytestmark = pytest.mark.anyio


class Provider:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return hs256(claims(sub="42", ttl=self.ttl))


async def test_the_provider_refreshes_the_token_before_it_expires() -> None:
    provider = Provider(ttl=3)
    async with (
        serve_broker(jwt_settings()) as running,
        connect(running.url(), token=provider) as client,
    ):
        assert provider.calls == 1
        # Past the first token's expiry (3 s): refreshed at 2.4 s, the connection stays.
        await asyncio.sleep(4)  # the expiry under test is wall-clock time
        assert provider.calls >= 2
        await client.ping()
        assert client.connections == 1


async def test_every_reconnection_asks_the_provider_for_a_token() -> None:
    provider = Provider(ttl=600)
    async with (
        serve_broker(jwt_settings()) as running,
        connect(running.url(), token=provider) as client,
    ):
        (connection,) = running.broker.connections.values()
        assert connection.subscriber.user == "42"
        connection.request_close(CloseCode.GOING_AWAY, reconnect=True)
        await wait_until(lambda: client.connections == 2 and client.connected)
        assert provider.calls == 2
        await client.ping()


async def test_a_bad_static_token_fails_the_first_connect_with_the_reason() -> None:
    async with serve_broker(jwt_settings()) as running:
        with pytest.raises(ConnectFailed, match="4001 token expired"):
            async with connect(running.url(), token=hs256(claims(ttl=-10))):
                pass
