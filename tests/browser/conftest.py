"""Real-browser fixtures: Debian's chromium driven by Playwright, and brokers as processes.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it when it
is missing), launched through ``executable_path``: Playwright never downloads a browser here.
Brokers run as ``python -m broker.cli serve`` processes on free ports, so that a test can stop
one and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from benchmarks.server import free_port as free_port
from tests.conftest import TIMEOUT

CHROMIUM = os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
HAVE_CHROMIUM = Path(CHROMIUM).is_file()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        # CI must fail, not skip, when the browser tests cannot run (.ci/run installs it).
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


class BrokerProcess:
    """``broker serve`` in a process of its own; ``env`` holds ``BROKER_*`` overrides."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> BrokerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update({"BROKER_LOG__LEVEL": "warning", "BROKER_LOG__FORMAT": "json"}, **self.env)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with httpx.AsyncClient() as http, asyncio.timeout(TIMEOUT):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the broker exited with {self.process.returncode}")
                try:
                    if (await http.get(f"{self.base}/readyz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM (a drain) and wait for the exit."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        async with asyncio.timeout(TIMEOUT * 2):
            await process.wait()

    async def kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def publish(self, channel: str, data: object) -> dict[str, object]:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{self.base}/v1/publish", json={"channel": channel, "data": data}
            )
            response.raise_for_status()
            reply: dict[str, object] = response.json()
            return reply


@pytest.fixture
async def brokers() -> AsyncIterator[list[BrokerProcess]]:
    """Brokers a test starts; every one is killed at the end."""
    started: list[BrokerProcess] = []
    try:
        yield started
    finally:
        for broker in started:
            await broker.kill()
