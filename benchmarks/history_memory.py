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
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks.server import ServerCommand, ServerProcess, ServerStartError
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
#: A private Redis without persistence, for ``--backplanes redis``.
REDIS = ServerCommand(
    ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
)
#: Upper bound on the retained payload bytes of one case: larger payloads get fewer publications.
MAX_RETAINED_BYTES = 96 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Case:
    size: int
    data: str
    subscribers: str
    count: int
    tree: str  # "current" or "baseline"
    backplane: str = "memory"  # or "redis"


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: Case
    ok: bool
    error: str | None = None
    rss_before: int = 0
    rss_after: int = 0
    #: The Redis server's RSS (``--backplanes redis``), where history lives there.
    redis_before: int = 0
    redis_after: int = 0
    seconds: float = 0.0

    @property
    def redis_per_publication(self) -> float | None:
        if not self.ok or self.case.backplane != "redis":
            return None
        return (self.redis_after - self.redis_before) / self.case.count

    @property
    def per_publication(self) -> float | None:
        if not self.ok:
            return None
        return (self.rss_after - self.rss_before) / self.case.count

    @property
    def overhead(self) -> float | None:
        """What the broker keeps besides the payload (memory backplane: history is there)."""
        cost = self.per_publication
        if cost is None or self.case.backplane != "memory":
            return None
        return cost - self.case.size


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
    port: int,
    process: psutil.Process,
    redis: psutil.Process | None,
    case: Case,
    channels: int,
    warmup: int,
) -> tuple[int, int, int, int]:
    """RSS of the broker, then of Redis (0 without), before and after the publications."""
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
            redis_before = 0 if redis is None else await asyncio.to_thread(_settled_rss, redis)
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
            redis_after = 0 if redis is None else await asyncio.to_thread(_settled_rss, redis)
        return before, after, redis_before, redis_after
    finally:
        for subscriber in subscribers:
            if subscriber.task is not None:
                subscriber.task.cancel()
            await subscriber.websocket.close()


def _ready(port: int, timeout: float = 30.0) -> bool:
    """Wait until the broker's ``/readyz`` answers 200 (its backplane is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


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
    name = f"{case.tree}-{case.backplane}-{case.data}-{case.size}-{case.subscribers}"
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis: psutil.Process | None = None
        try:
            if case.backplane == "redis":
                redis_server = ServerProcess(REDIS, log_path=log_dir / f"{name}-redis.log")
                stack.enter_context(redis_server)
                redis = psutil.Process(redis_server.pid)
                env["BROKER_BACKPLANE__KIND"] = "redis"
                env["BROKER_BACKPLANE__REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"
            server = stack.enter_context(
                ServerProcess(broker_command(env), log_path=log_dir / f"{name}.log")
            )
        except (ServerStartError, OSError) as exc:
            return CaseResult(case, ok=False, error=f"server start: {exc}")
        if not _ready(server.port):
            return CaseResult(case, ok=False, error="the broker never became ready")
        try:
            process = psutil.Process(server.pid)
            before, after, redis_before, redis_after = asyncio.run(
                _run_case(server.port, process, redis, case, channels, warmup)
            )
        except (OSError, RuntimeError, TimeoutError) as exc:
            return CaseResult(case, ok=False, error=f"{type(exc).__name__}: {exc}")
    return CaseResult(
        case,
        ok=True,
        rss_before=before,
        rss_after=after,
        redis_before=redis_before,
        redis_after=redis_after,
        seconds=time.monotonic() - began,
    )


def _count_for(size: int, count: int) -> int:
    return max(500, min(count, MAX_RETAINED_BYTES // max(size, 1)))


def markdown(results: Sequence[CaseResult], header: Sequence[str]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    lines = [*header, ""]
    trees = sorted({r.case.tree for r in results}, reverse=True)  # current first
    redis = any(r.case.backplane == "redis" for r in results)
    columns = ["backplane", "payload B", "data", "subscribers", "count"]
    for tree in trees:
        columns += [f"{tree} B/pub", f"{tree} overhead B", f"{tree} per payload B"]
        if redis:
            columns.append(f"{tree} Redis B/pub")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    keys: dict[tuple[str, int, str, str], dict[str, CaseResult]] = {}
    for result in results:
        case = result.case
        key = (case.backplane, case.size, case.data, case.subscribers)
        keys.setdefault(key, {})[case.tree] = result
    for (backplane, size, data, subscribers), by_tree in sorted(keys.items()):
        row = [backplane, f"{size:,}", data, subscribers]
        row.append(f"{next(iter(by_tree.values())).case.count:,}")
        for tree in trees:
            found = by_tree.get(tree)
            cost = None if found is None else found.per_publication
            if found is None or cost is None:
                row += ["-", "-", "-"] + (["-"] if redis else [])
                continue
            row += [cell(cost), cell(found.overhead), f"{cost / size:.2f}"]
            if redis:
                row.append(cell(found.redis_per_publication))
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
    parser.add_argument(
        "--backplanes", default="memory", help="memory and/or redis (a private redis-server)"
    )
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--baseline", type=Path, default=None, help="another tree to compare")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def _line(result: CaseResult) -> str:
    case, cost, overhead = result.case, result.per_publication, result.overhead
    head = (
        f"{case.tree:8} {case.backplane:6} {case.data:11} {case.size:>6} B"
        f"  subscribers={case.subscribers:7} n={case.count:>6}  "
    )
    if cost is None:
        return head + f"FAILED: {result.error}"
    redis = result.redis_per_publication
    return (
        head
        + f"{cost:8,.0f} B/pub"
        + ("" if overhead is None else f"  overhead {overhead:8,.0f} B")
        + ("" if redis is None else f"  Redis {redis:8,.0f} B/pub")
        + f"  ({result.seconds:.0f} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.data.split(",")
    sets = args.subscribers.split(",")
    backplanes = args.backplanes.split(",")
    unknown = (
        [k for k in kinds if k not in DATA_KINDS]
        + [s for s in sets if s not in SUBSCRIBER_SETS]
        + [b for b in backplanes if b not in ("memory", "redis")]
    )
    if unknown:
        sys.stderr.write(f"unknown: {', '.join(unknown)}\n")
        return 2
    created = datetime.datetime.now(datetime.UTC)
    stamp = f"{created:%Y%m%dT%H%M%SZ}"
    log_dir = args.results / "logs" / f"history-memory-{stamp}"
    trees = ["current"] if args.baseline is None else ["baseline", "current"]
    load_before = os.getloadavg()
    results: list[CaseResult] = []
    cases = [
        Case(size, kind, subscribers, _count_for(size, args.count), tree, backplane)
        for backplane in backplanes
        for size in sizes
        for kind in kinds
        for subscribers in sets
        for tree in trees  # interleaved: both trees see the same machine
    ]
    for case in cases:
        result = run_case(
            case,
            channels=args.channels,
            warmup=args.warmup,
            baseline=args.baseline,
            log_dir=log_dir,
        )
        results.append(result)
        say(_line(result))
    load_after = os.getloadavg()
    header = [
        f"# Memory per retained publication ({created:%Y-%m-%d %H:%M} UTC)",
        "",
        f"{args.channels} channels, warm-up {args.warmup:,} publications;"
        " B/pub = broker RSS growth / publications retained; overhead = B/pub - payload bytes"
        " (memory backplane); Redis B/pub = redis-server RSS growth / publications.",
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
                "redis_rss_before": r.redis_before,
                "redis_rss_after": r.redis_after,
                "redis_bytes_per_publication": r.redis_per_publication,
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
