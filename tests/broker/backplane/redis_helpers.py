"""What the Redis backplane tests share: settings of a broker on Redis, several brokers at
once, a plain Redis client, waits for state seen from outside (Redis, ``/readyz``), and a
Redis user of its own that a test can cut off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as aioredis

from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import (
    Presence,
    PresenceResult,
)
from tests.broker.backplane.test_behaviour import (
    serve_ready,
)
from tests.conftest import TIMEOUT, RunningBroker
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient

PREFIX = "broker"
NAMESPACES = {
    "h": NamespaceSettings(history_size=1000),
    #: For a steady stream through repeated outages: on a fast machine two publishers make more
    #: than 1,000 publications while a link is re-established (about 0.2 s), and what history
    #: no longer holds is a ``gap``, rightly.
    "long": NamespaceSettings(history_size=100_000),
    "small": NamespaceSettings(history_size=3),
    "p": NamespaceSettings(presence=True, join_leave=True),
}
#: A Redis user of its own for the broker a test cuts off, so that only its connections break.
USER, PASSWORD = "cutoff", "cutoff-secret"


def on_redis(*urls: str, presence_ttl: float = 30.0) -> Settings:
    """Settings of a broker on the Redis servers at ``urls`` (sharded when several), with health
    round trips every 0.2 s so that outages show quickly."""
    backplane = BackplaneSettings(
        kind=BackplaneKind.REDIS,
        redis_url=urls[0],
        redis_urls=list(urls) if len(urls) > 1 else [],
        key_prefix=PREFIX,
        health_interval=0.2,
        timeout=1.0,
        presence_ttl=presence_ttl,
    )
    return Settings(namespaces=NAMESPACES, backplane=backplane)


@asynccontextmanager
async def brokers(settings: Settings, count: int) -> AsyncIterator[list[RunningBroker]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_ready(settings)) for _ in range(count)]


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis connection for looking at what the brokers did, as redis-cli would."""
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


class Tally:
    """Items counted as they come, with a way to wait until there are ``n``."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def __len__(self) -> int:
        return len(self.items)

    async def reach(self, n: int) -> None:
        while len(self.items) < n:
            self._changed.clear()
            await self._changed.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:  # noqa: ASYNC109
    """Poll ``check()`` until it holds: for state seen from outside (Redis, HTTP)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - nothing to await: see the docstring
            await asyncio.sleep(0.02)


async def readyz(broker: RunningBroker | int) -> int | None:
    """The status of ``GET /readyz`` of a broker (in this process, or a process's port); None
    while nothing answers."""
    url = (
        broker.http("/readyz")
        if isinstance(broker, RunningBroker)
        else (f"http://127.0.0.1:{broker}/readyz")
    )
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        try:
            return (await http.get(url)).status_code
        except httpx.TransportError:
            return None


async def wait_readyz(broker: RunningBroker | int, status: int) -> None:
    """Wait until ``/readyz`` answers ``status`` (the health round trip runs every 0.2 s)."""

    async def check() -> bool:
        return await readyz(broker) == status

    await eventually(check, timeout=TIMEOUT * 2)


async def numsub(redis: aioredis.Redis, channel: str) -> int:
    """How many connections are subscribed in Redis to the live pub/sub channel of ``channel``."""
    ((_, count),) = await redis.pubsub_numsub(f"{PREFIX}:c:{channel}")
    return int(count)


async def presence_of(client: ProtocolClient, channel: str) -> list[str]:
    await client.send(Presence(id=31, channel=channel))
    return sorted(c.client for c in (await client.expect(PresenceResult)).clients)


def cutoff_url(server: RedisServer) -> str:
    return f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"


async def command(redis: aioredis.Redis, *args: str) -> Any:
    """A Redis command as redis-cli would send it."""
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def allow_cutoff_user(redis: aioredis.Redis) -> None:
    await command(redis, "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")


async def cut_off(redis: aioredis.Redis) -> None:
    """Lock the cut-off user out and drop its connections: that broker loses Redis, the others
    do not."""
    await command(redis, "ACL", "SETUSER", USER, "off")
    await command(redis, "CLIENT", "KILL", "USER", USER)
