"""Launch a server under test on a free loopback port and measure what it costs.

``ServerProcess`` starts a command as a subprocess (its output goes to a log file), waits until
the port accepts connections, and stops it (SIGTERM, then SIGKILL after a grace period): a server
frozen by a stalled client must not hang the benchmark.

``ResourceMonitor`` samples the server's resident memory every ~50 ms in a thread (the process
and its children) and reads CPU time (user + system) on demand, so a scenario can take the CPU
spent between two points; the peak RSS is the larger of the sampled maximum and ``VmHWM``.
``machine_busy_seconds`` lets a scenario tell how much CPU everything else on the machine took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar

import psutil


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent running processes since boot (any process)."""
    times = psutil.cpu_times()
    # Guest time is counted in user already; interrupts are left out, since on loopback they are
    # mostly the benchmark's own traffic.
    fields = ("user", "nice", "system")
    return float(sum(getattr(times, name, 0.0) for name in fields))


class ServerStartError(RuntimeError):
    """The server exited or never accepted connections."""


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out as a connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Ports a server under test is given: below the kernel's ephemeral range, so that no client
#: connection (of this process, or of a parallel test worker) takes one as its source port
#: between the moment it is found free and the moment the server binds it; above the ports of
#: the services that run on the machine (5432, 6379, 8000, ...).
_SERVER_PORTS = range(20_000, max(20_001, _ephemeral_floor()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started in
    another process (which binds it itself). Picked at random outside the kernel's ephemeral
    range (``_SERVER_PORTS``), so that parallel test workers rarely pick the same one and no
    outgoing connection takes it meanwhile."""
    for _ in range(200):
        port = random.choice(_SERVER_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: any port
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def wait_accepting(port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    """Wait until 127.0.0.1:port accepts a TCP connection, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerStartError(f"server did not accept on port {port} within {timeout:.0f} s")


@dataclasses.dataclass(frozen=True)
class ServerCommand:
    """How to start one kind of server: ``{port}`` in ``argv`` is replaced by the port."""

    argv: Sequence[str]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None

    def render(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


class ResourceMonitor:
    """CPU time and peak RSS of a process tree, sampled in a background thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._peak_rss = 0
        self._children: list[psutil.Process] = []
        self._children_at = -1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _tree(self) -> list[psutil.Process]:
        # Listing children scans every process: do it about once a second, not per sample.
        now = time.monotonic()
        if now - self._children_at > 1.0:
            self._children_at = now
            try:
                self._children = self._process.children(recursive=True)
            except psutil.Error:
                self._children = []
        return [self._process, *self._children]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_rss()
            self._stop.wait(self._interval)

    def sample_rss(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        self._peak_rss = max(self._peak_rss, total)
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far."""
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def vm_hwm(self) -> int:
        """The kernel's own peak RSS of the main process (``VmHWM``), in bytes; 0 if gone."""
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    @property
    def peak_rss(self) -> int:
        """The peak seen so far: sampled RSS of the tree or the main process's VmHWM."""
        return max(self._peak_rss, self.vm_hwm())


class ServerProcess:
    """A server under test, started on a free port; use as a context manager."""

    #: The CPUs every server under test is started on (``pin_servers``), or None: wherever the
    #: kernel puts it.
    pinned_cpus: ClassVar[frozenset[int] | None] = None

    def __init__(
        self,
        command: ServerCommand,
        *,
        log_path: Path,
        start_timeout: float = 20.0,
        stop_grace: float = 3.0,
    ) -> None:
        self.command = command
        self.port = free_port()
        self.log_path = log_path
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._process: subprocess.Popen[bytes] | None = None
        self._monitor: ResourceMonitor | None = None

    @property
    def monitor(self) -> ResourceMonitor:
        if self._monitor is None:
            raise RuntimeError("server not started")
        return self._monitor

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("server not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.command.env}
        with self.log_path.open("wb") as log:
            cpus = ServerProcess.pinned_cpus
            self._process = subprocess.Popen(
                self.command.render(self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.command.cwd,
                start_new_session=True,
                # Before exec, so every thread the server ever starts (a Go runtime's too) is on
                # these CPUs.
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
        try:
            wait_accepting(self.port, self._start_timeout, self._process)
        except ServerStartError:
            self.stop()
            raise
        self._monitor = ResourceMonitor(self._process.pid)
        self._monitor.start()

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL to its group); returns its exit code."""
        if self._monitor is not None:
            self._monitor.stop()
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        return process.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def pin_servers() -> str:
    """Give the servers under test the last CPU and this process (and the generator processes
    it starts afterwards, which inherit it) the others, so that a server never shares a core
    with its load nor moves between cores. Returns a line for the report."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned: one CPU"
    server, rest = cpus[-1], frozenset(cpus[:-1])
    ServerProcess.pinned_cpus = frozenset({server})
    os.sched_setaffinity(0, rest)
    return f"servers pinned to CPU {server}; generator on {sorted(rest)}"
