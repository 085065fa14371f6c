"""Real ``broker serve`` processes on the Redis backplane: several processes as one
broker, a process killed with SIGKILL whose clients go on elsewhere, ``--workers N``."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import psutil
import pytest

from broker.client import Backoff, Message, Subscription, connect
from protocol import Encoding
from tests.broker.backplane.redis_helpers import (
    Tally,
    eventually,
    numsub,
    redis_client,
    wait_readyz,
)
from tests.broker.backplane.test_behaviour import publish, receive, subscribe
from tests.broker.test_cli import broker_process, free_port
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

FAST = Backoff(base=0.02, cap=0.2)


def redis_env(server: RedisServer) -> dict[str, str]:
    return {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": server.url,
        "BROKER_BACKPLANE__HEALTH_INTERVAL": "0.2",
        "BROKER_NAMESPACES__H__HISTORY_SIZE": "1000",
        "BROKER_LOG__LEVEL": "warning",  # nobody reads the pipe: keep it from filling up
    }


@asynccontextmanager
async def processes(server: RedisServer, count: int) -> AsyncIterator[list[int]]:
    """``count`` broker processes on the Redis at ``server``, ready; yields their ports."""
    ports = [free_port() for _ in range(count)]
    async with AsyncExitStack() as stack:
        for port in ports:
            await stack.enter_async_context(
                broker_process("serve", "--port", str(port), **redis_env(server))
            )
        async with asyncio.TaskGroup() as tasks:
            for port in ports:
                tasks.create_task(wait_readyz(port, 200))
        yield ports


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


# --- several processes as one broker ------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3], ids=["two-processes", "three-processes"])
async def test_subscribers_of_every_process_get_every_publication_in_one_order(
    redis_server: RedisServer, count: int
) -> None:
    per_publisher = 25
    total = per_publisher * count
    async with processes(redis_server, count) as ports, AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(open_client(ws_url(port), encoding))
            for port in ports
            for encoding in Encoding
        ]
        pubs = [await stack.enter_async_context(open_client(ws_url(port))) for port in ports]
        for sub in subs:
            await subscribe(sub, "h:ticks")

        async def publish_all(pub: ProtocolClient, k: int) -> None:
            for i in range(per_publisher):
                await publish(pub, "h:ticks", f"{k}-{i}", i + 1)

        async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
            for k, pub in enumerate(pubs):
                tasks.create_task(publish_all(pub, k))
        sequences = [
            [(m.offset, m.epoch, sub.data(m.data)) for m in await receive(sub, total)]
            for sub in subs
        ]
        assert [offset for offset, _, _ in sequences[0]] == list(range(1, total + 1))
        for sequence in sequences[1:]:
            assert sequence == sequences[0]


# --- a process killed with SIGKILL --------------------------------------------------------------


class Balancer:
    """A TCP load balancer in front of broker processes, as in production: each new connection
    goes to the first backend that accepts it, and dies with its backend connection."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return ws_url(self.port)

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            for port in self.ports:
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    continue
                self._writers.add(up_writer)
                await asyncio.gather(
                    self._pipe(reader, up_writer, writer),
                    self._pipe(up_reader, writer, up_writer),
                )
                return
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side gone: so is the other (the client sees its connection drop).
            writer.transport.abort()
            other.transport.abort()


async def consume(sub: Subscription[Message], tally: Tally) -> None:
    """Take every message of ``sub`` until cancelled."""
    async for message in sub:
        tally.add(message)


async def test_clients_of_a_process_killed_with_sigkill_recover_on_another_with_nothing_lost(
    redis_server: RedisServer,
) -> None:
    port_a, port_b = free_port(), free_port()
    async with (
        broker_process("serve", "--port", str(port_a), **redis_env(redis_server)) as doomed,
        broker_process("serve", "--port", str(port_b), **redis_env(redis_server)),
    ):
        await asyncio.gather(wait_readyz(port_a, 200), wait_readyz(port_b, 200))
        async with (
            Balancer([port_a, port_b]) as balancer,
            connect(balancer.url, backoff=FAST) as json_client,
            connect(balancer.url, encoding=Encoding.MSGPACK, backoff=FAST) as msgpack_client,
            open_client(ws_url(port_b)) as publisher,
        ):
            subscribers = (json_client, msgpack_client)
            subs = [await client.subscribe("h:ticks") for client in subscribers]
            tallies = [Tally() for _ in subs]
            killed = asyncio.Event()
            last = 0

            async def publish_steadily() -> None:
                nonlocal last
                while not killed.is_set() or last < 100:
                    last = (await publish(publisher, "h:ticks", last + 1, last + 1)).offset
                    await asyncio.sleep(0.002)  # a steady stream: time is the behaviour

            async def kill() -> None:
                for tally in tallies:
                    await tally.reach(20)
                doomed.send_signal(signal.SIGKILL)
                await doomed.wait()
                killed.set()

            async with asyncio.timeout(TIMEOUT * 2), asyncio.TaskGroup() as tasks:
                consumers = [
                    tasks.create_task(consume(sub, tally))
                    for sub, tally in zip(subs, tallies, strict=True)
                ]
                tasks.create_task(kill())
                await publish_steadily()
                for tally in tallies:
                    await tally.reach(last)
                for consumer in consumers:
                    consumer.cancel()
            for client, tally in zip(subscribers, tallies, strict=True):
                assert client.connections == 2  # reconnected once, to the other process
                offsets = [m.offset for m in tally.items]
                assert offsets == list(range(1, last + 1))
                assert [m.data for m in tally.items] == offsets
                assert len({m.epoch for m in tally.items}) == 1


# --- broker serve --workers N -------------------------------------------------------------------


@asynccontextmanager
async def workers(server: RedisServer, port: int, count: int) -> AsyncIterator[None]:
    """``broker serve --workers count``, stopped with SIGTERM (SIGKILL would orphan workers)."""
    async with broker_process(
        "serve", "--workers", str(count), "--port", str(port), **redis_env(server)
    ) as supervisor:
        children: set[int] = set()
        try:

            async def all_started() -> bool:
                spawned = psutil.Process(supervisor.pid).children()
                children.update(c.pid for c in spawned)  # the workers and a resource tracker
                return sum("spawn_main" in " ".join(c.cmdline()) for c in spawned) == count

            await eventually(all_started, timeout=TIMEOUT * 2)
            await wait_readyz(port, 200)
            yield
        finally:
            supervisor.send_signal(signal.SIGTERM)
            with suppress(TimeoutError):
                async with asyncio.timeout(TIMEOUT):
                    await supervisor.wait()
            for pid in children:  # whatever survived its supervisor
                with suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()


async def test_workers_share_one_port_and_a_publication_reaches_subscribers_of_every_worker(
    redis_server: RedisServer,
) -> None:
    port = free_port()
    async with (
        workers(redis_server, port, 2),
        redis_client(redis_server.url) as redis,
        AsyncExitStack() as stack,
    ):
        subs: list[ProtocolClient] = []

        async def connect_one() -> None:
            sub = await stack.enter_async_context(open_client(ws_url(port)))
            await subscribe(sub, "news")
            subs.append(sub)

        # The kernel hands each connection to one worker: connect until both have subscribers
        # (each worker subscribes once in Redis to the channel its clients want).
        async with asyncio.timeout(TIMEOUT):
            while await numsub(redis, "news") < 2:
                assert len(subs) < 200, "every connection went to the same worker"
                for _ in range(4):
                    await connect_one()
        async with open_client(ws_url(port)) as pub:
            published = await publish(pub, "news", "to all", 1)
        for sub in subs:
            (message,) = await receive(sub, 1)
            assert (message.offset, message.epoch) == (published.offset, published.epoch)
            assert sub.data(message.data) == "to all"
        assert len({sub.welcome.client for sub in subs if sub.welcome}) == len(subs)


async def test_workers_on_the_memory_backplane_are_refused_with_a_message_naming_redis() -> None:
    port = free_port()
    async with broker_process("serve", "--workers", "2", "--port", str(port)) as process:
        async with asyncio.timeout(TIMEOUT):
            _, err = await process.communicate()
    assert process.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "--workers" in lines[0] and "redis" in lines[0]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # nothing ever listened
