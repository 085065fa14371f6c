"""A process whose own event loop stands still (starved of CPU, a long collection) while a health
token is on its way: the token's deadline passes during the stall, but Redis is fine, so the link
stays up. Tearing it down would subscribe every watched channel again and read every head, more
work for a loop that is already behind (seen with 100,000 connections on 2 cores: 76 links lost
in 15 minutes, each rebuild deepening the stall). A Redis that does not answer a responsive loop
still fails the link."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
import structlog

from broker.backplane.redis import RedisBackplane, RedisShard
from tests.broker.backplane.redis_helpers import eventually, on_redis
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def publish_paused(admin: aioredis.Redis) -> bool:
    """Whether a client of the broker waits in Redis with a paused ``PUBLISH`` (a health token)."""
    clients = await admin.execute_command("CLIENT", "LIST")  # type: ignore[no-untyped-call]
    return b"flags=b" in clients and b"cmd=publish" in clients


def shard_of(backplane: object) -> RedisShard:
    assert isinstance(backplane, RedisBackplane)
    (shard,) = backplane.shards
    return shard


async def test_a_health_deadline_passed_while_the_loop_was_blocked_keeps_the_link(
    redis_server: RedisServer,
) -> None:
    admin = aioredis.from_url(redis_server.url)
    settings = on_redis(redis_server.url)  # health every 0.2 s, backplane.timeout 1 s
    try:
        with structlog.testing.capture_logs() as logs:
            async with serve_broker(settings) as running:
                shard = shard_of(running.broker.backplane)
                await wait_until(lambda: shard.ready)
                # Redis holds writes for 2.2 s: the next health token waits in it...
                await admin.execute_command("CLIENT", "PAUSE", "2200", "WRITE")  # type: ignore[no-untyped-call]
                await eventually(lambda: publish_paused(admin))
                # ... while this loop (the broker's) stands still for 1.5 s, past the token's
                # 1 s deadline. Redis answers at 2.2 s, within the deadline of the next token.
                time.sleep(1.5)  # noqa: ASYNC251 - the stall is the point
                await wait_until(lambda: shard.stalled_health_checks >= 1)
                await wait_until(lambda: shard.ready, timeout=TIMEOUT)
                assert shard.links == 1  # never torn down
    finally:
        await admin.aclose()
    events = [log["event"] for log in logs]
    assert "backplane.link_lost" not in events
    assert "backplane.health_check_stalled" in events


async def test_a_redis_that_does_not_answer_a_responsive_loop_still_fails_the_link(
    redis_server: RedisServer,
) -> None:
    admin = aioredis.from_url(redis_server.url)
    try:
        with structlog.testing.capture_logs() as logs:
            async with serve_broker(on_redis(redis_server.url)) as running:
                shard = shard_of(running.broker.backplane)
                await wait_until(lambda: shard.ready)
                await admin.execute_command("CLIENT", "PAUSE", "2500", "WRITE")  # type: ignore[no-untyped-call]
                await wait_until(lambda: not shard.ready, timeout=TIMEOUT)
                await wait_until(lambda: shard.links >= 2 and shard.ready, timeout=TIMEOUT)
                assert shard.stalled_health_checks == 0
    finally:
        await admin.aclose()
    lost = [log for log in logs if log["event"] == "backplane.link_lost"]
    assert lost and all("health token" in log["error"] for log in lost), lost
