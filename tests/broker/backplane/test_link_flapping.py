"""A pub/sub link that comes up and fails at once, again and again (here: an ACL user that may
subscribe but not publish, so the health round trip is refused): the backplane backs off as for
an outage, up to its cap, and says so once, instead of retrying at the shortest delay and
logging every attempt. Such a link counts as working only once a health token came back."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import structlog

from broker.backplane.redis import RedisBackplane
from tests.broker.backplane.redis_helpers import on_redis
from tests.conftest import serve_broker, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def test_a_link_refused_right_after_it_comes_up_backs_off_and_is_logged_once(
    redis_server: RedisServer,
) -> None:
    admin = aioredis.from_url(redis_server.url)
    try:
        await admin.acl_setuser(
            "subscriber",
            enabled=True,
            passwords=["+a-long-password"],
            keys=["*"],
            channels=["*"],
            categories=["+@all"],
            commands=["-publish", "-spublish"],
        )
    finally:
        await admin.aclose()
    url = redis_server.url.replace("redis://", "redis://subscriber:a-long-password@")
    with structlog.testing.capture_logs() as logs:
        async with serve_broker(on_redis(url)) as running:
            backplane = running.broker.backplane
            assert isinstance(backplane, RedisBackplane)
            (shard,) = backplane.shards
            # Old behaviour: every attempt subscribed, counted as a success, and started over at
            # the shortest delay: no count of such links grew.
            await wait_until(lambda: shard._flaps >= 4)
            assert not shard.ready
    lost = [log for log in logs if log["event"] == "backplane.link_lost"]
    assert len(lost) == 1, lost
    assert "publish" in lost[0]["error"].lower() or "permission" in lost[0]["error"].lower()
    assert "a-long-password" not in str(logs)
