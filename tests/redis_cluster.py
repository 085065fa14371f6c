"""A private Redis Cluster of three masters, each with a replica, on free ports, for tests.

Six ``redis-server --cluster-enabled yes`` processes joined with ``redis-cli --cluster create``
(the Debian redis-tools ``redis-cli``); a short ``cluster-node-timeout`` so that a killed master
is replaced by its replica within a few seconds."""

from __future__ import annotations

import asyncio
import shutil

import redis.asyncio as aioredis

from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer, _free_port

NODE_TIMEOUT_MS = 1000


class RedisClusterServers:
    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-config-file",
                    "nodes.conf",
                    # The default bus port, port + 10000, may be out of range or taken.
                    "--cluster-port",
                    str(_free_port()),
                )
            )
            for _ in range(masters * 2)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    async def __aenter__(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                await node.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli is not installed: apt-get install redis-tools")
            create = await asyncio.create_subprocess_exec(
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
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
            if "cluster_state:ok" not in info or len(masters) != len(self.nodes) // 2:
                return False
        return True

    @staticmethod
    async def masters(client: aioredis.Redis) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master, with its slot ranges."""
        raw = (await client.execute_command("CLUSTER", "NODES")).decode()  # type: ignore[no-untyped-call]
        masters: dict[int, list[tuple[int, int]]] = {}
        for line in raw.splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            ranges = []
            for part in fields[8:]:
                if part.startswith("["):
                    continue
                first, _, last = part.partition("-")
                ranges.append((int(first), int(last or first)))
            if ranges:
                masters[port] = ranges
        return masters

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
