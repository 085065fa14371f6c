"""Where the memory of a ``/v1/ws`` connection goes: a ``tracemalloc`` comparison.

A ``broker serve`` process is started with ``tracemalloc`` on (``--frames`` frames per
allocation) and a ``SIGUSR1`` handler that collects garbage and dumps a snapshot. After
``--warmup`` connections opened and closed (code paths, caches and the allocator warm up), a
first snapshot; then ``--connections`` connections, each subscribed (JSON) to one shared channel
and a personal channel of its own, as in ``benchmarks.population_big``; a second snapshot. The
difference, by file and line (and by file), divided by the connections, is printed: what each
connection holds in Python objects. ``--baseline DIR`` runs the same against the ``broker`` and
``protocol`` packages in ``DIR`` (``git archive <rev> broker protocol | tar -x -C DIR``) first.

    .venv/bin/python -m benchmarks.connection_memory
    .venv/bin/python -m benchmarks.connection_memory --connections 2000 --top 40
    .venv/bin/python -m benchmarks.connection_memory --baseline /tmp/old

The figures are of Python's heap only (``tracemalloc`` sees no kernel memory and no allocator
overhead): the RSS per connection is ``benchmarks.population_big``'s to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

from benchmarks import fastws
from benchmarks.server import ServerCommand, ServerProcess
from benchmarks.targets import REPO_ROOT
from benchmarks.wire import Protocol, encode_subscribe

#: Run in the server process: tracemalloc from the start, a snapshot on SIGUSR1, then the CLI.
_BOOT = """
import gc, os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ["TRACE_FRAMES"]))
count = [0]
def dump(signum, frame):
    gc.collect()
    count[0] += 1
    path = os.path.join(os.environ["TRACE_DIR"], "snapshot-%d.bin" % count[0])
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, dump)
from broker.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def _open_all(port: int, count: int, prefix: str, concurrency: int = 50) -> list[object]:
    """``count`` connections, each subscribed to ``shared`` and ``<prefix><i>``."""
    protocol = Protocol.V1
    subprotocol = protocol.subprotocol
    gate = asyncio.Semaphore(concurrency)
    clients: list[object] = []

    async def one(position: int) -> None:
        acks = asyncio.get_running_loop().create_future()
        seen = [0]

        def on_message(frame: bytes, binary: bool = False) -> None:
            seen[0] += frame.count(b'"subscribed"')
            if seen[0] >= 2 and not acks.done():
                acks.set_result(None)

        async with gate:
            ws = await fastws.connect(
                "127.0.0.1", port, "/v1/ws", on_message, subprotocol=subprotocol
            )
            ws.send(encode_subscribe(protocol, "shared", 1))
            ws.send(encode_subscribe(protocol, f"{prefix}{position}", 2))
            async with asyncio.timeout(30):
                await acks
            clients.append(ws)

    await asyncio.gather(*(one(i) for i in range(count)))
    return clients


def _snapshot(pid: int, directory: Path, number: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    path = directory / f"snapshot-{number}.bin"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no snapshot at {path}")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


async def _measure(
    args: argparse.Namespace, pythonpath: str | None
) -> list[tracemalloc.StatisticDiff]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        env = {
            "TRACE_DIR": tmp,
            "TRACE_FRAMES": str(args.frames),
            "BROKER_LOG__LEVEL": "warning",
            # Nobody pings in this run: keep everyone in for its length.
            "BROKER_WEBSOCKET__HEARTBEAT": "600",
        }
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        command = ServerCommand(
            argv=[sys.executable, "-c", _BOOT, "serve", "--host", "127.0.0.1", "--port", "{port}"],
            env=env,
            cwd=Path(pythonpath) if pythonpath is not None else REPO_ROOT,
        )
        with ServerProcess(command, log_path=directory / "server.log") as server:
            warm = await _open_all(server.port, args.warmup, "warm.")
            for ws in warm:
                await ws.close()  # type: ignore[attr-defined]
            await asyncio.sleep(1.0)
            before = _snapshot(server.pid, directory, 1)
            clients = await _open_all(server.port, args.connections, "personal.")
            await asyncio.sleep(1.0)
            after = _snapshot(server.pid, directory, 2)
            for ws in clients:
                ws.abort()  # type: ignore[attr-defined]
    return after.compare_to(before, args.key)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


def _report(label: str, diffs: list[tracemalloc.StatisticDiff], connections: int, top: int) -> None:
    total = sum(d.size_diff for d in diffs)
    _print(f"\n## {label}: {total / connections:,.0f} bytes of Python heap per connection")
    by_file: dict[str, int] = defaultdict(int)
    for diff in diffs:
        by_file[diff.traceback[0].filename] += diff.size_diff
    _print("\n| file | bytes per connection |\n|---|---|")
    for filename, size in sorted(by_file.items(), key=lambda item: -item[1])[:top]:
        if abs(size) / connections >= 10:
            _print(f"| `{_short(filename)}` | {size / connections:,.0f} |")
    _print("\n| line | bytes per connection | blocks per connection |\n|---|---|---|")
    for diff in sorted(diffs, key=lambda d: -d.size_diff)[:top]:
        frame = diff.traceback[0]
        _print(
            f"| `{_short(frame.filename)}:{frame.lineno}` | {diff.size_diff / connections:,.0f}"
            f" | {diff.count_diff / connections:.2f} |"
        )


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3."):
        if marker in filename:
            return filename.split(marker, 1)[1]
    for package in ("/broker/", "/protocol/"):  # this tree's or a --baseline's
        if package in filename:
            return filename[filename.rindex(package) + 1 :]
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(REPO_ROOT))
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--key",
        default="lineno",
        choices=("lineno", "traceback"),
        help="group by the line or the stack",
    )
    parser.add_argument("--baseline", help="a directory holding the broker and protocol packages")
    args = parser.parse_args()
    if args.baseline:
        diffs = asyncio.run(_measure(args, str(Path(args.baseline).resolve())))
        _report(f"baseline ({args.baseline})", diffs, args.connections, args.top)
    diffs = asyncio.run(_measure(args, None))
    _report("this tree", diffs, args.connections, args.top)


if __name__ == "__main__":
    main()
