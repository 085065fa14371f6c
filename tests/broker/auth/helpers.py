"""Connecting to a broker with authentication on, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from broker.settings import AuthMode, AuthSettings, NamespaceSettings, Settings
from protocol import JSON, Disconnect, Encoding, Welcome
from tests.broker.auth.tokens import SECRET
from tests.conftest import TIMEOUT
from tests.wsclient import ProtocolClient

SUBPROTOCOLS = [Subprotocol(Encoding.JSON.subprotocol)]


def jwt_settings(namespaces: dict[str, NamespaceSettings] | None = None, **auth: Any) -> Settings:
    options: dict[str, Any] = {"mode": AuthMode.JWT, "hmac_secrets": [SECRET], "leeway": 0.0}
    options.update(auth)
    return Settings(auth=AuthSettings(**options), namespaces=namespaces or {})


@asynccontextmanager
async def raw_client(url: str, **kwargs: Any) -> AsyncIterator[ProtocolClient]:
    """A connected client that has read nothing yet."""
    async with connect(
        url, subprotocols=SUBPROTOCOLS, compression=None, open_timeout=TIMEOUT, **kwargs
    ) as ws:
        yield ProtocolClient(ws, JSON)


@asynccontextmanager
async def authed_client(url: str, token: str) -> AsyncIterator[ProtocolClient]:
    """A client authenticated with ``token`` in ``Authorization: Bearer``, welcome read."""
    async with raw_client(url, additional_headers={"Authorization": f"Bearer {token}"}) as client:
        client.welcome = await client.expect(Welcome)
        yield client


async def closed_code(client: ProtocolClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def refusal(client: ProtocolClient) -> Disconnect:
    """The ``disconnect`` a refused client gets, after checking the close code is 4001."""
    notice = await client.expect(Disconnect)
    assert notice.code == 4001
    assert await closed_code(client) == 4001
    return notice


async def refused_with(url: str, token: str) -> Disconnect:
    async with raw_client(url, additional_headers={"Authorization": f"Bearer {token}"}) as client:
        return await refusal(client)
