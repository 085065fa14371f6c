"""What the flush scheduler and the outboxes cost per delivery, without sockets or a server.

``connections`` outboxes wired as ``Connection`` wires them (a writer without a task, a
``write_through`` that takes everything) but writing nowhere, ``channels`` of ``per_channel``
subscribers, and publications offered on a clock at ``rate`` (round-robin over the channels) for
``duration`` seconds, on uvloop. It prints the process's CPU per delivery and writes per
delivery: the Python cost of ``offer`` and ``FlushScheduler`` (and of this harness), which the
end-to-end figures cannot separate from the kernel's.

``--tree DIR`` imports ``broker`` and ``protocol`` from ``DIR`` instead (e.g. another revision
exported with ``git archive <rev> broker protocol | tar -x -C DIR``), so two revisions can be
compared in turn:

    .venv/bin/python -m benchmarks.flushcost
    .venv/bin/python -m benchmarks.flushcost --tree /tmp/perf-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.generator import loop as generator_loop


async def measure(args: argparse.Namespace, outbox_module: Any, frame_type: Any) -> str:
    policy = importlib.import_module("broker.settings").OverflowPolicy.DISCONNECT
    flusher = outbox_module.FlushScheduler(args.interval)
    writes = 0
    boxes: list[Any] = []

    def ready() -> None:
        pass

    def wire(outbox: Any) -> None:
        def write_through() -> bool:
            nonlocal writes
            outbox.drain()
            writes += 1
            return True

        outbox.flusher = flusher
        outbox.write_through = write_through
        outbox.call_when_ready(ready, None)

    for _ in range(args.channels * args.per_channel):
        outbox = outbox_module.Outbox(max_messages=1000, max_bytes=1 << 20, policy=policy)
        wire(outbox)
        boxes.append(outbox)
    frames = [frame_type(b"x" * 200, f"c{index}", 1) for index in range(args.channels)]
    started_cpu = time.process_time()
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < args.duration:
        due = start + seq / args.rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(max(due - now, 0.001))
            continue
        channel = seq % args.channels
        for outbox in boxes[channel * args.per_channel : (channel + 1) * args.per_channel]:
            outbox.offer(frames[channel])
            if outbox._ready_callback is None:  # woken instead of written: wait again
                outbox.call_when_ready(ready, None)
        seq += 1
    await asyncio.sleep(2 * args.interval + 0.01)
    cpu = time.process_time() - started_cpu
    flusher.close()
    deliveries = seq * args.per_channel
    return (
        f"{deliveries} deliveries, {writes / max(1, deliveries):.2f} writes per delivery,"
        f" {cpu * 1e6 / max(1, deliveries):.2f} µs CPU per delivery (no system calls)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flushcost")
    parser.add_argument("--tree", type=Path, default=None, help="import broker from here")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.005, help="queue.flush_interval")
    args = parser.parse_args(argv)
    if args.tree is not None:
        sys.path.insert(0, str(args.tree))
    outbox_module = importlib.import_module("broker.outbox")
    frame_type = importlib.import_module("protocol").Frame
    line = generator_loop.run(lambda: measure(args, outbox_module, frame_type))
    sys.stdout.write(f"{Path(outbox_module.__file__ or '').parent.parent}: {line}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
