"""``broker serve`` under ``valgrind --tool=callgrind``, collection off until asked: for A/B counts
of the instructions the server executes (free of the machine's noise; the kernel's work is not in
them). ``control("-i", "on")`` starts collecting, ``control("--dump=NAME")`` writes a count.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from benchmarks.server import free_port


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def collected(path: Path) -> int:
    """The instruction total of one callgrind dump."""
    match = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {path}")
    return int(match.group(1))


class CallgrindServer:
    """One ``broker serve`` (or ``module``, given ``--port``) on a free port, its counts written
    to ``out_dir``, with ``env`` added to this process's environment."""

    def __init__(
        self, out_dir: Path, name: str, env: Mapping[str, str], module: str | None = None
    ) -> None:
        self.name = name
        self.port = free_port()
        self.out = out_dir / f"callgrind-{name}.out"
        command = ["broker.cli", "serve"] if module is None else [module]
        self.process = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={self.out}",
                sys.executable,
                "-m",
                *command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env={**os.environ, **env},
            cwd=out_dir,  # not a checkout: ``-m`` puts the working directory first
            stdout=subprocess.DEVNULL,
            stderr=(out_dir / f"server-{name}.log").open("w"),
        )

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.process.pid)], capture_output=True, check=True
        )

    def dumps(self) -> list[Path]:
        return sorted(self.out.parent.glob(self.out.name + "*"), key=os.path.getmtime)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
