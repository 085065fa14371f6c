"""Handshakes and requests held to bounds of size and time, and sockets counted from accept."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
import structlog
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from broker.settings import LimitSettings, ServerSettings, Settings
from broker.sockets import SocketTally, tally_for
from protocol import JSON, Disconnect, Ping, Pong
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.hostile.rawhttp import (
    MiB,
    close,
    connect,
    read_until_closed,
    rss,
    send_quietly,
    upgrade_request,
)
from tests.rawclient import server_holds
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

#: Handshake deadline in these tests; every wait for its effect allows it plus a margin.
DEADLINE = 1.0


async def stop(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait for it, so its socket is unregistered before it is closed."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path", "expected"),
    [
        (("X-Big: " + "a" * 9000,), "/v1/ws", 431),  # one header line over 8 KiB
        (tuple(f"X-H{i}: v" for i in range(130)), "/v1/ws", 431),  # over 128 headers
        ((), "/v1/ws?" + "q" * 9000, 414),  # a request line over 8 KiB
    ],
    ids=["long-header-line", "too-many-headers", "long-url"],
)
async def test_a_handshake_the_frame_parser_refuses_is_answered_and_closed(
    extra: tuple[str, ...], path: str, expected: int
) -> None:
    async with serve_broker() as running:
        sock = await connect(running.port)
        port = sock.getsockname()[1]
        with structlog.testing.capture_logs() as logs:
            assert await send_quietly(sock, upgrade_request(path, *extra, port=running.port))
            response = await read_until_closed(sock)
        close(sock)
        assert status(response) == expected
        await wait_until(lambda: not server_holds(running.port, port))
        assert [e["event"] for e in logs].count("websocket.bad_handshake") == 1


@pytest.mark.parametrize("upgrade", [True, False], ids=["websocket", "http"])
async def test_a_huge_request_head_is_refused_with_431_and_memory_stays_bounded(
    upgrade: bool,
) -> None:
    async with serve_broker() as running:
        piece = b"h" * (64 * 1024)  # sent 256 times: a 16 MiB header, never whole in memory

        async def send_huge(sock: socket.socket, head: bytes) -> None:
            if not await send_quietly(sock, head + b"X-Huge: "):
                return
            for _ in range(256):
                if not await send_quietly(sock, piece):
                    return
            await send_quietly(sock, b"\r\n\r\n")

        before = rss()
        for _ in range(4):
            sock = await connect(running.port)
            port = sock.getsockname()[1]
            if upgrade:
                head = upgrade_request(port=running.port).removesuffix(b"\r\n")
            else:
                head = b"GET /healthz HTTP/1.1\r\n"
            sender = asyncio.create_task(send_huge(sock, head))
            response = await read_until_closed(sock)
            await stop(sender)
            close(sock)
            assert status(response) == 431
            await wait_until(lambda port=port: not server_holds(running.port, port))  # type: ignore[misc]
        grown = rss() - before
        assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


async def test_a_long_url_in_a_plain_request_is_refused_with_414() -> None:
    async with serve_broker() as running:
        sock = await connect(running.port)
        sender = asyncio.create_task(
            send_quietly(sock, b"GET /" + b"u" * (128 * 1024) + b" HTTP/1.1\r\n")
        )
        response = await read_until_closed(sock)
        await stop(sender)
        close(sock)
        assert status(response) == 414


# --- time ---------------------------------------------------------------------------------------


def deadline_settings(**limits: int) -> Settings:
    return Settings(
        server=ServerSettings(handshake_timeout=DEADLINE), limits=LimitSettings(**limits)
    )


async def trickle(sock: socket.socket, data: bytes, every: float) -> None:
    for i in range(len(data)):
        if not await send_quietly(sock, data[i : i + 1]):
            return
        await asyncio.sleep(every)


@pytest.mark.parametrize(
    "kind", ["silent", "trickled-request-line", "trickled-upgrade", "short-body", "endless-chunks"]
)
async def test_a_request_not_complete_within_the_deadline_gets_408_and_the_socket_goes(
    kind: str,
) -> None:
    async with serve_broker(deadline_settings()) as running:
        sock = await connect(running.port)
        port = sock.getsockname()[1]
        sender: asyncio.Task[None] | None = None
        if kind == "trickled-request-line":
            sender = asyncio.create_task(trickle(sock, b"GET /healthz HTTP/1.1\r\n" * 10, 0.05))
        elif kind == "trickled-upgrade":
            request = upgrade_request(port=running.port)
            sender = asyncio.create_task(trickle(sock, request, 0.05))
        elif kind == "short-body":
            await send_quietly(
                sock,
                b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"chan',
            )
        elif kind == "endless-chunks":
            await send_quietly(
                sock,
                b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
            )

            async def chunks() -> None:
                # A chunk every 50 ms, for ever (until the server closes the socket).
                for _ in range(10_000):
                    if not await send_quietly(sock, b"1\r\n \r\n"):
                        return
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(chunks())
        with structlog.testing.capture_logs() as logs:
            response = await read_until_closed(sock, DEADLINE + TIMEOUT / 2)
        if sender is not None:
            await stop(sender)
        close(sock)
        assert status(response) == 408
        await wait_until(lambda: not server_holds(running.port, port))
        events = [e["event"] for e in logs]
        assert len([e for e in events if e.endswith("_timeout")]) == 1, events
        assert "http.client_disconnected" not in events


async def test_a_websocket_client_that_finishes_in_time_is_served() -> None:
    async with serve_broker(deadline_settings()) as running, open_client(running.url()) as client:
        await asyncio.sleep(DEADLINE * 1.5)  # past the handshake deadline, which no longer runs
        await client.send(Ping(id=1))
        await client.expect(Pong)


# --- counting from accept -----------------------------------------------------------------------


async def refused_code(url: str) -> int:
    async with ws_connect(url, open_timeout=TIMEOUT) as refused:
        client = ProtocolClient(refused, JSON)
        notice = await client.expect(Disconnect)
        assert notice.reconnect
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code


async def test_sockets_still_in_their_handshake_count_against_max_connections() -> None:
    async with serve_broker(deadline_settings(max_connections=3)) as running:
        silent = [await connect(running.port) for _ in range(3)]
        await wait_until(lambda: _tally(running).total >= 3)
        # Three silent sockets fill the limit: a WebSocket client is told to come back later.
        assert await refused_code(running.url()) == 1013
        # Past twice the limit, sockets are answered 503 at accept.
        more = [await connect(running.port) for _ in range(3)]
        extra = await connect(running.port)
        response = await read_until_closed(extra)
        assert status(response) == 503
        assert b"Retry-After: 5" in response
        for sock in [*silent, *more, extra]:
            close(sock)
        # Once they are gone there is room again.
        await wait_until(lambda: _tally(running).total == 0)
        async with open_client(running.url()) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)


async def test_silent_sockets_are_released_at_the_deadline_and_free_their_slots() -> None:
    async with serve_broker(deadline_settings(max_connections=2)) as running:
        silent = [await connect(running.port) for _ in range(2)]
        for sock in silent:
            assert status(await read_until_closed(sock, DEADLINE + TIMEOUT / 2)) == 408
            close(sock)
        await wait_until(lambda: _tally(running).total == 0)
        async with open_client(running.url()) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)


async def test_max_connections_per_ip_is_off_by_default_and_caps_one_address_when_set() -> None:
    async with serve_broker(deadline_settings(max_connections_per_ip=2)) as running:
        async with open_client(running.url()), open_client(running.url()):
            with structlog.testing.capture_logs() as logs:
                assert await refused_code(running.url()) == 1013
            refused = [e for e in logs if e["event"] == "connection.refused"]
            assert [e["reason"] for e in refused] == ["max_connections_per_ip"]
    async with serve_broker(deadline_settings()) as running:
        async with open_client(running.url()), open_client(running.url()):
            async with open_client(running.url()) as third:
                await third.send(Ping(id=1))
                await third.expect(Pong)


async def test_behind_a_trusted_proxy_the_cap_applies_to_the_forwarded_address() -> None:
    settings = Settings(
        server=ServerSettings(trusted_proxies=["127.0.0.0/8"]),
        limits=LimitSettings(max_connections_per_ip=1),
    )

    def as_client(address: str) -> dict[str, Any]:
        return {"additional_headers": {"X-Forwarded-For": address}}

    async with serve_broker(settings) as running:
        async with open_client(running.url(), **as_client("203.0.113.7")):
            # Another user behind the same proxy is let in; the same user again is not.
            async with open_client(running.url(), **as_client("203.0.113.8")) as other:
                await other.send(Ping(id=1))
                await other.expect(Pong)
            async with ws_connect(
                running.url(), open_timeout=TIMEOUT, **as_client("203.0.113.7")
            ) as refused:
                notice = await ProtocolClient(refused, JSON).expect(Disconnect)
                assert notice.code == 1013
    # Untrusted, the header is ignored: the peer address is what counts.
    async with serve_broker(Settings(limits=LimitSettings(max_connections_per_ip=1))) as running:
        async with open_client(running.url(), **as_client("203.0.113.7")):
            assert await refused_code(running.url()) == 1013


def _tally(running: RunningBroker) -> SocketTally:
    return tally_for(running.server.server_state)


async def test_a_request_answered_before_its_body_came_gets_no_408_after_the_answer() -> None:
    async with serve_broker(deadline_settings()) as running:
        sock = await connect(running.port)
        port = sock.getsockname()[1]
        # Answered (405) without the body being read; the body never comes.
        await send_quietly(sock, b"POST /healthz HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
        response = await read_until_closed(sock, DEADLINE + TIMEOUT / 2)
        close(sock)
        assert status(response) == 405
        assert response.count(b"HTTP/1.1 ") == 1, response
        await wait_until(lambda: not server_holds(running.port, port))
