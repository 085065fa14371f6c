"""A burst of publications that arrives from Redis in one read, under plain uvicorn (no transport
link: writer tasks, no write-through): a subscriber that reads gets it all, though its outbox
holds a tenth of it. The Redis reader and the hub's mailbox let the loop turn once an outbox is
half full (``WRITERS_BEHIND``), as a client's reader does (tests/broker/test_reply_bursts.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import msgspec
import pytest

from broker.app import create_app
from broker.settings import QueueSettings, Settings
from protocol import Encoding, Publish
from tests.broker.backplane.redis_helpers import on_redis
from tests.broker.backplane.test_behaviour import assert_alive, clients, raw, receive, subscribe
from tests.broker.backplane.test_cluster import on_cluster
from tests.broker.test_dependencies import serve_app
from tests.conftest import TIMEOUT
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

OUTBOX = 20
BURST = 200


@asynccontextmanager
async def plain_redis(redis_server: RedisServer) -> AsyncIterator[Settings]:
    yield on_redis(redis_server.url)


@asynccontextmanager
async def redis_cluster(redis_server: RedisServer) -> AsyncIterator[Settings]:
    async with RedisClusterServers() as cluster:
        yield on_cluster(cluster)


@pytest.mark.parametrize("redis", [plain_redis, redis_cluster], ids=["redis", "cluster"])
async def test_a_burst_from_redis_reaches_a_reading_subscriber_under_plain_uvicorn(
    redis_server: RedisServer,
    redis: Callable[[RedisServer], AbstractAsyncContextManager[Settings]],
) -> None:
    """200 publishes without ids, an outbox of 20: the publications come back from Redis (plain
    pub/sub, or a cluster's sharded pub/sub, read by ``ShardReaders``) in a few reads, and the
    subscriber gets all 200 in order and stays. Without the readers' check: 4008."""
    async with redis(redis_server) as settings:
        settings = msgspec.structs.replace(settings, queue=QueueSettings(max_messages=OUTBOX))
        async with serve_app(create_app(settings), ws="websockets-sansio") as address:
            async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT):
                # Until the backplane is connected (another task's state, seen over HTTP).
                while (await http.get(f"http://{address}/readyz")).status_code != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            url = f"ws://{address}/v1/ws"
            async with clients(url, Encoding.JSON, Encoding.JSON) as (sub, pub):
                await subscribe(sub, "news")
                for n in range(1, BURST + 1):  # no ids: no replies, only the publications
                    await pub.send(Publish(channel="news", data=raw(pub, n)))
                received = await receive(sub, BURST)
                assert [msgspec.json.decode(m.data) for m in received] == list(range(1, BURST + 1))
                await assert_alive(sub)
