"""``broker serve --workers N``: every worker's figures behind one ``/metrics``.

A scrape reaches one worker, picked by the kernel. So that it answers for the whole broker, the
parent makes a private directory (mode 0700, removed at exit) and names it in
``BROKER_METRICS_DIR``; each worker writes its own figures there, in the text format, every
``SNAPSHOT_INTERVAL`` seconds (and removes its file when it stops). ``/metrics`` answers with its
own figures read now and every other live worker's latest file, each sample labelled
``worker="<pid>"``: sum over ``worker`` for the broker's totals. Another worker's figures are at
most ``SNAPSHOT_INTERVAL`` seconds old; a file whose process is gone, or older than
``STALE_AFTER`` seconds, is left out.

Files are written and read in a worker thread; the worker's own figures are collected on the
event loop, where the broker's state lives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Final

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from broker.logs import get_logger

log = get_logger("broker.metrics")

#: Set by ``broker serve --workers N`` for its workers: the directory they share their figures in.
METRICS_DIR_ENV: Final = "BROKER_METRICS_DIR"
SNAPSHOT_INTERVAL: Final = 1.0
STALE_AFTER: Final = 10.0
_SUFFIX: Final = ".prom"


async def publish_snapshots(
    registry: CollectorRegistry,
    directory: str,
    *,
    interval: float = SNAPSHOT_INTERVAL,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Write this worker's figures to ``directory`` every ``interval`` seconds until cancelled."""
    path = os.path.join(directory, f"{os.getpid()}{_SUFFIX}")
    task_status.started()
    try:
        while True:
            text = generate_latest(registry)
            try:
                await anyio.to_thread.run_sync(_write_atomically, path, text)
            except OSError as exc:
                log.warning("metrics.snapshot_failed", path=path, error=str(exc))
            await anyio.sleep(interval)
    finally:
        with suppress(OSError):
            os.unlink(path)


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


async def render_workers(registry: CollectorRegistry, directory: str) -> bytes:
    """This worker's figures and every other live worker's, labelled by ``worker``."""
    own = list(registry.collect())
    pid = os.getpid()
    others = await anyio.to_thread.run_sync(_read_others, directory, pid)
    merged = _merge([(str(pid), own), *others])
    return generate_latest(_Families(merged))


def _read_others(directory: str, own: int) -> list[tuple[str, list[Metric]]]:
    found: list[tuple[str, list[Metric]]] = []
    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(_SUFFIX):
                continue
            try:
                pid = int(entry.name[: -len(_SUFFIX)])
            except ValueError:
                continue
            if pid == own or not _alive(pid):
                continue
            try:
                if now - entry.stat().st_mtime > STALE_AFTER:
                    continue
                with open(entry.path, encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue  # gone in between: the worker stopped
            found.append((str(pid), list(text_string_to_metric_families(text))))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _merge(sources: Iterable[tuple[str, Iterable[Metric]]]) -> list[Metric]:
    """One family per name, holding every source's samples with a ``worker`` label."""
    merged: dict[str, Metric] = {}
    for worker, families in sources:
        for family in families:
            name = family.name
            if family.type == "counter" and name.endswith("_total"):
                name = name[: -len("_total")]
            target = merged.get(name)
            if target is None:
                target = merged[name] = Metric(name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {**sample.labels, "worker": worker}
                target.samples.append(sample._replace(labels=labels))
    return list(merged.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
