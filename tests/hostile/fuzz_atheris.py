"""Coverage-guided fuzzing of the real decode-and-dispatch path with atheris (libFuzzer).

A program, not a test module (``tests/hostile/test_fuzz_atheris.py`` runs it behind the ``fuzz``
marker; ``scripts/fuzz`` runs it for longer):

    .venv/bin/python -m tests.hostile.fuzz_atheris -max_total_time=60 fuzz-corpus/

It serves a broker in this process (a real uvicorn server on 127.0.0.1 and a free port, on an
event loop in a thread of its own) with a healthy client subscribed to a channel of its own.
Each input libFuzzer makes is read as WebSocket frames (``frames_of``), sent over a new real
socket to ``/v1/ws`` followed by a marker ping, exactly as ``tests/hostile/test_fuzz.py`` does
(its ``exchange``), and the input fails (libFuzzer writes it to a ``crash-*`` file and stops)
when:

- the broker closes with a code that is not documented for bad input (1011 above all), sends a
  ``disconnect`` with such a code, or answers an ``internal`` error;
- it neither answers the marker ping nor closes within the tests' timeout;
- the healthy client misses the publication made after the input, gets anything else, or its
  ping goes unanswered (checked after every 10th input by default, ``--check-every``, so the
  input that fails may come up to 9 inputs after the one to blame: a check costs about 40 ms,
  over ten times an input's exchange, because the test server's accepted sockets have no
  TCP_NODELAY (``tests.conftest.free_socket`` makes its socket without ``IPPROTO_TCP``, so
  asyncio does not set it) and a publication written right after a pong waits for the
  client's delayed ACK; ``broker serve``'s sockets have it);
- anything was logged at ``error`` or above, or with a traceback, or an exception escaped a
  thread.

The first corpus directory given (a temporary one when neither a directory nor an input file
is) is seeded with valid frames of
both encodings (``seeds``); libFuzzer adds what it finds there. The broker's modules, the
protocol and the WebSocket stack below it (``websockets``, uvicorn) are instrumented for
coverage. ``--forbid-close CODE`` removes a code from the documented ones, so that a run can
show the harness failing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
from collections.abc import MutableMapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import atheris
import msgspec
import structlog

#: The packages whose coverage guides the fuzzer (``FUZZ_INSTRUMENT``, comma-separated, to
#: choose others): the broker, the protocol, and the WebSocket stack below them.
INSTRUMENTED = os.environ.get("FUZZ_INSTRUMENT", "broker,protocol,websockets,uvicorn").split(",")

with atheris.instrument_imports(include=INSTRUMENTED):
    from broker.settings import NamespaceSettings, Settings
    from protocol import (
        CODECS,
        Encoding,
        History,
        Ping,
        Presence,
        Publish,
        Refresh,
        StreamPosition,
        Subscribe,
        Unsubscribe,
    )
    from protocol.messages import ClientMessage, Subscribed
    from tests.conftest import serve_broker
    from tests.hostile.loop import LoopThread
    from tests.hostile.test_fuzz import (
        ALLOWED_CLOSES,
        WATCHED,
        Bench,
        WireFrame,
        close_codes,
        exchange,
        exchange_then_check,
    )
    from tests.wsclient import open_client

#: Frames read from one input at most (libFuzzer's inputs are 4,096 bytes by default).
MAX_FRAMES = 16
#: Bits of a frame's flags byte (see ``frames_of``).
NOT_FIN = 0x80
#: The first byte's bit that selects MessagePack (``broker.v1.msgpack``) over JSON.
MSGPACK = 0x01


def frames_of(data: bytes) -> tuple[Encoding, list[WireFrame]]:
    """Read an input as frames: a first byte whose low bit selects the encoding (the
    subprotocol), then records of a flags byte (low nibble the opcode, bits 4-6 RSV1-3, bit 7
    set for FIN=0), a 16-bit big-endian length and the payload (cut short at the input's end).
    Every frame is masked, as a client's must be: a mutated mask is not worth the fuzzer's time
    (``test_fuzz.py`` sends unmasked frames)."""
    if not data:
        return Encoding.JSON, []
    encoding = Encoding.MSGPACK if data[0] & MSGPACK else Encoding.JSON
    frames: list[WireFrame] = []
    position = 1
    while position + 3 <= len(data) and len(frames) < MAX_FRAMES:
        flags = data[position]
        length = int.from_bytes(data[position + 1 : position + 3], "big")
        payload = data[position + 3 : position + 3 + length]
        position += 3 + length
        frames.append(
            WireFrame(
                opcode=flags & 0x0F,
                payload=payload,
                fin=not flags & NOT_FIN,
                rsv=(flags >> 4) & 0x07,
            )
        )
    return encoding, frames


def input_of(encoding: Encoding, frames: list[WireFrame]) -> bytes:
    """The inverse of ``frames_of``."""
    data = bytearray([MSGPACK if encoding is Encoding.MSGPACK else 0])
    for frame in frames:
        flags = frame.opcode | (frame.rsv << 4) | (0 if frame.fin else NOT_FIN)
        data += bytes([flags]) + len(frame.payload).to_bytes(2, "big") + frame.payload
    return bytes(data)


def seeds() -> dict[str, bytes]:
    """Valid inputs of both encodings: every request the protocol has, a message in fragments,
    a ping frame and a close frame."""
    position = StreamPosition(offset=1, epoch="e")
    requests: list[ClientMessage] = [
        Subscribe(id=1, channel="news"),
        Subscribe(id=2, channel="h:room", since=position),
        Unsubscribe(id=3, channel="news"),
        Publish(id=4, channel="news", data=msgspec.Raw(b'{"text":"hello"}')),
        Publish(channel="h:room", data=msgspec.Raw(b"[1,2,3]")),
        History(id=5, channel="h:room", since=position, limit=10),
        Presence(id=6, channel="h:room"),
        Ping(id=7),
        Refresh(id=8, token="not-a-token"),
    ]
    found: dict[str, bytes] = {}
    for encoding in Encoding:
        codec = CODECS[encoding]
        opcode = 0x1 if codec.text else 0x2
        name = "json" if encoding is Encoding.JSON else "msgpack"
        encoded = [codec.encode_client(request) for request in requests]
        for request, body in zip(requests, encoded, strict=True):
            kind = type(request).__name__.lower()
            found[f"seed-{name}-{kind}-{len(found)}"] = input_of(
                encoding, [WireFrame(opcode, body)]
            )
        found[f"seed-{name}-all"] = input_of(encoding, [WireFrame(opcode, b) for b in encoded])
        body = encoded[0]
        found[f"seed-{name}-fragments"] = input_of(
            encoding,
            [
                WireFrame(opcode, body[:5], fin=False),
                WireFrame(0x9, b"in between"),
                WireFrame(0x0, body[5:10], fin=False),
                WireFrame(0x0, body[10:]),
            ],
        )
        found[f"seed-{name}-close"] = input_of(
            encoding, [WireFrame(0x8, (1000).to_bytes(2, "big") + b"bye")]
        )
    return found


class Failures(logging.Handler):
    """Collects what the log must never hold: records at error or above, or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


class Harness:
    def __init__(self, documented: frozenset[int], check_every: int) -> None:
        self.documented = documented
        self.check_every = check_every
        self.thread = LoopThread()
        self.stack = AsyncExitStack()
        self.failures = Failures()
        logging.getLogger().addHandler(self.failures)
        logging.getLogger().setLevel(logging.INFO)
        self.escaped: list[str] = []
        threading.excepthook = self._record_escape
        # Kept open (and referenced, or collecting it would end it) for the whole run: libFuzzer
        # ends the process without returning.
        self._capture = structlog.testing.capture_logs()
        self.logs: list[MutableMapping[str, Any]] = self._capture.__enter__()
        self.bench = self.thread.run(self._start())
        self.seen_logs = 0
        self.runs = 0

    def _record_escape(self, args: threading.ExceptHookArgs) -> None:
        self.escaped.append(f"{args.exc_type.__name__}: {args.exc_value}")

    async def _start(self) -> Bench:
        settings = Settings(namespaces={"h": NamespaceSettings(history_size=10, presence=True)})
        running = await self.stack.enter_async_context(serve_broker(settings))
        healthy = await self.stack.enter_async_context(open_client(running.url()))
        await healthy.send(Subscribe(id=1, channel=WATCHED))
        await healthy.expect(Subscribed)
        return Bench(running, healthy, self.logs)

    def test_one_input(self, data: bytes) -> None:
        encoding, frames = frames_of(data)
        encoded = [frame.encode() for frame in frames]
        echoed = close_codes(frames)
        self.runs += 1
        if self.runs % self.check_every:
            self.thread.run(exchange(self.bench, encoding, encoded, echoed, self.documented))
        else:
            self.thread.run(
                exchange_then_check(self.bench, encoding, encoded, echoed, self.documented)
            )
        self._check_logs()

    def _check_logs(self) -> None:
        new = self.logs[self.seen_logs :]
        self.seen_logs = len(self.logs)
        bad = [e for e in new if e["log_level"] in ("error", "critical") or "exc_info" in e]
        assert not bad, f"logged: {bad[:3]}"
        records, self.failures.records = self.failures.records, []
        assert not records, f"logged: {[r.getMessage() for r in records[:3]]}"
        escaped, self.escaped = self.escaped, []
        assert not escaped, f"escaped a thread: {escaped[:3]}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Every other argument goes to libFuzzer (-help=1 lists its options).",
    )
    parser.add_argument(
        "--forbid-close",
        type=int,
        action="append",
        default=[],
        metavar="CODE",
        help="treat this documented close code as a failure (to see the harness fail)",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=10,
        metavar="N",
        help="check the healthy client after every Nth input (default 10; 1 to pin a failure "
        "of the healthy client on the very input, at about a fifth of the speed)",
    )
    ours, libfuzzer = parser.parse_known_args(argv[1:])
    directories = [arg for arg in libfuzzer if not arg.startswith("-") and Path(arg).is_dir()]
    files = [arg for arg in libfuzzer if not arg.startswith("-") and Path(arg).is_file()]
    if not directories and not files:
        directory = tempfile.mkdtemp(prefix="fuzz-corpus-")
        libfuzzer.append(directory)
        directories.append(directory)
    for directory in directories[:1]:
        for name, data in seeds().items():
            (Path(directory) / name).write_bytes(data)
    documented = frozenset(ALLOWED_CLOSES) - frozenset(ours.forbid_close)
    harness = Harness(documented, max(1, ours.check_every))
    atheris.Setup([argv[0], *libfuzzer], harness.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
