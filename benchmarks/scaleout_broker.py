"""The broker under test in the scale-out benchmarks: its command line on a Redis backplane, its
processes (the supervisor's tree, the workers that serve connections), their CPU time and
connections, and the wait until every worker is linked to Redis and ready."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import urllib.error
import urllib.request

import psutil

from benchmarks.scaleout_plan import KEY_PREFIX
from benchmarks.scaleout_redis import RedisTarget
from benchmarks.server import ServerCommand, ServerProcess, ServerStartError
from benchmarks.targets import broker_command


def broker_server_command(workers: int, redis_target: RedisTarget) -> ServerCommand:
    """``broker serve`` on the Redis backplane (``redis_cluster`` on a cluster), with
    ``--workers W`` when W > 1."""
    env = {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": redis_target.url,
        "BROKER_BACKPLANE__REDIS_CLUSTER": "true" if redis_target.cluster else "false",
        "BROKER_LOG__LEVEL": "warning",
    }
    command = broker_command(env)
    argv = [*command.argv, *(["--workers", str(workers)] if workers > 1 else [])]
    return dataclasses.replace(command, argv=argv)


def broker_workers(server: ServerProcess, workers: int) -> list[psutil.Process]:
    """The processes that serve connections: the server itself, or the supervisor's workers."""
    root = psutil.Process(server.pid)
    if workers == 1:
        return [root]
    found = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
    return sorted(found, key=lambda process: process.pid)


def broker_tree(server: ServerProcess) -> list[psutil.Process]:
    root = psutil.Process(server.pid)
    return [root, *root.children(recursive=True)]


def wait_ready(
    server: ServerProcess, redis_server: RedisTarget, workers: int, timeout: float
) -> None:
    """Until every worker's backplane link is up (its health channel is subscribed in Redis)
    and ``/readyz`` answers 200; raises ``ServerStartError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    links = 0
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerStartError(f"broker exited; log: {server.log_tail(5)}")
        links = redis_server.health_links(KEY_PREFIX)
        if links >= workers and _readyz(server.port):
            return
        time.sleep(0.1)
    raise ServerStartError(f"{links} of {workers} workers linked to Redis after {timeout:.0f} s")


def _readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def established(process: psutil.Process, port: int) -> int:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1
        for conn in connections
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == port
    )
