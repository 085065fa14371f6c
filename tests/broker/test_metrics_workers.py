"""``broker serve --workers 2``: one scrape answers for both workers."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from tests.broker.backplane.test_processes import workers
from tests.broker.test_cli import free_port
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer
from tests.scrape import Scrape, scrape
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


def per_worker(result: Scrape, name: str) -> dict[str, float]:
    return {
        worker: result.value(name, worker=worker) for worker in result.label_values(name, "worker")
    }


async def test_a_scrape_of_any_worker_counts_the_connections_of_both(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with workers(redis_server, port, 2), AsyncExitStack() as stack:
        opened = 0
        last: Scrape | None = None
        # The kernel hands each connection to one worker: open connections until the figures
        # show both workers holding some. Another worker's figures are up to a second old.
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                if opened < 200:
                    for _ in range(4):
                        await stack.enter_async_context(open_client(f"ws://127.0.0.1:{port}/v1/ws"))
                        opened += 1
                last = await scrape(base)
                counts = per_worker(last, "broker_connections")
                if len(counts) == 2 and all(counts.values()) and sum(counts.values()) == opened:
                    break
                await asyncio.sleep(0.2)
        assert last is not None
        # Every family carries the worker label, including the process collectors'.
        assert len(per_worker(last, "process_resident_memory_bytes")) == 2
        assert last.value("broker_connections_opened_total") == opened
        # Any worker answers the same way: scrape again (possibly the other one).
        again = await scrape(base)
        assert len(per_worker(again, "broker_connections")) == 2
