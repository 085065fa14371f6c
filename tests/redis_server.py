"""A private ``redis-server`` on a free port, which a test may stop and start again."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from benchmarks.server import free_port as _free_port
from tests.conftest import REDIS_MISSING, TIMEOUT


class RedisServer:
    """One redis-server process, with no persistence, owned by the test that started it."""

    def __init__(self, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            # CI must fail, not skip, when Redis tests cannot run (.ci/run installs it); the
            # session normally stops before this (tests/conftest.py).
            raise RuntimeError(REDIS_MISSING)
        self.binary = binary
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="broker-redis-"))
        self.process: asyncio.subprocess.Process | None = None
        #: More redis-server options (``--replicaof``, ``--cluster-enabled``, ...).
        self.args = args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--loglevel",
            "warning",
            *self.args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_listening("redis-server")

    async def _wait_listening(self, what: str) -> None:
        """Until the process accepts connections on its port; raises if it exits first."""
        assert self.process is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    if self.process.returncode is not None:
                        raise RuntimeError(f"{what} exited at start") from None
                    await asyncio.sleep(0.02)  # nothing to await: the port opens when it does
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        """Kill it (SIGKILL): nothing is saved, as with a crash."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
