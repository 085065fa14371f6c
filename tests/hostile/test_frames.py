"""Hostile frames after the handshake: endless fragments and invalid UTF-8 close the connection
with their documented code, log one line without a traceback, and cost bounded memory."""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import pytest
import structlog

from broker.settings import LogSettings, Settings
from protocol import Ping, Pong
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.hostile.rawhttp import MiB, rss
from tests.rawclient import RawClient, masked_frame, open_raw, read_frames, server_holds
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


def fragment(payload: bytes, *, opcode: int, fin: bool) -> bytes:
    """One masked frame with FIN as given (``masked_frame`` always sets it)."""
    mask = os.urandom(4)
    assert len(payload) < 126
    header = struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8 and len(payload) >= 2:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code
    return None


async def test_a_message_in_too_many_fragments_is_closed_with_1009() -> None:
    async with serve_broker() as running:
        client = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        empty = fragment(b"", opcode=0x0, fin=False)
        before = rss()
        with structlog.testing.capture_logs() as logs:
            await client.send(fragment(b"[", opcode=0x1, fin=False))
            # Far past websocket.max_fragments (1024): the server stops reading them.
            for _ in range(100):
                try:
                    await client.send(empty * 3000)
                except OSError:
                    break
            frames = await read_frames(client, idle=TIMEOUT / 2)
            await wait_until(lambda: not server_holds(running.port, client.local_port))
        grown = rss() - before
        client.reset()
        # The disconnect, then the close frame (which the client's own flood may cut off: the
        # server's kernel resets a connection that still receives after the server closed it).
        assert any(b'"disconnect","code":1009' in payload for _, payload in frames), frames
        assert close_code(frames) in (1009, None)
        assert [e["event"] for e in logs].count("websocket.too_many_fragments") == 1
        assert grown < 8 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


async def test_a_message_in_a_few_fragments_is_read_as_one() -> None:
    async with serve_broker() as running:
        client = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        message = b'{"type":"ping","id":7}'
        parts = [message[i : i + 2] for i in range(0, len(message), 2)]
        frames = [fragment(parts[0], opcode=0x1, fin=False)]
        frames += [fragment(p, opcode=0x0, fin=False) for p in parts[1:-1]]
        frames.append(fragment(parts[-1], opcode=0x0, fin=True))
        await client.send(b"".join(frames))
        received = await read_frames(client, idle=1.0)
        client.reset()
        assert any(b'"pong"' in payload and b'"id":7' in payload for _, payload in received)


async def invalid_utf8(client: RawClient) -> list[tuple[int, bytes]]:
    await client.send(masked_frame(b'{"type":"ping","id":1,"x":"\xff\xfe"}', opcode=0x1))
    return await read_frames(client, idle=TIMEOUT / 2)


async def test_invalid_utf8_closes_1007_with_one_info_line_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve_broker() as running, open_client(running.url()) as healthy:
        client = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        with caplog.at_level(logging.INFO), structlog.testing.capture_logs() as logs:
            frames = await invalid_utf8(client)
        client.reset()
        assert close_code(frames) == 1007
        # The client is told why before the close frame.
        assert any(b'"disconnect"' in payload and b"1007" in payload for _, payload in frames)
        lines = [e for e in logs if e["event"] == "websocket.invalid_utf8"]
        assert [e["log_level"] for e in lines] == ["info"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        # Nobody else noticed.
        await healthy.send(Ping(id=2))
        await healthy.expect(Pong)


async def test_a_flood_of_misbehaving_clients_cannot_flood_the_log() -> None:
    settings = Settings(log=LogSettings(client_faults_per_second=5.0))
    async with serve_broker(settings) as running:
        with structlog.testing.capture_logs() as logs:
            clients = [
                await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
                for _ in range(40)
            ]
            results = await asyncio.gather(*(invalid_utf8(c) for c in clients))
        for client in clients:
            client.reset()
        assert all(close_code(frames) == 1007 for frames in results)
        lines = [e for e in logs if e["event"] == "websocket.invalid_utf8"]
        # A burst of 5, and at most a few more refilled while the 40 were served.
        assert 5 <= len(lines) <= 15, len(lines)
