"""``broker status``, run as a real process against a real broker."""

from __future__ import annotations

import asyncio
import re

import pytest

from protocol import Publication, Subscribe, Subscribed
from tests.broker.test_cli import broker_process, free_port
from tests.broker.test_metrics import http_publish
from tests.conftest import TIMEOUT, RunningBroker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


async def status(*args: str) -> tuple[int | None, str, str]:
    async with broker_process("status", *args) as process:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def figure(screen: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}\s+(\S+)", screen, re.MULTILINE)
    assert match is not None, f"{label!r} not in:\n{screen}"
    return match.group(1)


async def test_status_once_prints_the_figures_of_a_running_broker(running: RunningBroker) -> None:
    async with open_client(running.url()) as one, open_client(running.url()) as two:
        for client in (one, two):
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
        for i in range(3):
            await http_publish(running, "news", i)
        for client in (one, two):
            for _ in range(3):
                await client.expect(Publication)
        code, screen, err = await status("--url", running.http(""), "--once")
    assert (code, err) == (0, "")
    assert screen.startswith(f"broker at {running.http('')}  (1 process)")
    assert figure(screen, "connections") == "2"
    assert figure(screen, "subscriptions") == "2"
    assert figure(screen, "publications") == "3"
    assert figure(screen, "deliveries") == "6"
    assert figure(screen, "connection_limit") == "0"
    assert "backplane memory: up" in screen
    assert re.search(r"delivery json\s+\d+\.\d ms", screen), screen
    assert re.search(r"RSS \d+\.\d MiB", screen), screen


async def test_status_says_when_the_broker_cannot_be_reached() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, screen, err = await status("--url", url, "--once")
    assert code == 1
    assert screen == ""
    assert err.startswith(f"broker: cannot read {url}/metrics: ")
    assert "Traceback" not in err
