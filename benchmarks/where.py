"""Where a server's CPU goes, from a ``py-spy record --native --format raw`` profile.

``py-spy`` writes one line per distinct stack: frames from the root to the leaf separated by
``;``, then the number of samples. Each stack is put in one bucket by its innermost frame that a
rule recognises (a system call made through libc or libuv, a module of the broker, a library), so
the buckets say what the process was doing: writing to sockets, reading them, framing,
the hub, the outboxes and their flushes, timers, the event loop itself.

    py-spy record --native --rate 200 --duration 15 --format raw -o prof.txt --pid PID
    .venv/bin/python -m benchmarks.where prof.txt --us-per-delivery 24.6
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

#: (bucket, substrings of a frame), tried for each frame from the leaf outwards; first hit wins.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("garbage collector (gc_collect_main)", ("gc_collect_main", "gc_collect_with_callback")),
    ("getpid (asyncio.get_running_loop's fork check)", ("getpid",)),
    (
        "kernel: socket writes (write/writev/send)",
        (
            "writev (",
            "__libc_write",
            "__GI___writev",
            "__send (",
            "__libc_send",
            "sendmsg",
            "uv__write",
            "uv_try_write",
            "write (libc",
        ),
    ),
    (
        "kernel: socket reads (read/recv)",
        ("__libc_read", "uv__read", "__libc_recv", "recv (", "read (libc"),
    ),
    ("kernel: epoll wait", ("epoll_wait", "epoll_pwait", "uv__io_poll")),
    (
        "timers (call_at, TimerHandle, heap)",
        ("call_at", "call_later", "TimerHandle", "uv_timer", "_run_timers"),
    ),
    (
        "outbox and flush scheduler (broker/outbox.py, broker/flusher.py)",
        ("broker/outbox.py", "broker/flusher.py"),
    ),
    (
        "hub: fan-out, channels (broker/hub.py, subscriber.py, channel_state.py)",
        (
            "broker/hub.py",
            "broker/subscriber.py",
            "broker/channel_state.py",
            "broker/commands.py",
            "broker/mailbox.py",
        ),
    ),
    (
        "write path below ASGI, frame building (broker/transport.py, transport_link.py, "
        "link_writer.py)",
        ("broker/transport.py", "broker/transport_link.py", "broker/link_writer.py"),
    ),
    (
        "connection reader/writer (broker/connection.py, v1.py)",
        ("broker/connection.py", "broker/v1.py", "broker/websocket_routes.py"),
    ),
    ("encoding, protocol (msgspec, protocol/)", ("msgspec", "/protocol/")),
    (
        "uvicorn, websocket parsing (uvicorn, websockets, broker/client_frames.py, httptools)",
        ("uvicorn/", "websockets/", "wsproto/", "httptools", "broker/client_frames.py"),
    ),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop", "uv_run", "uv__run")),
)
OTHER = "other (interpreter, allocation, unattributed)"


def bucket(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in RULES:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


def summarize(lines: Sequence[str]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        counts[bucket(stack)] += samples
        total += samples
    return counts, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.where")
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument(
        "--us-per-delivery", type=float, default=None, help="the run's server CPU per delivery"
    )
    args = parser.parse_args(argv)
    counts, total = summarize(args.profile.read_text().splitlines())
    if not total:
        raise SystemExit("no samples")
    out = ["| where | share of samples | µs per delivery |", "|---|---|---|"]
    for name, samples in counts.most_common():
        share = samples / total
        us = f"{share * args.us_per_delivery:.1f}" if args.us_per_delivery else "-"
        out.append(f"| {name} | {100 * share:.1f}% | {us} |")
    out.append(f"\n{total} samples")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
