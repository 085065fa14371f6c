"""Refused handshakes, over and over: each gets its HTTP answer, and the log gets a few lines,
not one (or three: uvicorn's info line and its error-level "ASGI callable returned without
completing handshake.") per attempt. A client may retry a refused handshake as fast as it can."""

from __future__ import annotations

import asyncio
import logging

import pytest
import structlog

from broker.settings import LogSettings, ServerSettings, Settings
from tests.conftest import TIMEOUT, serve_broker

pytestmark = pytest.mark.anyio

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: Three refusals the broker writes itself: a path with no endpoint, only unknown subprotocols
#: offered, a browser of another origin.
REFUSALS = {
    404: ("/nope", ""),
    400: ("/v1/ws", "Sec-WebSocket-Protocol: broker.v0.xml\r\n"),
    403: ("/v1/ws", "Origin: http://evil.example\r\n"),
}


async def refused(port: int, path: str, extra: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n".encode()
        )
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        await asyncio.wait_for(reader.read(), TIMEOUT)  # the body, then the server closes
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_a_flood_of_refused_handshakes_is_answered_and_logs_only_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        log=LogSettings(client_faults_per_second=5.0),
        server=ServerSettings(allowed_origins=["http://good.example"]),
    )
    caplog.set_level(logging.INFO)
    async with serve_broker(settings) as running:
        caplog.clear()  # the server's start-up lines
        with structlog.testing.capture_logs() as logs:
            for _ in range(20):
                for status, (path, extra) in REFUSALS.items():
                    assert await refused(running.port, path, extra) == status
        during = list(caplog.records)
    events = ("connection.refused", "connection.origin_refused")
    refusals = [e for e in logs if e["event"] in events]
    # A burst of 5, and at most a few more refilled while the 60 were answered.
    assert 5 <= len(refusals) <= 15, len(refusals)
    assert all(e["log_level"] == "info" and "reason" in e for e in refusals)
    assert not [r for r in during if r.levelno >= logging.ERROR or r.exc_info]
    assert not [r.getMessage() for r in during if r.name.startswith("uvicorn")]
