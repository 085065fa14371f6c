"""What one connection writes to the log at ``info``: the broker's own lines, nothing from uvicorn
or ``websockets`` (their "[accepted]" and "connection open" lines, one per connection, would
double the log's volume and cost every connection their formatting)."""

from __future__ import annotations

import logging

import pytest
from websockets.asyncio.client import connect

from tests.conftest import TIMEOUT, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


async def test_a_connection_logs_nothing_through_uvicorn_or_websockets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serve_broker() as running:
        async with open_client(running.url()):
            pass
        async with connect(f"ws://127.0.0.1:{running.port}/ws/chat", open_timeout=TIMEOUT):
            pass
        during = [
            record.getMessage()
            for record in caplog.records
            if record.name.startswith(("uvicorn", "websockets"))
        ]
    assert not [line for line in during if "WebSocket" in line or "connection open" in line]
