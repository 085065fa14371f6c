"""A client that gives up in the middle of an HTTP request is logged once, at info, without a
traceback, and the broker goes on serving."""

from __future__ import annotations

import logging

import httpx
import pytest
import structlog

from tests.conftest import TIMEOUT, RunningBroker, wait_until
from tests.hostile.rawhttp import close, connect, send_quietly
from tests.rawclient import server_holds

pytestmark = pytest.mark.anyio


async def test_a_client_disconnecting_mid_post_is_one_info_line_without_traceback(
    running: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), structlog.testing.capture_logs() as logs:
        sock = await connect(running.port)
        port = sock.getsockname()[1]
        await send_quietly(
            sock,
            b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
            b'{"channel":"news","data":',
        )
        await wait_until(lambda: server_holds(running.port, port))
        close(sock)
        await wait_until(lambda: any(e["event"] == "http.client_disconnected" for e in logs))
    lines = [e for e in logs if e["event"] == "http.client_disconnected"]
    assert [(e["log_level"], e["path"]) for e in lines] == [("info", "/v1/publish")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(running.http("/v1/publish"), json={"channel": "news", "data": 1})
        assert response.status_code == 200


async def test_a_malformed_request_is_answered_400_and_logged_at_info(
    running: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.hostile.rawhttp import read_until_closed

    with caplog.at_level(logging.INFO), structlog.testing.capture_logs() as logs:
        sock = await connect(running.port)
        await send_quietly(sock, b"NOT HTTP AT ALL\r\n\r\n")
        response = await read_until_closed(sock)
        close(sock)
    assert response.startswith(b"HTTP/1.1 400")
    assert [e["log_level"] for e in logs if e["event"] == "http.bad_request"] == ["info"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
