"""The opening handshake answered from the request httptools parsed (``broker.handshake``): the
101 and every refusal, over real sockets, and the same ASGI scope whichever way the request
went (read by ``broker.handshake``, or handed to ``websockets`` to parse as before)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from broker.handshake import Opening, frame_protocol, read_opening
from broker.settings import Settings, WebSocketSettings
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.hostile.rawhttp import close, connect, read_until_closed, send_quietly

pytestmark = pytest.mark.anyio

KEY = base64.b64encode(b"0123456789abcdef").decode()


def request(
    path: str = "/v1/ws",
    *extra: str,
    method: str = "GET",
    key: str | None = KEY,
    version: str | None = "13",
    connection: str = "Upgrade",
    upgrade: str = "websocket",
) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Upgrade: {upgrade}",
        f"Connection: {connection}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def head_of(response: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names lower case) and what follows the head."""
    head, _, rest = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 "), response[:80]
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return int(status_line[9:12]), headers, rest


async def refusal(running: RunningBroker, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` and read the answer until the server closes the socket."""
    sock = await connect(running.port)
    try:
        assert await send_quietly(sock, data)
        return head_of(await read_until_closed(sock))
    finally:
        close(sock)


async def opened(running: RunningBroker, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` and read the 101 (and ``welcome``, in the same segment on ``/v1/ws``)."""

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            return received

    return head_of(await asyncio.to_thread(exchange))


# --- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        ((), {}),
        (("Sec-WebSocket-Protocol: broker.v1.json",), {}),
        (("Sec-WebSocket-Protocol: x-other, broker.v1.json",), {}),
        ((), {"connection": "keep-alive, Upgrade", "upgrade": "WebSocket"}),
        (("X-Padded: value   ",), {"key": KEY + "  "}),
    ],
    ids=["plain", "subprotocol", "two-subprotocols", "firefox-connection", "whitespace"],
)
async def test_a_valid_handshake_is_answered_101_with_the_accept_key_and_welcome(
    extra: tuple[str, ...], options: dict[str, Any]
) -> None:
    async with serve_broker() as running:
        status, headers, rest = await opened(running, request("/v1/ws", *extra, **options))
    assert status == 101
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    assert headers["sec-websocket-accept"] == accept_key(KEY)
    assert "date" in headers
    assert "sec-websocket-extensions" not in headers
    if any("broker.v1.json" in line for line in extra):
        assert headers["sec-websocket-protocol"] == "broker.v1.json"
    else:
        assert "sec-websocket-protocol" not in headers
    assert b'"type":"welcome"' in rest


async def test_a_websockets_client_opens_and_talks() -> None:
    async with serve_broker() as running:
        async with ws_connect(running.url("/ws"), open_timeout=TIMEOUT) as ws:
            await ws.send("echo me")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Echo: echo me"


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate-on", "deflate-off"])
async def test_permessage_deflate_is_negotiated_only_when_configured(deflate: bool) -> None:
    settings = Settings(websocket=WebSocketSettings(per_message_deflate=deflate))
    async with serve_broker(settings) as running:
        async with ws_connect(running.url("/ws"), open_timeout=TIMEOUT) as ws:
            assert bool(ws.protocol.extensions) is deflate
            await ws.send("squeeze " * 100)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Echo: " + "squeeze " * 100


async def test_a_malformed_extension_offer_is_refused_400_when_deflate_is_on() -> None:
    settings = Settings(websocket=WebSocketSettings(per_message_deflate=True))
    async with serve_broker(settings) as running:
        status, _, body = await refusal(
            running, request("/ws", "Sec-WebSocket-Extensions: permessage-deflate; ==")
        )
    assert status == 400
    assert b"Sec-WebSocket-Extensions" in body


# --- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["8", "14", "1.3"])
async def test_an_unsupported_version_gets_426_naming_version_13(version: str) -> None:
    async with serve_broker() as running:
        status, headers, body = await refusal(running, request(version=version))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert b"Sec-WebSocket-Version" in body


@pytest.mark.parametrize(
    "data",
    [
        request(key="abc"),
        request(key="not base64 at all!!!!!!=="),
        request(key=base64.b64encode(b"x" * 17).decode()),
        request(key=KEY.rstrip("=")),
        request(key=None),
        request("/v1/ws", f"Sec-WebSocket-Key: {KEY}"),
        request(version=None),
        request("/v1/ws", "Sec-WebSocket-Version: 13"),
        request("/v1/ws", "Origin: http://127.0.0.1", "Origin: http://127.0.0.2"),
        request("/v1/ws", "Sec-WebSocket-Protocol: bad@subprotocol"),
        request(connection="Upgrade, n@t-a-token"),
    ],
    ids=[
        "short-key",
        "non-base64-key",
        "17-byte-key",
        "unpadded-key",
        "no-key",
        "two-keys",
        "no-version",
        "two-versions",
        "two-origins",
        "malformed-subprotocol",
        "malformed-connection",
    ],
)
async def test_a_malformed_handshake_gets_400_and_the_socket_is_closed(data: bytes) -> None:
    async with serve_broker() as running:
        status, headers, body = await refusal(running, data)
    assert status == 400
    assert headers["connection"] == "close"
    assert body.startswith(b"Failed to open a WebSocket connection")


async def test_a_handshake_with_another_method_gets_405() -> None:
    async with serve_broker() as running:
        status, headers, _ = await refusal(running, request(method="POST"))
    assert status == 405
    assert headers["allow"] == "GET"


async def test_two_upgrade_headers_get_426() -> None:
    async with serve_broker() as running:
        status, headers, _ = await refusal(running, request("/v1/ws", "Upgrade: websocket"))
    assert status == 426
    assert headers["upgrade"] == "websocket"


# --- the same scope either way -------------------------------------------------------------------


@asynccontextmanager
async def scope_recorder() -> AsyncIterator[tuple[RunningBroker, list[dict[str, Any]]]]:
    """A host app whose WebSocket route records its scope, accepts with the first subprotocol
    offered, and closes."""
    scopes: list[dict[str, Any]] = []
    app = FastAPI()

    @app.websocket("/record")
    async def record(websocket: WebSocket) -> None:
        scopes.append(dict(websocket.scope))
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol=offered[0] if offered else None)
        await websocket.close()

    async with serve_broker(app=app) as running:
        yield running, scopes


async def test_the_scope_is_the_same_whether_websockets_parses_the_request_or_not() -> None:
    extra = (
        "Sec-WebSocket-Protocol: one, two",
        "Sec-WebSocket-Protocol: three",
        "X-Padded: value \t",
        "X-Latin: caf\xe9",
    )
    target = "/record?a=1&b=%20x"
    async with scope_recorder() as (running, scopes):
        # As read by broker.handshake; then with ``Content-Length: 0``, which it leaves to
        # ``websockets`` (which accepts it).
        for data in (request(target, *extra), request(target, *extra, "Content-Length: 0")):
            status, headers, _ = await opened(running, data)
            assert status == 101
            assert headers["sec-websocket-protocol"] == "one"
    read, parsed = scopes
    parsed_headers = [h for h in parsed["headers"] if h[0] != b"content-length"]
    assert read["headers"] == parsed_headers
    assert (b"x-padded", b"value") in read["headers"]
    assert (b"x-latin", "caf\xe9".encode("latin-1")) in read["headers"]
    assert read["subprotocols"] == parsed["subprotocols"] == ["one", "two", "three"]
    for name in ("type", "asgi", "http_version", "scheme", "server", "root_path", "path"):
        assert read[name] == parsed[name], name
    assert read["raw_path"] == parsed["raw_path"] == b"/record"
    assert read["query_string"] == parsed["query_string"] == b"a=1&b=%20x"
    assert read["client"][0] == parsed["client"][0]
    assert set(read["extensions"]) == set(parsed["extensions"])


# --- what is left to websockets ------------------------------------------------------------------


def parsed(*extra: str, **options: Any) -> Opening | bytes | None:
    data = request("/v1/ws", *extra, **options).decode("latin-1")
    line, *header_lines = data.split("\r\n\r\n")[0].split("\r\n")
    method, target, _ = line.split(" ")
    headers = []
    for header in header_lines:
        name, _, value = header.partition(":")
        headers.append((name.lower().encode(), value.lstrip(" ").encode("latin-1")))
    return read_opening(method, target.encode(), headers)


def test_a_plain_request_is_read_and_the_accept_value_computed() -> None:
    opening = parsed("Sec-WebSocket-Protocol: a , b")
    assert isinstance(opening, Opening)
    assert opening.accept.decode() == accept_key(KEY)
    assert opening.subprotocols == ["a", "b"]
    assert opening.path == "/v1/ws"


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        (("Transfer-Encoding: chunked",), {}),
        (("Content-Length: 0",), {}),
        (("Sec-WebSocket-Protocol: a,,b",), {}),
        (("Upgrade: websocket",), {}),
        (("X-Big: " + "a" * 8200,), {}),
        (tuple(f"X-H{i}: v" for i in range(130)), {}),
        ((), {"method": "PUT"}),
        ((), {"key": "abc"}),
        ((), {"version": None}),
    ],
    ids=[
        "transfer-encoding",
        "content-length",
        "empty-list-element",
        "two-upgrades",
        "long-line",
        "many-headers",
        "method",
        "bad-key",
        "no-version",
    ],
)
def test_what_websockets_answers_is_left_to_it(
    extra: tuple[str, ...], options: dict[str, Any]
) -> None:
    assert parsed(*extra, **options) is None


def test_a_long_target_is_left_to_websockets() -> None:
    headers = [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
    assert read_opening("GET", b"/" + b"q" * 8200, headers) is None
    assert read_opening("GET", "/caf\xe9".encode("latin-1"), headers) is None


def test_random_keys_that_decode_to_16_bytes_are_read() -> None:
    for _ in range(200):
        key = base64.b64encode(os.urandom(16)).decode()
        opening = parsed(key=key)
        assert isinstance(opening, Opening)
        assert opening.accept.decode() == accept_key(key)


@pytest.mark.parametrize("deflate", [True, False])
def test_the_frame_protocol_has_the_attributes_of_websockets_own(deflate: bool) -> None:
    extensions = [ServerPerMessageDeflateFactory()] if deflate else []
    made = frame_protocol(extensions=extensions, max_size=1000, logger=logging.getLogger("t"))
    own = ServerProtocol(extensions=extensions, max_size=1000, logger=logging.getLogger("t"))
    assert set(vars(made)) == set(vars(own))
    for name, value in vars(own).items():
        if name not in ("id", "reader", "parser", "events", "writes"):
            assert getattr(made, name) == value, name
    assert made.state is State.CONNECTING
    # It reads frames from the start: a masked text frame is an event at once.
    made.receive_data(b"\x81\x82abcd" + bytes([ord("h") ^ ord("a"), ord("i") ^ ord("b")]))
    [event] = made.events_received()
    assert isinstance(event, Frame)
    assert event.data == b"hi"
