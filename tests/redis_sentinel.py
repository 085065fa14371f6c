"""A private Redis master, its replica and a Redis Sentinel watching them, on free ports, for
failover tests. ``redis-server --sentinel`` runs the Sentinel (the Debian redis-server binary
is Sentinel too)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer

MASTER_NAME = "brokermaster"


class SentinelServer(RedisServer):
    """One Sentinel (quorum 1) monitoring the master at ``master_port``."""

    def __init__(self, master_port: int) -> None:
        super().__init__()
        config = Path(tempfile.mkdtemp(prefix="broker-sentinel-")) / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 500\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n"
        )
        self.config = config

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            str(self.config),
            "--sentinel",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_listening("redis-server --sentinel")

    async def close(self) -> None:
        await super().close()
        shutil.rmtree(self.config.parent, ignore_errors=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def master_port(self) -> int:
        client = aioredis.Redis(port=self.port)
        try:
            _host, port = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
            )
            return int(port)
        finally:
            await client.aclose()


class ReplicatedRedis:
    """A master, a replica of it, and a Sentinel."""

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(
            args=("--replicaof", "127.0.0.1", str(self.master.port), "--replica-priority", "1")
        )
        self.sentinel = SentinelServer(self.master.port)

    async def __aenter__(self) -> ReplicatedRedis:
        await self.master.start()
        await self.replica.start()
        await self.wait_replicated()
        await self.sentinel.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in (self.sentinel, self.replica, self.master):
            await server.close()

    async def wait_replicated(self) -> None:
        """Until the replica has caught up with everything the master has written."""
        master = aioredis.Redis(port=self.master.port)
        try:
            async with asyncio.timeout(TIMEOUT):
                while await master.execute_command("WAIT", 1, 100) < 1:  # type: ignore[no-untyped-call]
                    pass
        finally:
            await master.aclose()


__all__ = ["MASTER_NAME", "ReplicatedRedis", "SentinelServer"]
