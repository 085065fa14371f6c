"""A private Redis Cluster of three masters, each with a replica, on free ports, for tests.

Six ``redis-server --cluster-enabled yes`` processes joined with ``redis-cli --cluster create``
(the Debian redis-tools ``redis-cli``); a short ``cluster-node-timeout`` so that a killed master
is replaced by its replica within a few seconds. The node options, the ``create`` command and the
reading of ``CLUSTER NODES`` are ``benchmarks.redis_cluster``'s (the benchmarks start the same
cluster, without replicas); the nodes here are the tests' ``RedisServer``, which a test may kill."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from benchmarks.redis_cluster import cluster_ok, create_argv, node_args, parse_masters
from benchmarks.server import free_port
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer


class RedisClusterServers:
    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(args=node_args(free_port())) for _ in range(masters * 2)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    async def __aenter__(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                await node.start()
            create = await asyncio.create_subprocess_exec(
                *create_argv([node.port for node in self.nodes], replicas=1),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(create.communicate(), TIMEOUT * 3)
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {output.decode()[-500:]}")
            await self.wait_ok()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes:
            await node.close()

    async def wait_ok(self) -> None:
        """Until every node that runs says the cluster is ok and has three masters."""
        async with asyncio.timeout(TIMEOUT * 3):
            while not await self._all_ok():  # noqa: ASYNC110 - other processes: nothing to await
                await asyncio.sleep(0.1)

    async def _all_ok(self) -> bool:
        for node in self.nodes:
            if node.process is None:
                continue
            client = aioredis.Redis(port=node.port)
            try:
                info = (await client.execute_command("CLUSTER", "INFO")).decode()  # type: ignore[no-untyped-call]
                masters = await self.masters(client)
            finally:
                await client.aclose()
            if not cluster_ok(info, masters, len(self.nodes) // 2):
                return False
        return True

    @staticmethod
    async def masters(client: aioredis.Redis) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master, with its slot ranges."""
        raw = (await client.execute_command("CLUSTER", "NODES")).decode()  # type: ignore[no-untyped-call]
        return parse_masters(raw)

    async def owner(self, slot: int) -> RedisServer:
        """The node that is master of ``slot`` now."""
        live = next(node for node in self.nodes if node.process is not None)
        client = aioredis.Redis(port=live.port)
        try:
            masters = await self.masters(client)
        finally:
            await client.aclose()
        for port, ranges in masters.items():
            if any(first <= slot <= last for first, last in ranges):
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no master owns slot {slot}")

    async def wait_replicated(self, master: RedisServer) -> None:
        client = aioredis.Redis(port=master.port)
        try:
            async with asyncio.timeout(TIMEOUT):
                while await client.execute_command("WAIT", 1, 100) < 1:  # type: ignore[no-untyped-call]
                    pass
        finally:
            await client.aclose()
