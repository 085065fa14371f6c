"""The Redis clients of one shard: a plain server, or the master that Redis Sentinels name.

``connect`` returns the command client a shard runs its scripts, reads and pub/sub on, and a name
for it in logs (passwords masked):

* a plain server (``redis_url``): a blocking pool of up to ``POOL_SIZE`` connections, so that a
  burst of more concurrent commands than connections waits for one (up to ``timeout``) instead of
  failing with redis-py's "Too many connections";
* with ``redis_cluster``: redis-py's cluster client, discovering the cluster from the URL's node;
* with ``redis_sentinels``: redis-py's ``SentinelConnectionPool`` for the master named
  ``redis_sentinel_master``. Each new connection asks the Sentinels where the master is, so after
  a failover the next connection (the pub/sub link's reconnection, the publish pipeline's next
  round trip) goes to the promoted replica. ``redis_url`` gives the master connections' user,
  password and database. That pool does not wait for a free connection: beyond ``POOL_SIZE``
  concurrent commands, one fails (``unavailable``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from broker.logs import redact_text
from broker.settings import BackplaneSettings, sentinel_address

#: Connections per shard and process (the pub/sub connection included).
POOL_SIZE = 100


@dataclass(slots=True)
class Connected:
    redis: aioredis.Redis
    #: For logs: the URL (password masked), or the Sentinels and master name.
    name: str
    sentinel: Sentinel | None = None
    cluster: bool = False

    async def aclose(self) -> None:
        if self.cluster:
            await self.redis.aclose()  # the cluster client's closes its nodes' pools
        else:
            await self.redis.aclose(close_connection_pool=True)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def connect(url: str, settings: BackplaneSettings) -> Connected:
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
    }
    if settings.redis_sentinels:
        addresses = [sentinel_address(a) for a in settings.redis_sentinels]
        parsed = urllib.parse.urlsplit(url)
        database = parsed.path.lstrip("/")
        sentinel = Sentinel(
            [a for a in addresses if a is not None],
            sentinel_kwargs=dict(timeouts),
            **timeouts,
        )
        redis = sentinel.master_for(
            settings.redis_sentinel_master,
            max_connections=POOL_SIZE,
            health_check_interval=0,
            username=urllib.parse.unquote(parsed.username) if parsed.username else None,
            password=urllib.parse.unquote(parsed.password) if parsed.password else None,
            db=int(database) if database.isdigit() else 0,
        )
        name = f"sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_master}"
        return Connected(redis, name, sentinel)
    if settings.redis_cluster:
        # The cluster client offers every command the shard uses (routed by key slot), sharded
        # pub/sub included; it is typed as a plain client here for the shard's sake.
        cluster = RedisCluster.from_url(
            url, max_connections=POOL_SIZE, health_check_interval=0, **timeouts
        )
        return Connected(cast(aioredis.Redis, cluster), f"cluster:{redact_text(url)}", cluster=True)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=settings.timeout,
        health_check_interval=0,
        **timeouts,
    )
    return Connected(aioredis.Redis.from_pool(pool), redact_text(url))
