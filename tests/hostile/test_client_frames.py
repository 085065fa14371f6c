"""Client frames parsed by the broker itself (``broker.client_frames``), over real sockets, on the
echo route (the ``/v1/ws`` stack and limits): whole messages in any chunking, other frames
through ``websockets`` in order, and the refusals as before."""

from __future__ import annotations

import asyncio
import struct

import pytest

from broker.settings import Settings, WebSocketSettings
from broker.transport import BrokerWebSocketProtocol
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.rawclient import RawClient, masked_frame, open_raw

pytestmark = pytest.mark.anyio

LIMIT = 4096
SETTINGS = Settings(websocket=WebSocketSettings(conformance_echo=True, max_message_bytes=LIMIT))


def unmasked(payload: bytes, *, opcode: int = 0x1, fin: bool = True) -> bytes:
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


def fragment(payload: bytes, *, opcode: int, fin: bool) -> bytes:
    frame = masked_frame(payload, opcode=opcode)
    return bytes([frame[0] & 0x7F if not fin else frame[0]]) + frame[1:]


async def read_frames(raw: RawClient, count: int) -> list[tuple[int, bytes]]:
    """``count`` server frames (unmasked), waited for at most ``TIMEOUT``."""
    loop = asyncio.get_running_loop()
    buffer = b""
    frames: list[tuple[int, bytes]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(frames) < count:
            chunk = await loop.sock_recv(raw.sock, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 2:
                length, header = buffer[1] & 0x7F, 2
                if length == 126:
                    if len(buffer) < 4:
                        break
                    length, header = struct.unpack("!H", buffer[2:4])[0], 4
                if len(buffer) < header + length:
                    break
                frames.append((buffer[0] & 0x0F, buffer[header : header + length]))
                buffer = buffer[header + length :]
    return frames


def protocols(running: RunningBroker) -> list[BrokerWebSocketProtocol]:
    connections = running.server.server_state.connections
    return [c for c in connections if isinstance(c, BrokerWebSocketProtocol)]


async def echo_client(running: RunningBroker) -> RawClient:
    raw = await open_raw(running.port, "/conformance/echo", rcvbuf=1 << 20)
    await wait_until(lambda: any(p.fast_frames for p in protocols(running)))
    return raw


async def test_whole_messages_in_one_write_or_byte_by_byte_are_each_echoed_in_order() -> None:
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            messages = [b"m%d" % i + b"x" * (i * 100) for i in range(30)]  # up to 2,900 bytes
            await raw.send(b"".join(masked_frame(m) for m in messages))
            assert await read_frames(raw, 30) == [(0x1, m) for m in messages]
            # The same, a byte at a time: partial frames wait, whole, until the rest comes.
            wire = b"".join(masked_frame(m, opcode=0x2) for m in messages[:5])
            for i in range(len(wire)):
                await raw.send(wire[i : i + 1])
            assert await read_frames(raw, 5) == [(0x2, m) for m in messages[:5]]
            (protocol,) = protocols(running)
            assert protocol.fast_frames and protocol.frames_pending is None
        finally:
            raw.reset()


async def test_pings_and_fragmented_messages_among_whole_ones_keep_their_order() -> None:
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            wire = (
                masked_frame(b"one")
                + masked_frame(b"are you there", opcode=0x9)
                + fragment(b"fr", opcode=0x1, fin=False)
                + masked_frame(b"", opcode=0x9)  # a ping inside a fragmented message
                + fragment(b"ag", opcode=0x0, fin=False)
                + fragment(b"ment", opcode=0x0, fin=True)
                + masked_frame(b"two")
            )
            await raw.send(wire)
            frames = await read_frames(raw, 5)
            # Pongs are written when their ping is read; echoes when the app has run.
            pongs = [payload for opcode, payload in frames if opcode == 0xA]
            echoes = [payload for opcode, payload in frames if opcode == 0x1]
            assert pongs == [b"are you there", b""]
            assert echoes == [b"one", b"fragment", b"two"]
            (protocol,) = protocols(running)
            assert protocol.fast_frames
        finally:
            raw.reset()


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        # A whole message inside a fragmented one: websockets' 1002, as before.
        (fragment(b"fr", opcode=0x1, fin=False) + masked_frame(b"other"), 1002),
        (unmasked(b"not masked"), 1002),
        (masked_frame(b"x", opcode=0x5), 1002),  # a reserved opcode
        (bytes([0xC1]) + masked_frame(b"rsv")[1:], 1002),  # a reserved bit
        (b"\x81\xfe\x20\x00" + b"mask", 1009),  # 8 KiB declared, over the limit: refused at once
        (masked_frame(b"\xff\xfe"), 1007),  # invalid UTF-8
    ],
    # Named, not shown: the masks are random, and ids must be the same in every collection
    # (pytest-xdist's workers each collect the suite).
    ids=[
        "message-inside-fragments",
        "unmasked",
        "reserved-opcode",
        "reserved-bit",
        "declared-over-limit",
        "invalid-utf8",
    ],
)
async def test_what_websockets_refused_is_still_refused(wire: bytes, code: int) -> None:
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            await raw.send(masked_frame(b"before") + wire)
            frames = await read_frames(raw, 2)
            assert frames[0] == (0x1, b"before") or frames[0][0] == 0x8
            close = [payload for opcode, payload in frames if opcode == 0x8]
            assert close and struct.unpack("!H", close[0][:2])[0] == code
        finally:
            raw.reset()


async def test_a_partial_frame_held_is_bounded_by_the_message_limit() -> None:
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            frame = masked_frame(b"y" * LIMIT, opcode=0x2)
            await raw.send(frame[:-1])
            (protocol,) = protocols(running)
            await wait_until(
                lambda: (
                    protocol.frames_pending is not None
                    and len(protocol.frames_pending) == len(frame) - 1
                )
            )
            assert len(frame) - 1 <= LIMIT + 14
            await raw.send(frame[-1:])
            assert await read_frames(raw, 1) == [(0x2, b"y" * LIMIT)]
            assert protocol.frames_pending is None
        finally:
            raw.reset()
