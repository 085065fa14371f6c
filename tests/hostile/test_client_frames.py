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


def masked_with_length(payload: bytes, marker: int, *, opcode: int = 0x1) -> bytes:
    """A final masked frame whose length is written the 16-bit (126) or 64-bit (127) way
    whatever it is (RFC 6455 asks for the shortest; ``websockets`` takes any)."""
    mask = b"\x11\x22\x33\x44"
    size = struct.pack("!H" if marker == 126 else "!Q", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | marker]) + size + mask + masked


async def test_a_whole_message_alone_in_its_read_is_echoed_whatever_its_length_encoding() -> None:
    """One message per write, so that each is all of what the broker reads (its quickest way):
    every length the 7-bit and 16-bit encodings hold at their edges, and lengths written the
    long way, come back whole and the connection stays on its own parser."""
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            for size in (0, 1, 2, 5, 6, 7, 125, 126, 127, 128, 129, 300, LIMIT - 1, LIMIT):
                message = bytes([0x61 + size % 26]) * size
                for opcode in (0x1, 0x2):
                    await raw.send(masked_frame(message, opcode=opcode))
                    assert await read_frames(raw, 1) == [(opcode, message)], (size, opcode)
            for marker in (126, 127):
                # 119 bytes the 64-bit way make a read of 6 + 127 bytes, as a 7-bit 127 would.
                for message in (b"", b"short", b"z" * 119, b"y" * 200):
                    await raw.send(masked_with_length(message, marker))
                    assert await read_frames(raw, 1) == [(0x1, message)], (marker, message)
            (protocol,) = protocols(running)
            assert protocol.fast_frames and protocol.frames_pending is None
        finally:
            raw.reset()


REFUSED = pytest.mark.parametrize(
    ("wire", "code"),
    [
        # A whole message inside a fragmented one: websockets' 1002, as before.
        (fragment(b"fr", opcode=0x1, fin=False) + masked_frame(b"other"), 1002),
        (unmasked(b"not masked"), 1002),
        (masked_frame(b"x", opcode=0x5), 1002),  # a reserved opcode
        (bytes([0xC1]) + masked_frame(b"rsv")[1:], 1002),  # a reserved bit
        (b"\x81\xfe\x20\x00" + b"mask", 1009),  # 8 KiB declared, over the limit: refused at once
        (masked_frame(b"\xff\xfe"), 1007),  # invalid UTF-8
        (masked_frame(b"x" * (LIMIT + 1)), 1009),  # whole, one byte over the limit
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
        "whole-over-limit",
    ],
)


@REFUSED
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


@REFUSED
async def test_what_websockets_refused_is_refused_alone_in_its_read(wire: bytes, code: int) -> None:
    async with serve_broker(SETTINGS) as running:
        raw = await echo_client(running)
        try:
            await raw.send(wire)
            frames = await read_frames(raw, 1)
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
