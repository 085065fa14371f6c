"""``/conformance/echo``: off (404) unless configured; on, an echo on the same stack and limits as
``/v1/ws``."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker.settings import Settings, WebSocketSettings
from tests.conftest import TIMEOUT, RunningBroker, serve_broker

pytestmark = pytest.mark.anyio


def echo_url(running: RunningBroker) -> str:
    return running.url("/conformance/echo")


async def test_the_echo_route_is_off_by_default(running: RunningBroker) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(echo_url(running), open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code == 404


async def test_on_it_echoes_text_as_text_and_bytes_as_bytes_within_the_v1_limits() -> None:
    settings = Settings(websocket=WebSocketSettings(conformance_echo=True, max_message_bytes=1024))
    async with (
        serve_broker(settings) as running,
        connect(echo_url(running), open_timeout=TIMEOUT, max_size=None) as ws,
    ):
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
        await ws.send([b"frag", b"ments"])
        assert await ws.recv() == b"fragments"
        await ws.send("x" * 1025)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
