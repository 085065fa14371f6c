from __future__ import annotations
import asyncio
from contextlib import AsyncExitStack
import pytest
from protocol import Encoding, Publish, Published, Error
from tests.broker.backplane.test_redis import on_redis, brokers
from tests.broker.backplane.test_behaviour import raw
from tests.wsclient import open_client
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

async def test_probe(redis_server: RedisServer) -> None:
    async with brokers(on_redis(redis_server.url), 1) as (a,), AsyncExitStack() as stack:
        pubs = [await stack.enter_async_context(open_client(a.url())) for _ in range(150)]
        for i, p in enumerate(pubs):
            await p.send(Publish(id=1, channel="news", data=raw(p, i)))
        replies = [await p.recv() for p in pubs]
        errors = [r for r in replies if isinstance(r, Error)]
        print("ERRORS", len(errors), errors[:1])
