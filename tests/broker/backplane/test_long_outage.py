"""A Redis outage of any length: the backplane comes back once Redis does, whether it was away
for a second or for days. Counted in attempts, a day is tens of thousands of them."""

from __future__ import annotations

import pytest

from broker.backoff import Backoff
from broker.backplane.redis import RedisBackplane
from protocol import Encoding
from tests.broker.backplane.redis_helpers import on_redis, wait_readyz
from tests.broker.backplane.test_behaviour import clients, publish, receive, serve_ready, subscribe
from tests.conftest import wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("attempt", [0, 1, 64, 65, 1024, 10**6])
def test_a_backoff_delay_is_capped_for_any_number_of_attempts(attempt: int) -> None:
    backoff = Backoff(base=0.1, cap=5.0)
    assert 0.0 <= backoff.delay(attempt) <= backoff.ceiling(attempt) <= 5.0
    steep = Backoff(base=1.0, cap=30.0, factor=1e10)
    assert steep.ceiling(attempt) <= 30.0


async def test_after_an_outage_of_many_thousand_attempts_the_backplane_comes_back(
    redis_server: RedisServer,
) -> None:
    async with serve_ready(on_redis(redis_server.url)) as running:
        backplane = running.broker.backplane
        assert isinstance(backplane, RedisBackplane)
        (shard,) = backplane.shards
        await redis_server.stop()
        await wait_readyz(running, 503)
        # As if Redis had been away for hours: 0.1 * 2**5000 overflows a float.
        shard._failures = 5000
        await wait_until(lambda: shard._failures > 5000)  # the link tried again, and lives
        await redis_server.start()
        await wait_readyz(running, 200)
        assert running.broker.failure is None
        async with clients(running.url(), Encoding.JSON, Encoding.JSON) as (pub, sub):
            await subscribe(sub, "h:after")
            await publish(pub, "h:after", "back", 1)
            assert [m.offset for m in await receive(sub, 1)] == [1]
