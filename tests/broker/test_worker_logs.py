"""``broker serve --workers N`` logs as one process does: no access line per HTTP request, and a
``pid`` on every line to tell the workers apart."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.broker.backplane.redis_helpers import wait_readyz
from tests.broker.backplane.test_processes import redis_env
from tests.broker.test_cli import broker_process, free_port
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_workers_write_no_access_lines_and_every_line_names_its_process(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    env = redis_env(redis_server) | {"BROKER_LOG__LEVEL": "info"}
    async with broker_process("serve", "--port", str(port), "--workers", "2", **env) as process:
        await wait_readyz(port, 200)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            for _ in range(20):
                assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        process.terminate()
        async with asyncio.timeout(TIMEOUT * 2):
            out, _ = await process.communicate()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert any(line["event"] == "broker.stopped" for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    assert all(isinstance(line.get("pid"), int) for line in lines)
    # The parent and both workers each wrote lines of their own.
    assert len({line["pid"] for line in lines}) >= 3
    starting = [line for line in lines if line["event"] == "broker.starting"]
    assert starting[0]["workers"] == 2
