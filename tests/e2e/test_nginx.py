"""The documented nginx configuration (config/nginx-broker.conf), run for real in front of a
real ``broker serve``: a client connects, subscribes and receives through it, and a drain
(SIGTERM to the broker) reaches it as ``disconnect``.

nginx runs as a private instance: its own prefix and config in a temporary directory, free
ports, ``daemon off``, stopped at the end. The system's nginx service is never touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import Disconnect, Publication, Subscribe, Subscribed
from tests.broker.test_cli import ROOT, broker_process, free_port, wait_healthy
from tests.conftest import TIMEOUT
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

SITE_CONFIG = ROOT / "config" / "nginx-broker.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does)")
    return found


def private_config(prefix: Path, nginx_port: int, broker_port: int) -> Path:
    """A whole nginx.conf for a private instance, including the documented site config with its
    ports replaced."""
    site = SITE_CONFIG.read_text()
    assert "listen 80;" in site and "server 127.0.0.1:8000;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{broker_port};")
    (prefix / "site.conf").write_text(site)
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / name).mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp dirs
    config = prefix / "nginx.conf"
    config.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""
    )
    return config


@asynccontextmanager
async def nginx(prefix: Path, config: Path, port: int) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        nginx_binary(),
        "-p",
        str(prefix),
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                if process.returncode is not None:
                    assert process.stderr is not None
                    error = (await process.stderr.read()).decode()
                    raise AssertionError(f"nginx exited: {error}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGQUIT)  # graceful stop of this instance only
            try:
                async with asyncio.timeout(TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_through_nginx_a_client_subscribes_receives_and_sees_the_drain(
    tmp_path: Path,
) -> None:
    broker_port, nginx_port = free_port(), free_port()
    config = private_config(tmp_path, nginx_port, broker_port)
    async with broker_process(
        "serve",
        "--port",
        str(broker_port),
        BROKER_SERVER__SHUTDOWN_GRACE="3",
        BROKER_LOG__LEVEL="warning",
    ) as broker:
        await wait_healthy(broker_port)
        async with nginx(tmp_path, config, nginx_port):
            front = f"127.0.0.1:{nginx_port}"
            async with open_client(f"ws://{front}/v1/ws") as client:
                await client.send(Subscribe(id=1, channel="news"))
                await client.expect(Subscribed)
                async with httpx.AsyncClient(timeout=TIMEOUT) as http:
                    # A back end publishes through nginx too (from an allowed address).
                    response = await http.post(
                        f"http://{front}/v1/publish", json={"channel": "news", "data": "via nginx"}
                    )
                    assert response.status_code == 200, response.text
                message = await client.expect(Publication)
                assert client.data(message.data) == "via nginx"
                broker.send_signal(signal.SIGTERM)
                notice = await client.expect(Disconnect)
                assert (notice.code, notice.reconnect) == (1001, True)
                with pytest.raises(ConnectionClosed) as closed:
                    await client.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            async with asyncio.timeout(TIMEOUT):
                assert await broker.wait() == 0
