"""Instructions per ``/v1/ws`` connection opened and closed, counted by callgrind, for A/B runs.

Wall-clock rates on a shared machine swing from run to run; the instructions the server executes
per connection do not. Each tree given (a directory holding another revision's ``broker`` and
``protocol`` packages, or ``.`` for this checkout) gets its own ``broker serve`` under
``valgrind --tool=callgrind`` with collection off. After 40 connections of warm-up on each,
collection is switched on, ``connections`` connections are opened (up to ``welcome``) and
closed, one at a time, alternating between the servers, so that every tree sees the same
pace; the counts are dumped, then again after 10 s of idling, whose rate is subtracted.
The kernel's work (sends, closes) is not in these counts.

``--naive`` adds the tutorial's design (``benchmarks.peers.tutorial_chat``: uvicorn and FastAPI
with their defaults), its ``/ws/chat`` connections opened (at the handshake: it sends nothing)
and closed the same way, in the same alternation, so that the broker's count can be given as a
ratio of the naive server's.

    git archive main broker protocol | tar -x -C /tmp/base
    .venv/bin/python -m benchmarks.connrate_instructions --connections 300 /tmp/base .
    .venv/bin/python -m benchmarks.connrate_instructions --connections 300 --naive .
    .venv/bin/python -m benchmarks.connrate_instructions --log-level info /tmp/base .
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from websockets.sync.client import connect

from benchmarks.callgrind_server import CallgrindServer, collected, wait_listening

IDLE_SECONDS = 10.0
WARM_UP = 40
#: This checkout, where ``benchmarks.peers`` is.
CHECKOUT = Path(__file__).resolve().parents[1]
NAIVE = "naive"


def _one_connection(port: int, naive: bool = False) -> None:
    if naive:
        with connect(f"ws://127.0.0.1:{port}/ws/chat", open_timeout=60):
            return
    with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=60) as ws:
        ws.recv(timeout=60)  # welcome


def measure(
    trees: Sequence[Path], connections: int, log_level: str, naive: bool = False
) -> list[str]:
    """One line per tree (and the naive server): instructions per connection, raw and less the
    idle loop's."""
    out_dir = Path(tempfile.mkdtemp(prefix="connrate-instructions-"))
    servers = [
        CallgrindServer(out_dir, str(i), {"BROKER_LOG__LEVEL": log_level, "PYTHONPATH": str(tree)})
        for i, tree in enumerate(trees)
    ]
    labels = {server.name: str(tree) for server, tree in zip(servers, trees, strict=True)}
    if naive:
        servers.append(
            CallgrindServer(
                out_dir,
                NAIVE,
                {"PYTHONPATH": str(CHECKOUT)},
                module="benchmarks.peers.tutorial_chat",
            )
        )
        labels[NAIVE] = "naive (tutorial design)"
    try:
        for server in servers:
            wait_listening(server.port, 300)
        for _ in range(WARM_UP):
            for server in servers:
                _one_connection(server.port, server.name == NAIVE)
        for server in servers:
            server.control("-i", "on")
        began = time.monotonic()
        for _ in range(connections):
            for server in servers:
                _one_connection(server.port, server.name == NAIVE)
        busy = time.monotonic() - began
        for server in servers:
            server.control("--dump=connections")
        time.sleep(IDLE_SECONDS)
        for server in servers:
            server.control("--dump=idle")
        lines = []
        nets: dict[str, float] = {}
        for server in servers:
            *_, during, idle = server.dumps()
            total, idle_rate = collected(during), collected(idle) / IDLE_SECONDS
            net = nets[server.name] = (total - idle_rate * busy) / connections
            lines.append(
                f"{labels[server.name]}: {connections} connections in {busy:.1f} s;"
                f" {total / connections / 1e6:.4f} M instructions per connection"
                f" ({net / 1e6:.4f} M less the idle loop's {idle_rate / 1e6:.2f} M/s)"
            )
        if naive:
            lines += [
                f"{labels[name]} / naive: {nets[name] / nets[NAIVE]:.2f}x (less the idle loop)"
                for name in nets
                if name != NAIVE
            ]
        return lines
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(out_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.connrate_instructions",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("trees", nargs="+", type=Path, help="dirs with broker/ and protocol/")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--log-level", default="warning", help="the servers' BROKER_LOG__LEVEL")
    parser.add_argument(
        "--naive", action="store_true", help="count the tutorial's design (/ws/chat) too"
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (callgrind) is not installed")
    trees = [tree.resolve() for tree in args.trees]
    for line in measure(trees, args.connections, args.log_level, args.naive):
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
