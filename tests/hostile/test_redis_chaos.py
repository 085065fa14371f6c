"""Chaos on Redis, beyond the outages tests/broker/backplane/test_redis_outages.py covers (a
Redis restart, ``CLIENT KILL TYPE pubsub``, a broker killed with SIGKILL for presence): Redis
frozen with SIGSTOP for longer than ``backplane.timeout``, and a broker killed with SIGKILL under
load while its clients move to another broker. Clients recover, every acknowledged publication
arrives once and in order, nothing crashes, and readiness tells the truth meanwhile."""

from __future__ import annotations

import asyncio
import signal

import pytest

from broker.client import Backoff, Message, Subscription, connect
from tests.broker.backplane.redis_helpers import on_redis, readyz, wait_readyz
from tests.broker.backplane.test_behaviour import serve_ready
from tests.broker.test_cli import broker_process, free_port
from tests.conftest import TIMEOUT, wait_until
from tests.faultproxy import FaultProxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

FAST = Backoff(base=0.01, cap=0.2)


async def collect(sub: Subscription[Message], into: list[int]) -> None:
    async for message in sub:
        into.append(message.offset)  # noqa: PERF401 - read as they come, for the waiter


async def caught_up(received: list[int], last: int) -> None:
    await wait_until(lambda: bool(received) and received[-1] >= last, TIMEOUT * 2)


async def test_redis_frozen_past_the_timeout_is_reported_and_nothing_acknowledged_is_lost(
    redis_server: RedisServer,
) -> None:
    settings = on_redis(redis_server.url)  # backplane.timeout 1 s, health every 0.2 s
    process = redis_server.process
    assert process is not None
    async with (
        serve_ready(settings) as publishing,
        serve_ready(settings) as subscribing,
        connect(subscribing.url(), backoff=FAST) as subscriber,
        connect(publishing.url(), backoff=FAST, request_timeout=TIMEOUT * 2) as publisher,
    ):
        sub = await subscriber.subscribe("h:frozen")
        acknowledged: list[int] = []
        received: list[int] = []
        readiness: list[int | None] = []
        frozen = asyncio.Event()
        thawed = asyncio.Event()

        async def publish() -> None:
            n = 0
            while not thawed.is_set() or n < 20:
                n += 1
                try:
                    reply = await publisher.publish("h:frozen", n)
                except Exception:
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.append(reply.offset)
                await asyncio.sleep(0.01)

        async def freeze() -> None:
            await asyncio.sleep(0.5)  # let the stream run a while before the freeze
            process.send_signal(signal.SIGSTOP)
            frozen.set()
            try:
                # Past backplane.timeout: both brokers must say they are not ready.
                await wait_readyz(subscribing, 503)
                await wait_readyz(publishing, 503)
                readiness.append(await readyz(subscribing))
                await asyncio.sleep(1.0)  # stay frozen past the timeout: the duration is the test
            finally:
                process.send_signal(signal.SIGCONT)
            await wait_readyz(subscribing, 200)
            await wait_readyz(publishing, 200)
            thawed.set()

        receiving = asyncio.create_task(collect(sub, received))
        async with asyncio.timeout(TIMEOUT * 4), asyncio.TaskGroup() as tasks:
            tasks.create_task(freeze())
            tasks.create_task(publish())
        await caught_up(received, acknowledged[-1])
        receiving.cancel()
        assert readiness == [503]
        assert acknowledged, "nothing was published"
        # Every acknowledged publication arrived, once, in order (a publish that timed out may
        # still have been written: those arrive too, in their place).
        assert received == sorted(set(received))
        assert set(acknowledged) <= set(received)
        assert received == list(range(received[0], received[-1] + 1))


async def test_a_broker_killed_under_load_its_clients_recover_on_another(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    env = {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": redis_server.url,
        "BROKER_NAMESPACES__H__HISTORY_SIZE": "10000",
        "BROKER_LOG__LEVEL": "warning",
    }
    async with (
        serve_ready(on_redis(redis_server.url)) as survivor,
        broker_process("serve", "--port", str(port), **env) as doomed,
    ):
        await wait_readyz(port, 200)
        async with (
            FaultProxy(port) as proxy,
            connect(f"ws://127.0.0.1:{proxy.port}/v1/ws", backoff=FAST) as subscriber,
            connect(survivor.url(), backoff=FAST) as publisher,
        ):
            sub = await subscriber.subscribe("h:load")
            received: list[int] = []
            last: list[int] = []
            killed = asyncio.Event()

            async def publish() -> None:
                n = 0
                while not killed.is_set() or n < 400:
                    n += 1
                    reply = await publisher.publish("h:load", n)
                    last.append(reply.offset)

            async def kill() -> None:
                while len(received) < 100:  # noqa: ASYNC110 - under load, by count
                    await asyncio.sleep(0.01)
                # Clients that come back find the other broker at the same address.
                proxy.target = ("127.0.0.1", survivor.port)
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
                proxy.cut()
                killed.set()

            receiving = asyncio.create_task(collect(sub, received))
            async with asyncio.timeout(TIMEOUT * 4), asyncio.TaskGroup() as tasks:
                tasks.create_task(kill())
                tasks.create_task(publish())
            await caught_up(received, last[-1])
            receiving.cancel()
            assert received == list(range(1, last[-1] + 1))
            assert subscriber.connections == 2
            assert await readyz(survivor) == 200
