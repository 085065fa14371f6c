"""Redis Sentinel: the broker finds the master through a real Sentinel, and survives a failover
(the master killed with SIGKILL, its replica promoted) like a Redis restart: ``/readyz`` turns
503 then 200, publishes meanwhile answer ``unavailable`` (the Python client retries them with
their idempotency key), and subscribers get every publication once, in order, in one epoch."""

from __future__ import annotations

import pytest

from broker.client import Backoff, connect
from broker.config import ConfigError, load_settings
from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import StreamPosition
from tests.broker.backplane.redis_helpers import wait_readyz
from tests.broker.backplane.test_behaviour import history, receive, serve_ready, subscribe
from tests.redis_sentinel import MASTER_NAME, ReplicatedRedis
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


def on_sentinel(redis: ReplicatedRedis) -> Settings:
    return Settings(
        namespaces={"h": NamespaceSettings(history_size=1000)},
        backplane=BackplaneSettings(
            kind=BackplaneKind.REDIS,
            redis_sentinels=[redis.sentinel.address],
            redis_sentinel_master=MASTER_NAME,
            health_interval=0.2,
            timeout=1.0,
        ),
    )


async def test_a_failover_is_survived_like_a_restart_with_nothing_lost_or_repeated() -> None:
    async with (
        ReplicatedRedis() as redis,
        serve_ready(on_sentinel(redis)) as running,
        open_client(running.url()) as sub,
        connect(running.url(), backoff=Backoff(base=0.1, cap=0.5), publish_retry_for=30) as pub,
    ):
        await subscribe(sub, "h:ha")
        before = [await pub.publish("h:ha", i) for i in range(1, 4)]
        assert await redis.sentinel.master_port() == redis.master.port
        await redis.wait_replicated()
        await redis.master.stop()  # SIGKILL: the Sentinel promotes the replica
        await wait_readyz(running, 503)
        during = [await pub.publish("h:ha", i) for i in range(4, 7)]
        await wait_readyz(running, 200)
        assert await redis.sentinel.master_port() == redis.replica.port
        after = await pub.publish("h:ha", 7)
        replies = [*before, *during, after]
        assert [r.offset for r in replies] == list(range(1, 8))
        assert {r.epoch for r in replies} == {before[0].epoch}
        got = await receive(sub, 7)
        assert [(m.offset, m.epoch, sub.data(m.data)) for m in got] == [
            (i, before[0].epoch, i) for i in range(1, 8)
        ]
        page = await history(sub, "h:ha", since=StreamPosition(offset=0, epoch=before[0].epoch))
        assert [p.offset for p in page.publications] == list(range(1, 8))


@pytest.mark.parametrize(
    ("environ", "key", "value"),
    [
        ({"BROKER_BACKPLANE__REDIS_SENTINELS": '["10.0.0.5"]'}, "redis_sentinels[0]", "10.0.0.5"),
        ({"BROKER_BACKPLANE__REDIS_SENTINELS": '["h:0"]'}, "redis_sentinels[0]", "h:0"),
        (
            {
                "BROKER_BACKPLANE__REDIS_SENTINELS": '["h:26379"]',
                "BROKER_BACKPLANE__REDIS_CLUSTER": "true",
            },
            "redis_cluster",
            "true",
        ),
    ],
)
def test_sentinel_settings_that_cannot_work_stop_start_up_naming_the_key(
    environ: dict[str, str], key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"BROKER_BACKPLANE__KIND": "redis", **environ})
    message = str(error.value)
    assert f"backplane.{key} = " in message and value in message.lower()
    assert "expected" in message
