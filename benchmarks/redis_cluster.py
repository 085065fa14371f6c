"""A private Redis Cluster on free loopback ports: how to start one, and how to read its state.

The cluster's own knowledge, shared by the benchmarks and the tests (``tests/redis_cluster.py``
runs the same nodes and the same ``create`` under asyncio, with a replica per master):

* ``node_args``: the options that make a ``redis-server`` a cluster node on a private bus port;
* ``create_argv``: ``redis-cli --cluster create`` (the Debian redis-tools ``redis-cli``) over the
  nodes, masters first, with ``replicas`` replicas per master;
* ``parse_masters`` and ``cluster_ok``: the live masters and their slot ranges from ``CLUSTER
  NODES``, and whether a node's ``CLUSTER INFO`` says the cluster is whole.

``RedisCluster`` is the benchmarks' cluster (``RedisTarget``, as ``RedisProcess`` is one
server): ``masters`` ``RedisProcess`` nodes (no replicas by default), each measured alone (its
CPU, its publish scripts), so that the load of each master shows.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from benchmarks.scaleout_redis import RedisProcess, RedisStartError
from benchmarks.server import free_port

#: ``cluster-node-timeout``: short, so that a killed master's replica is promoted in seconds.
NODE_TIMEOUT_MS = 1000


def node_args(bus_port: int, node_timeout_ms: int = NODE_TIMEOUT_MS) -> tuple[str, ...]:
    """The ``redis-server`` options of a cluster node whose cluster bus is on ``bus_port``."""
    return (
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        str(node_timeout_ms),
        "--cluster-config-file",
        "nodes.conf",
        # The default bus port, port + 10000, may be out of range or taken.
        "--cluster-port",
        str(bus_port),
    )


def redis_cli() -> str:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RedisStartError("redis-cli is not installed: apt-get install redis-tools")
    return cli


def create_argv(ports: Sequence[int], replicas: int) -> list[str]:
    """``redis-cli --cluster create`` over the nodes on ``ports`` (masters first)."""
    return [
        redis_cli(),
        "--cluster",
        "create",
        *(f"127.0.0.1:{port}" for port in ports),
        "--cluster-replicas",
        str(replicas),
        "--cluster-yes",
    ]


def parse_masters(cluster_nodes: str) -> dict[int, list[tuple[int, int]]]:
    """Port of each live master that owns slots, with its slot ranges, from ``CLUSTER NODES``."""
    masters: dict[int, list[tuple[int, int]]] = {}
    for line in cluster_nodes.splitlines():
        fields = line.split()
        if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        ranges = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = part.partition("-")
            ranges.append((int(first), int(last or first)))
        if ranges:
            masters[port] = ranges
    return masters


def cluster_ok(
    cluster_info: str, masters: Mapping[int, list[tuple[int, int]]], expected: int
) -> bool:
    """Whether a node's ``CLUSTER INFO`` says ok and its view has ``expected`` masters."""
    return "cluster_state:ok" in cluster_info and len(masters) == expected


def _command(node: RedisProcess, *args: str) -> Any:
    return node.client.execute_command(*args)  # type: ignore[no-untyped-call]


class RedisCluster:
    """A cluster of ``masters`` masters (each with ``replicas`` replicas) on 127.0.0.1, owned by
    the benchmark; use as a context manager. Logs go to ``<log_prefix>-<n>.log``."""

    cluster = True

    def __init__(
        self, log_prefix: Path, *, masters: int = 3, replicas: int = 0, timeout: float = 30.0
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.replicas = replicas
        self.expected = masters
        self._timeout = timeout
        self.nodes = [
            RedisProcess(
                log_prefix.with_name(f"{log_prefix.name}-{number}.log"),
                args=node_args(free_port()),
            )
            for number in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            done = subprocess.run(
                create_argv([node.port for node in self.nodes], self.replicas),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")[-500:]
                raise RedisStartError(f"redis-cli --cluster create failed: {output}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ok(self) -> None:
        """Until every node says the cluster is ok and sees every master."""
        deadline = time.monotonic() + self._timeout
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RedisStartError(f"the cluster was not ok after {self._timeout:.0f} s")
            time.sleep(0.1)

    def _ok(self, node: RedisProcess) -> bool:
        info = cast(bytes, _command(node, "CLUSTER", "INFO")).decode()
        nodes = cast(bytes, _command(node, "CLUSTER", "NODES")).decode()
        return cluster_ok(info, parse_masters(nodes), self.expected)

    # --- measurements (RedisTarget) ---------------------------------------------------------

    def masters(self) -> list[RedisProcess]:
        """The nodes that are masters now, in port order."""
        ports = self.slots()
        return sorted((n for n in self.nodes if n.port in ports), key=lambda n: n.port)

    def slots(self) -> dict[int, list[tuple[int, int]]]:
        """Each master's port with its slot ranges."""
        raw = cast(bytes, _command(self.nodes[0], "CLUSTER", "NODES")).decode()
        return parse_masters(raw)

    def keyslot(self, key: str) -> int:
        return int(cast(int, _command(self.nodes[0], "CLUSTER", "KEYSLOT", key)))

    def cpu_seconds(self) -> float:
        """User + system CPU time of every node so far."""
        return sum(node.cpu_seconds() for node in self.nodes)

    def version(self) -> str:
        return self.nodes[0].version()

    def health_links(self, prefix: str = "broker") -> int:
        """Broker processes whose pub/sub link is up: one sharded ``<prefix>:health:*`` channel
        each, on whichever master owns its slot."""
        found = 0
        for node in self.masters():
            raw = _command(node, "PUBSUB", "SHARDCHANNELS", f"{prefix}:health:*")
            found += len(cast(list[bytes], raw))
        return found

    def live_subscribers(self, channel: str, prefix: str = "broker") -> int:
        """Broker processes subscribed (sharded) to ``channel``'s live publications."""
        key = f"{prefix}:c:{{{channel}}}"
        found = 0
        for node in self.masters():
            raw = cast(list[object], _command(node, "PUBSUB", "SHARDNUMSUB", key))
            found += int(cast(int, raw[1])) if len(raw) > 1 else 0
        return found

    def flush(self) -> None:
        for node in self.masters():
            node.client.flushall()  # replicas follow their master
