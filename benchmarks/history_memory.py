"""What one retained publication costs the broker's memory (the memory backplane's history).

For each case (payload size x the publisher's data x the encodings subscribed), a fresh
``broker serve`` gets a namespace ``hist`` with a ``history_size`` large enough that nothing is
trimmed, and ``--channels`` channels in it. Subscribers of the chosen encodings (one connection
each) subscribe to every channel, so that each publication is also delivered and its frames
made, as in production. A publisher first sends ``--warmup`` publications to a channel without
history (the code paths and the allocator warm up, nothing is retained), then ``--count``
publications round-robin over the channels, pipelined, until every one is acknowledged and
every subscriber has received it. The server's RSS (``psutil``; no tracemalloc in the server, so
nothing but the broker's own objects is counted) is read after the warm-up and after the
publications, each time once the RSS has stayed put for a moment; the difference divided by the
count is the cost of one retained publication, and that minus the payload's encoded size is
the overhead.

Payloads of ``S`` bytes, as the publisher encodes them: ``json`` a JSON string of ``S`` bytes,
``msgpack`` a MessagePack str of ``S`` bytes, ``msgpack-bin`` a MessagePack bin of ``S`` bytes
(random bytes; JSON subscribers get it as base64).

    .venv/bin/python -m benchmarks.history_memory                            # every case
    .venv/bin/python -m benchmarks.history_memory --sizes 12,2048 --subscribers none,both
    .venv/bin/python -m benchmarks.history_memory --baseline /tmp/old        # before and after

``--baseline DIR`` runs each case a second time from the ``broker`` and ``protocol`` packages in
``DIR`` (e.g. ``git archive <rev> broker protocol | tar -x -C DIR``), interleaved with the
current tree's run. Writes ``results/history-memory-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks.server import ServerProcess, ServerStartError
from benchmarks.targets import broker_command

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAMESPACE = "hist"
WARM_CHANNEL = "warm"
SUBPROTOCOLS = {"json": Subprotocol("broker.v1.json"), "msgpack": Subprotocol("broker.v1.msgpack")}
#: Subscriber sets: which encodings have one subscriber on every channel.
SUBSCRIBER_SETS = {
    "none": (),
    "json": ("json",),
    "msgpack": ("msgpack",),
    "both": ("json", "msgpack"),
}
DATA_KINDS = ("json", "msgpack", "msgpack-bin")
#: Publishes in flight at once.
WINDOW = 256
#: Upper bound on the retained payload bytes of one case: larger payloads get fewer publications.
MAX_RETAINED_BYTES = 96 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Case:
    size: int
    data: str
    subscribers: str
    count: int
    tree: str  # "current" or "baseline"


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: Case
    ok: bool
    error: str | None = None
    rss_before: int = 0
    rss_after: int = 0
    seconds: float = 0.0

    @property
    def per_publication(self) -> float | None:
        if not self.ok:
            return None
        return (self.rss_after - self.rss_before) / self.case.count

    @property
    def overhead(self) -> float | None:
        cost = self.per_publication
        return None if cost is None else cost - self.case.size


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload(kind: str, size: int) -> Any:
    """A value whose encoding in the publisher's encoding is exactly ``size`` bytes."""
    if kind == "json":
        if size < 2:
            raise ValueError("a JSON string takes at least 2 bytes")
        return "x" * (size - 2)
    value: str | bytes
    for header in (1, 2, 3, 5):
        length = size - header
        if length < 0:
            continue
        value = "x" * length if kind == "msgpack" else os.urandom(length)
        if len(msgspec.msgpack.encode(value)) == size:
            return value
    raise ValueError(f"no {kind} payload of exactly {size} bytes")


def _encoder(encoding: str) -> tuple[Any, bool]:
    if encoding == "json":
        return msgspec.json.encode, True
    return msgspec.msgpack.encode, False


def _messages(frame: str | bytes) -> list[dict[str, Any]]:
    decoded: Any = (
        msgspec.json.decode(frame) if isinstance(frame, str) else msgspec.msgpack.decode(frame)
    )
    return decoded if isinstance(decoded, list) else [decoded]


async def _send(websocket: ClientConnection, encoding: str, message: dict[str, Any]) -> None:
    encode, text = _encoder(encoding)
    data = encode(message)
    await websocket.send(data.decode() if text else data)


class Subscriber:
    """One connection of one encoding, subscribed to every channel, counting ``message``s."""

    def __init__(self, websocket: ClientConnection, encoding: str) -> None:
        self.websocket = websocket
        self.encoding = encoding
        self.received = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Subscribe to ``channels`` (the caller bounds the wait), then count in a task."""
        await self.websocket.recv()  # welcome
        for index, channel in enumerate(channels, 1):
            request = {"type": "subscribe", "id": index, "channel": channel}
            await _send(self.websocket, self.encoding, request)
        pending = set(range(1, len(channels) + 1))
        while pending:
            for message in _messages(await self.websocket.recv()):
                if message.get("type") == "error":
                    raise RuntimeError(f"subscribe refused: {message}")
                if message.get("type") == "subscribed":
                    pending.discard(message.get("id"))
        self.task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        try:
            async for frame in self.websocket:
                self.received += sum(m.get("type") == "message" for m in _messages(frame))
                self.changed.set()
        finally:
            self.changed.set()  # closed: ``until`` sees it at once

    async def until(self, total: int) -> None:
        """Wait (the caller bounds it) until ``total`` publications arrived in all."""
        while self.received < total:
            if self.task is not None and self.task.done():
                raise RuntimeError(f"{self.encoding} subscriber closed")
            self.changed.clear()
            await self.changed.wait()


async def _publish(
    websocket: ClientConnection,
    encoding: str,
    channels: Sequence[str],
    data: Any,
    count: int,
    first_id: int,
    subscribers: Sequence[Subscriber],
    received: int,
) -> None:
    """``count`` publishes round-robin over ``channels``, at most ``WINDOW`` unanswered or not
    yet received by every subscriber (who had ``received`` before), so that what is in flight
    stays small, the same in the warm-up and the measured run (the caller bounds the time)."""
    encode, text = _encoder(encoding)
    sent = answered = 0

    async def answers(until: int) -> None:
        nonlocal answered
        while answered < until:
            for message in _messages(await websocket.recv()):
                kind = message.get("type")
                if kind == "published":
                    answered += 1
                elif kind == "error":
                    raise RuntimeError(f"publish refused: {message}")

    while sent < count:
        frame = encode(
            {
                "type": "publish",
                "id": first_id + sent,
                "channel": channels[sent % len(channels)],
                "data": data,
            }
        )
        await websocket.send(frame.decode() if text else frame)
        sent += 1
        if sent - answered >= WINDOW:
            await answers(sent - WINDOW // 2)
            for subscriber in subscribers:
                await subscriber.until(received + sent - WINDOW)
    await answers(sent)
    for subscriber in subscribers:
        await subscriber.until(received + sent)


def _rss(process: psutil.Process) -> int:
    rss: int = process.memory_info().rss
    return rss


def _settled_rss(process: psutil.Process, timeout: float = 10.0) -> int:
    """The RSS once three reads 0.2 s apart agree within 64 KiB (or the last read)."""
    deadline = time.monotonic() + timeout
    reads = [_rss(process)]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        reads.append(_rss(process))
        last = reads[-3:]
        if len(last) == 3 and max(last) - min(last) <= 64 * 1024:
            break
    return reads[-1]


async def _run_case(
    port: int, process: psutil.Process, case: Case, channels: int, warmup: int
) -> tuple[int, int]:
    url = f"ws://127.0.0.1:{port}/v1/ws"
    names = [f"{NAMESPACE}:c{i}" for i in range(channels)]
    publisher_encoding = "json" if case.data == "json" else "msgpack"
    data = payload(case.data, case.size)
    timeout = 60.0 + case.count * case.size / 1e6
    subscribers: list[Subscriber] = []
    try:
        for encoding in SUBSCRIBER_SETS[case.subscribers]:
            websocket = await connect(
                url, subprotocols=[SUBPROTOCOLS[encoding]], max_size=None, compression=None
            )
            subscriber = Subscriber(websocket, encoding)
            subscribers.append(subscriber)
            async with asyncio.timeout(30):
                await subscriber.subscribe([WARM_CHANNEL, *names])
        async with connect(
            url, subprotocols=[SUBPROTOCOLS[publisher_encoding]], max_size=None, compression=None
        ) as publisher:
            async with asyncio.timeout(timeout):
                await publisher.recv()  # welcome
                await _publish(
                    publisher, publisher_encoding, [WARM_CHANNEL], data, warmup, 1, subscribers, 0
                )
            before = await asyncio.to_thread(_settled_rss, process)
            async with asyncio.timeout(timeout):
                await _publish(
                    publisher,
                    publisher_encoding,
                    names,
                    data,
                    case.count,
                    10**6,
                    subscribers,
                    warmup,
                )
            after = await asyncio.to_thread(_settled_rss, process)
        return before, after
    finally:
        for subscriber in subscribers:
            if subscriber.task is not None:
                subscriber.task.cancel()
            await subscriber.websocket.close()


def run_case(
    case: Case, *, channels: int, warmup: int, baseline: Path | None, log_dir: Path
) -> CaseResult:
    env = {
        f"BROKER_NAMESPACES__{NAMESPACE.upper()}__HISTORY_SIZE": str(case.count),
        # Room in a subscriber's outbox for every publication in flight (``WINDOW``), of any
        # size: a subscriber dropped as a slow consumer would end the case.
        "BROKER_QUEUE__MAX_MESSAGES": str(max(10_000, 2 * WINDOW)),
        "BROKER_QUEUE__MAX_BYTES": str(4 * WINDOW * max(case.size, 1024)),
    }
    if case.tree == "baseline":
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline)
    name = f"{case.tree}-{case.data}-{case.size}-{case.subscribers}"
    server = ServerProcess(broker_command(env), log_path=log_dir / f"{name}.log")
    began = time.monotonic()
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        return CaseResult(case, ok=False, error=f"server start: {exc}")
    try:
        process = psutil.Process(server.pid)
        before, after = asyncio.run(_run_case(server.port, process, case, channels, warmup))
    except (OSError, RuntimeError, TimeoutError) as exc:
        return CaseResult(case, ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        server.stop()
    return CaseResult(
        case, ok=True, rss_before=before, rss_after=after, seconds=time.monotonic() - began
    )


def _count_for(size: int, count: int) -> int:
    return max(500, min(count, MAX_RETAINED_BYTES // max(size, 1)))


def markdown(results: Sequence[CaseResult], header: Sequence[str]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    lines = [*header, ""]
    trees = sorted({r.case.tree for r in results}, reverse=True)  # current first
    columns = ["payload B", "data", "subscribers", "count"]
    for tree in trees:
        columns += [f"{tree} B/pub", f"{tree} overhead B", f"{tree} per payload B"]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    keys: dict[tuple[int, str, str], dict[str, CaseResult]] = {}
    for result in results:
        case = result.case
        keys.setdefault((case.size, case.data, case.subscribers), {})[case.tree] = result
    for (size, data, subscribers), by_tree in sorted(keys.items()):
        row = [f"{size:,}", data, subscribers]
        row.append(f"{next(iter(by_tree.values())).case.count:,}")
        for tree in trees:
            found = by_tree.get(tree)
            cost = None if found is None else found.per_publication
            if found is None or cost is None:
                row += ["-", "-", "-"]
                continue
            row += [cell(cost), cell(found.overhead), f"{cost / size:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failed cases:", ""]
        lines += [f"- {r.case}: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.history_memory",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", default="12,200,2048,16384", help="payload bytes, encoded")
    parser.add_argument("--data", default="json,msgpack-bin", help=f"of {','.join(DATA_KINDS)}")
    parser.add_argument(
        "--subscribers", default="none,json,msgpack,both", help=f"of {','.join(SUBSCRIBER_SETS)}"
    )
    parser.add_argument(
        "--count",
        type=int,
        default=20_000,
        help="retained publications per case (fewer for large payloads: at most 96 MiB of them)",
    )
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--baseline", type=Path, default=None, help="another tree to compare")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.data.split(",")
    sets = args.subscribers.split(",")
    unknown = [k for k in kinds if k not in DATA_KINDS] + [
        s for s in sets if s not in SUBSCRIBER_SETS
    ]
    if unknown:
        sys.stderr.write(f"unknown: {', '.join(unknown)}\n")
        return 2
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    log_dir = args.results / "logs" / f"history-memory-{stamp}"
    trees = ["current"] if args.baseline is None else ["baseline", "current"]
    load_before = os.getloadavg()
    results: list[CaseResult] = []
    for size in sizes:
        for kind in kinds:
            for subscribers in sets:
                for tree in trees:  # interleaved: both trees see the same machine
                    case = Case(size, kind, subscribers, _count_for(size, args.count), tree)
                    result = run_case(
                        case,
                        channels=args.channels,
                        warmup=args.warmup,
                        baseline=args.baseline,
                        log_dir=log_dir,
                    )
                    results.append(result)
                    cost = result.per_publication
                    say(
                        f"{tree:8} {kind:11} {size:>6} B  subscribers={subscribers:7}"
                        f" n={case.count:>6}  "
                        + (
                            f"{cost:8,.0f} B/pub  overhead {result.overhead:8,.0f} B"
                            f"  ({result.seconds:.0f} s)"
                            if cost is not None and result.overhead is not None
                            else f"FAILED: {result.error}"
                        ),
                    )
    load_after = os.getloadavg()
    header = [
        f"# Memory per retained publication ({created:%Y-%m-%d %H:%M} UTC)",
        "",
        f"{args.channels} channels, warm-up {args.warmup:,} publications;"
        " B/pub = server RSS growth / publications retained; overhead = B/pub - payload bytes.",
        f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f}."
        + (f" Baseline tree: `{args.baseline}`." if args.baseline else ""),
    ]
    text = markdown(results, header)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"history-memory-{stamp}.md").write_text(text)
    record = {
        "created": created.isoformat(),
        "channels": args.channels,
        "warmup": args.warmup,
        "baseline": str(args.baseline) if args.baseline else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "results": [
            {
                **dataclasses.asdict(r.case),
                "ok": r.ok,
                "error": r.error,
                "rss_before": r.rss_before,
                "rss_after": r.rss_after,
                "bytes_per_publication": r.per_publication,
                "overhead_bytes": r.overhead,
                "seconds": r.seconds,
            }
            for r in results
        ],
    }
    (args.results / f"history-memory-{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    say(text)
    say(f"results: {args.results / f'history-memory-{stamp}.md'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
