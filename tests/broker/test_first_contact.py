"""What a newcomer meets first, answered plainly: a wrong path or subprotocol says what was
wrong, a channel name error says the rule in words, ``/docs`` is there, and a port in use is
one line and exit code 2."""

from __future__ import annotations

import asyncio
import socket
import sys

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from broker.settings import ServerSettings, Settings
from protocol import Error, Subscribe
from tests.broker.test_cli import ROOT, broker_env
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


async def refusal(url: str, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=TIMEOUT, **kwargs):  # type: ignore[arg-type]
            pass
    response = refused.value.response
    return response.status_code, response.body.decode() if response.body else ""


async def test_a_websocket_to_an_unknown_path_gets_404_naming_the_endpoints(
    running: RunningBroker,
) -> None:
    status, body = await refusal(running.url("/v1/websocket"))
    assert status == 404
    assert "/v1/websocket" in body and "/v1/ws" in body and "/ws/chat" in body
    assert running.broker.connections == {}


async def test_only_unknown_subprotocols_get_400_naming_the_known_ones(
    running: RunningBroker,
) -> None:
    status, body = await refusal(
        running.url(), subprotocols=[Subprotocol("broker.v2.json"), Subprotocol("chat")]
    )
    assert status == 400
    assert "broker.v2.json" in body and "broker.v1.json" in body and "broker.v1.msgpack" in body


async def test_a_refused_origin_gets_403_saying_so() -> None:
    settings = Settings(server=ServerSettings(allowed_origins=["https://app.example"]))
    async with serve_broker(settings) as running:
        status, body = await refusal(running.url(), origin="https://evil.example")
    assert status == 403
    assert "https://evil.example" in body and "allowed_origins" in body


async def test_a_bad_channel_name_is_explained_in_words_not_as_a_regex(
    running: RunningBroker,
) -> None:
    async with open_client(running.url()) as client:
        await client.send(Subscribe(id=1, channel="no spaces"))
        error = await client.expect(Error)
    assert error.code == "bad_request"
    assert "regex" not in error.message and "\\" not in error.message
    assert "1 to 255 characters" in error.message and "$.channel" in error.message
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            running.http("/v1/publish"), json={"channel": "no spaces", "data": 1}
        )
    assert response.status_code == 400
    assert "regex" not in response.text and "1 to 255 characters" in response.text


async def test_docs_serves_the_openapi_document(running: RunningBroker) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        page = await http.get(running.http("/docs"))
        spec = await http.get(running.http("/openapi.json"))
    assert page.status_code == 200 and "openapi.json" in page.text
    assert "/v1/publish" in spec.json()["paths"]


async def test_a_port_in_use_stops_start_up_with_one_line_and_exit_code_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--port",
            str(port),
            env=broker_env(),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    assert process.returncode == 2
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"broker: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[0]
    assert b"startup complete" not in out.lower()
