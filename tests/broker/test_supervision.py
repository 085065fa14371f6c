"""A long-lived task of the broker that dies leaves no half-alive process: the error is logged
once, ``/healthz`` and ``/readyz`` answer 503 with the reason, and under the broker's own server
the clients are drained (``disconnect`` with ``reconnect`` true, 1001) and the process exits 1,
so that its supervisor starts a new one."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import msgspec
import pytest
import structlog
from websockets.exceptions import ConnectionClosed

from broker.app import create_app
from broker.settings import Settings
from protocol import Disconnect, Publish, Published, Subscribe, Subscribed
from tests.broken_backplane import TRIGGER, BrokenBackplane
from tests.broker.test_cli import ROOT, broker_env, free_port, wait_healthy
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


async def test_a_dead_backplane_turns_healthz_and_readyz_to_503_with_the_reason() -> None:
    settings = Settings()
    app = create_app(settings, backplane=BrokenBackplane())
    with structlog.testing.capture_logs() as logs:
        async with (
            serve_broker(settings, app=app) as running,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
            open_client(running.url()) as client,
        ):
            assert (await http.get(running.http("/healthz"))).status_code == 200
            await client.send_json({"type": "publish", "id": 1, "channel": TRIGGER, "data": 1})
            await wait_until(lambda: running.broker.failure is not None)
            health = await http.get(running.http("/healthz"))
            assert health.status_code == 503
            assert health.json() == {
                "status": "failed",
                "reason": "backplane stopped: RuntimeError: a bug in the backplane",
            }
            assert (await http.get(running.http("/readyz"))).status_code == 503
    failed = [entry for entry in logs if entry["event"] == "broker.failed"]
    assert len(failed) == 1
    assert (failed[0]["log_level"], failed[0]["task"]) == ("error", "backplane")


async def test_under_its_own_server_a_failed_broker_drains_its_clients_and_exits_1() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.broken_backplane",
        str(port),
        env=broker_env(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_healthy(port)
        async with open_client(f"ws://127.0.0.1:{port}/v1/ws") as client:
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
            await client.send(Publish(id=2, channel=TRIGGER, data=msgspec.Raw(b"1")))
            await client.expect(Published)
            notice = await client.expect(Disconnect)
            assert notice.reconnect is True
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        async with asyncio.timeout(TIMEOUT):
            out, _ = await process.communicate()
        assert process.returncode == 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    (failed,) = [line for line in lines if line["event"] == "broker.failed"]
    assert failed["level"] == "error"
    assert failed["reason"] == "backplane stopped: RuntimeError: a bug in the backplane"
    assert lines[-1]["event"] == "broker.stopped" and lines[-1]["exit_code"] == 1
