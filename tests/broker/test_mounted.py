"""The broker mounted in a host FastAPI app. Through ``broker.server.run`` it behaves exactly as
under ``broker serve``; under plain ``uvicorn app:app`` what differs is what docs/embedding.md
says, and nothing else: shutdown closes with uvicorn's 1012 (no ``disconnect``), and
permessage-deflate follows uvicorn's default (on). Logs are the broker's JSON lines either way."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import Disconnect, Ping, Pong
from tests.broker.test_cli import ROOT, broker_env, free_port
from tests.conftest import TIMEOUT
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def host_process(*command: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        env=broker_env(BROKER_SERVER__PORT=str(port), BROKER_SERVER__SHUTDOWN_GRACE="3"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT):
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/broker/healthz")).is_success:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(process: asyncio.subprocess.Process) -> list[dict[str, object]]:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(TIMEOUT):
        out, _ = await process.communicate()
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def close_code(client: ProtocolClient) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def extensions(client: ProtocolClient) -> str:
    assert client.ws.response is not None
    return client.ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def test_a_host_app_run_through_broker_server_run_drains_like_broker_serve() -> None:
    port = free_port()
    async with host_process("-m", "tests.hostapp", port=port) as process:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with open_client(url, compression="deflate") as client:
            assert extensions(client) == ""  # the broker's default: no compression
            await client.send(Ping(id=1))
            await client.expect(Pong)
            process.send_signal(signal.SIGTERM)
            notice = await client.expect(Disconnect)
            assert notice.reconnect is True and notice.retry_after is not None
            assert await close_code(client) == 1001
        async with asyncio.timeout(TIMEOUT):
            out, _ = await process.communicate()
    assert process.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[-1]["event"] == "broker.stopped"


async def test_under_plain_uvicorn_shutdown_is_1012_and_logged_as_the_servers_doing() -> None:
    port = free_port()
    command = ("-m", "uvicorn", "tests.hostapp:app", "--port", str(port))
    async with host_process(*command, port=port) as process:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with open_client(url, compression="deflate") as client:
            assert "permessage-deflate" in extensions(client)  # uvicorn's default, documented
            await client.send(Ping(id=1))
            await client.expect(Pong)
            logs = asyncio.create_task(stop(process))
            assert await close_code(client) == 1012
        lines = await logs
    # stdout is not a terminal: the broker's lines and uvicorn's are JSON, as under broker serve.
    (closed,) = [line for line in lines if line.get("event") == "connection.closed"]
    assert (closed["code"], closed["reason"]) == (1012, "server shutdown")
    assert any(line.get("logger") == "uvicorn.error" for line in lines)


async def test_plain_uvicorn_with_the_broker_protocol_drains_as_documented() -> None:
    port = free_port()
    command = (
        "-m",
        "uvicorn",
        "tests.hostapp:app",
        "--port",
        str(port),
        "--ws",
        "broker.transport:BrokerWebSocketProtocol",
        "--ws-per-message-deflate",
        "false",
    )
    async with host_process(*command, port=port) as process:
        url = f"ws://127.0.0.1:{port}/broker/v1/ws"
        async with open_client(url, compression="deflate") as client:
            assert extensions(client) == ""
            await client.send(Ping(id=1))
            await client.expect(Pong)
            logs = asyncio.create_task(stop(process))
            notice = await client.expect(Disconnect)
            assert notice.reconnect is True
            assert await close_code(client) == 1001
        await logs
