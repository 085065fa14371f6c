"""A private ``redis-server`` for the scale-out benchmark, and a look at the broker through it.

``RedisProcess`` starts ``redis-server`` on a free loopback port with no persistence (no RDB
snapshots, no AOF, a temporary ``--dir``), as ``tests/redis_server.py`` does for the tests: the
machine's shared Redis on 6379 is never touched. It measures its own CPU time (psutil on the
``redis-server`` pid), counts the broker processes whose backplane link is up (each one's health
loop keeps a pub/sub subscription to ``<prefix>:health:<process>``), and flushes the keys
between two brokers. ``RedisTarget`` is what the benchmarks need of a Redis deployment, one
server or a cluster (``benchmarks.redis_cluster``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, cast

import psutil
import redis

from benchmarks.server import free_port


class RedisStartError(RuntimeError):
    """redis-server is missing, exited, or never answered."""


class RedisTarget(Protocol):
    """A Redis deployment the broker runs on, as the benchmarks see it."""

    #: Redis Cluster (``redis_cluster = true`` for the broker), or one server.
    cluster: bool

    @property
    def url(self) -> str: ...

    def masters(self) -> list[RedisProcess]:
        """The processes that run the publish scripts: the server, or each cluster master."""
        ...

    def cpu_seconds(self) -> float: ...

    def version(self) -> str: ...

    def health_links(self, prefix: str = "broker") -> int: ...

    def live_subscribers(self, channel: str, prefix: str = "broker") -> int: ...

    def flush(self) -> None: ...


class RedisProcess:
    """One ``redis-server`` on 127.0.0.1, owned by the benchmark; use as a context manager.
    ``args``: more redis-server options (``--cluster-enabled yes``, ...)."""

    cluster = False

    def __init__(
        self, log_path: Path, *, start_timeout: float = 10.0, args: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisStartError("redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.log_path = log_path
        self._start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="broker-scaleout-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._psutil: psutil.Process | None = None
        self._client: redis.Redis | None = None
        self.args = args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("redis-server not started")
        return self._process.pid

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("redis-server not started")
        return self._client

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")  # redis-server appends: keep this run's lines only
        argv = [
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
            str(self._dir),
            "--loglevel",
            "warning",
            "--logfile",
            str(self.log_path),
            *self.args,
        ]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._process.poll() is not None:
                raise RedisStartError(f"redis-server exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisStartError(f"redis-server did not accept on {self.port}") from None
                time.sleep(0.02)
        self._psutil = psutil.Process(self._process.pid)
        self._client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)
        self.client.ping()

    def stop(self) -> None:
        """Kill it (nothing is saved anyway) and remove its folder."""
        if self._client is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._client.close()
            self._client = None
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- measurements ---------------------------------------------------------------------------

    def masters(self) -> list[RedisProcess]:
        return [self]

    def cpu_seconds(self) -> float:
        """User + system CPU time redis-server has used so far (all its threads)."""
        if self._psutil is None:
            return 0.0
        try:
            times = self._psutil.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def version(self) -> str:
        info = cast(dict[str, object], self.client.info("server"))
        return str(info.get("redis_version", "?"))

    def health_links(self, prefix: str = "broker") -> int:
        """Broker processes whose pub/sub link is up: one ``<prefix>:health:*`` channel each."""
        channels = cast(list[bytes], self.client.pubsub_channels(f"{prefix}:health:*"))
        return len(channels)

    def live_subscribers(self, channel: str, prefix: str = "broker") -> int:
        """Broker processes subscribed to ``channel``'s live publications."""
        key = f"{prefix}:c:{channel}"
        counts = cast(list[tuple[bytes, int]], self.client.pubsub_numsub(key))
        return int(counts[0][1]) if counts else 0

    def flush(self) -> None:
        self.client.flushall()
