"""The ``broker`` command, run as a real process: start-up, config errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from benchmarks.server import free_port as free_port
from protocol import Disconnect, Encoding, Subscribe, Subscribed
from tests.conftest import TIMEOUT, wait_until
from tests.rawclient import open_raw, server_holds
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def broker_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update({"BROKER_LOG__FORMAT": "json"}, **overrides)
    return env


@asynccontextmanager
async def broker_process(*args: str, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        *args,
        env=broker_env(**env),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT):
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.05)


async def test_sigterm_drains_every_client_with_disconnect_then_1001_and_exits_in_time() -> None:
    port = free_port()
    grace = 3.0
    async with broker_process(
        "serve",
        "--port",
        str(port),
        BROKER_SERVER__SHUTDOWN_GRACE=str(grace),
        BROKER_WEBSOCKET__CLOSE_TIMEOUT="1.0",
        BROKER_LIMITS__RETRY_AFTER="2.0",
    ) as process:
        await wait_healthy(port)
        url = f"ws://127.0.0.1:{port}/v1/ws"
        # A client that never reads or answers the close handshake must not hold the exit up.
        stuck = await open_raw(port, "/v1/ws")
        try:
            async with (
                open_client(url, Encoding.JSON) as a,
                open_client(url, Encoding.MSGPACK) as b,
            ):
                for client in (a, b):
                    await client.send(Subscribe(id=1, channel="news"))
                    await client.expect(Subscribed)
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                for client in (a, b):
                    notice = await client.expect(Disconnect)
                    assert notice.code == 1001
                    assert notice.reconnect is True
                    assert 0.0 <= notice.retry_after <= 2.0
                    with pytest.raises(ConnectionClosed) as closed:
                        await client.recv()
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == 1001
                async with asyncio.timeout(grace + 2):
                    assert await process.wait() == 0
                assert time.monotonic() - started < grace + 2
        finally:
            stuck.reset()
        out = (await process.stdout.read()).decode() if process.stdout else ""
        assert '"event":"broker.stopped"' in out


async def test_a_config_error_stops_start_up_with_exit_code_2_and_one_clear_line() -> None:
    port = free_port()
    async with broker_process(
        "serve", "--port", str(port), BROKER_QUEUE__MAX_MESSAGES="lots"
    ) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
        assert process.returncode == 2
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1
        assert "queue.max_messages" in lines[0]
        assert "'lots'" in lines[0]
        assert "int" in lines[0]
        assert "Traceback" not in lines[0]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # nothing ever listened


async def test_check_config_accepts_the_shipped_file_and_names_the_bad_key_of_another(
    tmp_path: Path,
) -> None:
    async with broker_process("check-config", str(ROOT / "config" / "broker.toml")) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
        assert process.returncode == 0, err.decode()
    bad = tmp_path / "bad.toml"
    bad.write_text('[queue]\noverflow = "explode"\n')
    async with broker_process("check-config", str(bad)) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
        assert process.returncode == 2
        message = err.decode()
        assert "queue.overflow" in message and "explode" in message
        assert "disconnect" in message and "drop_oldest" in message


async def test_workers_are_refused_on_the_memory_backplane() -> None:
    async with broker_process("serve", "--workers", "2", "--port", str(free_port())) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
        assert process.returncode == 2
        assert "redis" in err.decode()


async def test_stuck_client_socket_is_released_after_drain(tmp_path: Path) -> None:
    """The drain's close handshake is bounded: a client that never answers is reset."""
    port = free_port()
    async with broker_process(
        "serve", "--port", str(port), BROKER_WEBSOCKET__CLOSE_TIMEOUT="0.5"
    ) as process:
        await wait_healthy(port)
        stuck = await open_raw(port, "/v1/ws")
        try:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT):
                assert await process.wait() == 0
            await wait_until(lambda: not server_holds(port, stuck.local_port))
        finally:
            stuck.reset()
