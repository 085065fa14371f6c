"""Drive one load run from the parent process and merge what the children measured.

``LoadRun`` spawns the subscriber workers and the publisher (``spawn`` start method: no state is
inherited from the parent), then: ``start()`` waits until every client is connected and joined,
``warm_up()`` until every subscriber has received a warm-up publication (so nobody joins late),
``measure()`` runs the publisher, drains, and returns a ``LoadResult``. Every wait has a
deadline; ``close()`` stops the children, killing any that do not stop in time.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import TypeVar

from benchmarks.generator.control import (
    CpuUsage,
    Drain,
    Go,
    LoadSpec,
    Ready,
    Stop,
    Warm,
    Warmup,
    WorkerSpec,
)
from benchmarks.generator.publisher import PublisherReport, publisher_main
from benchmarks.generator.subscribers import WorkerReport, worker_main

T = TypeVar("T")

#: Seconds between ``Go`` and the first publication, so every process has the command.
_START_DELAY = 0.2


class LoadError(RuntimeError):
    """The generator could not set the run up (connect, join or warm-up failed)."""


@dataclasses.dataclass
class LoadResult:
    """Everything one load run measured, from the clients' side."""

    spec: LoadSpec
    subscribers: int
    connect_failures: int
    planned: int
    sent: int
    #: Seconds from the first to the last publication (at least ``spec.duration``).
    window_s: float
    publisher: PublisherReport
    latencies_us: array[int]
    #: Unique publications of the run received, per healthy subscriber.
    received: list[int]
    duplicates: int
    out_of_order: int
    unexpected: int
    bad_frames: int
    gaps: int
    errors: Counter[str]
    closes: Counter[str]
    payload_bytes: int
    generator_cpu: list[CpuUsage]
    #: Publications owed to each subscriber (same order as ``received``); empty: ``sent`` each.
    owed: list[int] = dataclasses.field(default_factory=list)

    @property
    def delivered(self) -> int:
        return sum(self.received)

    @property
    def expected(self) -> int:
        """Deliveries owed to healthy subscribers for what the publisher sent."""
        if self.owed:
            return sum(self.owed)
        return self.sent * self.subscribers

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    @property
    def clients_with_loss(self) -> int:
        if self.owed:
            return sum(1 for got, owed in zip(self.received, self.owed, strict=True) if got < owed)
        return sum(1 for count in self.received if count < self.sent)

    @property
    def bytes_per_publication(self) -> float:
        """Average size of a publication's frame as the healthy subscribers received it."""
        return self.payload_bytes / self.delivered if self.delivered else 0.0


class LoadRun:
    """One run of the load generator; use as a context manager around the phases."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[BaseProcess, Connection]] = []
        base, extra = divmod(spec.subscribers, spec.workers)
        first = 0
        for index in range(spec.workers):
            clients = base + (1 if index < extra else 0)
            if clients == 0:
                continue
            parent, child = context.Pipe()
            worker = WorkerSpec(index, spec, clients, first)
            first += clients
            process = context.Process(
                target=worker_main,
                args=(worker, child),
                name=f"bench-subscribers-{index}",
                daemon=True,
            )
            self._workers.append((process, parent))
        parent, child = context.Pipe()
        self._publisher = (
            context.Process(
                target=publisher_main, args=(spec, child), name="bench-publisher", daemon=True
            ),
            parent,
        )
        self.connected = 0
        self.connect_failures = 0
        self.connect_errors: list[str] = []

    # --- phases ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the subscribers, wait until all joined, then start the publisher."""
        for process, _ in self._workers:
            process.start()
        deadline = time.monotonic() + self.spec.connect_timeout + 10
        for ready in self._collect(self._worker_conns, Ready, deadline, "connect"):
            self.connected += ready.connected
            self.connect_failures += ready.failed
            self.connect_errors.extend(ready.errors)
        if self.connected == 0:
            raise LoadError(f"no subscriber connected: {self.connect_errors[:3]}")
        self._publisher[0].start()
        self._collect([self._publisher[1]], Ready, deadline, "publisher connect")

    def warm_up(self) -> None:
        """Publish warm-up messages until every subscriber has received one."""
        self._publisher[1].send(Warmup())
        deadline = time.monotonic() + self.spec.warmup_timeout
        self._collect(self._worker_conns, Warm, deadline, "warm-up")

    def measure(self) -> LoadResult:
        """Publish for ``spec.duration``, drain, and merge the reports."""
        spec = self.spec
        start_ns = time.time_ns() + int(_START_DELAY * 1e9)
        for conn in [*self._worker_conns, self._publisher[1]]:
            conn.send(Go(start_ns))
        deadline = time.monotonic() + _START_DELAY + spec.duration + spec.send_grace + 10
        (publisher,) = self._collect([self._publisher[1]], PublisherReport, deadline, "publish")
        drain_deadline_ns = time.time_ns() + int(spec.drain_timeout * 1e9)
        for conn in self._worker_conns:
            conn.send(Drain(publisher.sent, drain_deadline_ns))
        deadline = time.monotonic() + spec.drain_timeout + 10
        reports = self._collect(self._worker_conns, WorkerReport, deadline, "drain")
        return self._merge(publisher, reports, start_ns)

    def close(self) -> None:
        processes = [process for process, _ in self._workers] + [self._publisher[0]]
        for conn in [*self._worker_conns, self._publisher[1]]:
            try:
                conn.send(Stop())
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for process in processes:
            if process.pid is None:
                continue
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=2)
        for conn in [*self._worker_conns, self._publisher[1]]:
            conn.close()

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def _worker_conns(self) -> list[Connection]:
        return [conn for _, conn in self._workers]

    def _collect(
        self, conns: list[Connection], kind: type[T], deadline: float, phase: str
    ) -> list[T]:
        """One message of type ``kind`` from each connection, in order, by the deadline."""
        results: dict[int, T] = {}
        pending = {id(conn): conn for conn in conns}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadError(f"{phase}: {len(pending)} generator process(es) did not answer")
            for conn in wait(list(pending.values()), timeout=remaining):
                assert isinstance(conn, Connection)
                try:
                    message = conn.recv()
                except EOFError:
                    raise LoadError(f"{phase}: a generator process exited") from None
                if isinstance(message, kind):
                    results[id(conn)] = message
                    del pending[id(conn)]
        return [results[id(conn)] for conn in conns]

    def _merge(
        self, publisher: PublisherReport, reports: list[WorkerReport], start_ns: int
    ) -> LoadResult:
        latencies: array[int] = array("q")
        received: list[int] = []
        owed: list[int] = []
        errors: Counter[str] = Counter(publisher.errors)
        closes: Counter[str] = Counter()
        for report in reports:
            latencies.frombytes(report.latencies_us)
            received.extend(report.received)
            owed.extend(report.owed or [publisher.sent] * len(report.received))
            errors.update(report.errors)
            closes.update(report.closes)
        window = max(self.spec.duration, (publisher.last_send_ns - start_ns) / 1e9)
        return LoadResult(
            spec=self.spec,
            subscribers=len(received),
            connect_failures=self.connect_failures,
            planned=publisher.planned,
            sent=publisher.sent,
            window_s=window,
            publisher=publisher,
            latencies_us=latencies,
            received=received,
            duplicates=sum(r.duplicates for r in reports),
            out_of_order=sum(r.out_of_order for r in reports),
            unexpected=sum(r.unexpected for r in reports),
            bad_frames=sum(r.bad_frames for r in reports),
            gaps=sum(r.gaps for r in reports),
            errors=errors,
            closes=closes,
            payload_bytes=sum(r.payload_bytes for r in reports),
            generator_cpu=[publisher.cpu, *(r.cpu for r in reports)],
            owed=owed,
        )
