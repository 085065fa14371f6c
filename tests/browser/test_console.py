"""The web console in a real Chromium: it connects, subscribes, publishes, reads history and
presence, shows join and resync, and its live figures move as traffic flows."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from broker.client import connect
from tests.browser.conftest import ROOT, BrokerProcess
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.anyio

WAIT_MS = TIMEOUT * 1000
expect.set_options(timeout=WAIT_MS)
# The console's Content-Security-Policy forbids eval, so Playwright's wait_for_function cannot
# run in it: the waits are on locators, and numbers are matched by pattern.
AT_LEAST_6 = re.compile(r"^([6-9]|[1-9]\d+)(\.\d)?$")
AT_LEAST_11 = re.compile(r"^(1[1-9]|[2-9]\d|[1-9]\d{2,})(\.\d)?$")
AT_LEAST_8 = re.compile(r"^([89]|[1-9]\d+)$")
#: Set to a path (docs/console.png) to keep the screenshot the test takes.
SCREENSHOT_ENV = "BROKER_CONSOLE_SCREENSHOT"


async def publish_steadily(broker: BrokerProcess, channel: str, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        await broker.publish(channel, {"tick": n})
        await asyncio.sleep(0.05)


async def test_the_console_works_and_its_figures_follow_the_traffic(
    browser: Browser, brokers: list[BrokerProcess], tmp_path: Path
) -> None:
    broker = await BrokerProcess(
        BROKER_NAMESPACES__CHAT__HISTORY_SIZE="100",
        BROKER_NAMESPACES__CHAT__PRESENCE="true",
        BROKER_NAMESPACES__CHAT__JOIN_LEAVE="true",
        BROKER_LIMITS__RETRY_AFTER="0.5",
    ).start()
    brokers.append(broker)
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Console errors too: a file that fails to load, a Content-Security-Policy violation.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{broker.base}/console")

    # Figures arrive before anyone connects.
    await expect(page.locator("#fig-connections")).to_have_text("0")
    await expect(page.locator("#url")).to_have_value(f"ws://127.0.0.1:{broker.port}/v1/ws")

    await page.click("#connect")
    await expect(page.locator("#status-text")).to_have_text("connected")
    for channel in ("chat:lobby", "chat:news"):
        await page.fill("#channel", channel)
        await page.click("#subscribe")
        await expect(page.locator(f'#subscriptions li[data-channel="{channel}"]')).to_be_visible()

    # Publish JSON from the page: the reply's offset, and the message in the log.
    await page.click('#subscriptions li[data-channel="chat:lobby"]')
    await page.fill("#publish-data", '{"text": "hello from the console"}')
    await page.click("#publish")
    await expect(page.locator("#publish-result")).to_contain_text("published at offset 1")
    await expect(page.locator("#log li.message").first).to_contain_text(
        'chat:lobby @1 {"text":"hello from the console"}'
    )

    # Another client joins: join, presence.
    async with connect(f"ws://127.0.0.1:{broker.port}/v1/ws") as other:
        await other.subscribe("chat:lobby")
        await expect(page.locator("#log li.join").first).to_contain_text(str(other.client_id))
        await page.click("#presence")
        await expect(page.locator("#query-result")).to_contain_text(str(other.client_id))

        await page.click("#history")
        await expect(page.locator("#query-result")).to_contain_text("history of chat:lobby")
        await expect(page.locator("#query-result")).to_contain_text(
            '@1 {"text":"hello from the console"}'
        )

        # Traffic (to both subscribers of chat:lobby): the figures follow it.
        await expect(page.locator("#fig-connections")).to_have_text("2")
        stop = asyncio.Event()
        traffic = asyncio.create_task(publish_steadily(broker, "chat:lobby", stop))
        try:
            await expect(page.locator("#fig-pubs")).to_have_text(AT_LEAST_6)
            await expect(page.locator("#fig-deliveries")).to_have_text(AT_LEAST_11)
            # A few seconds of the chart, for the screenshot.
            await expect(page.locator("#spark")).to_have_attribute("data-points", AT_LEAST_8)
            shot = tmp_path / "console.png"
            await page.screenshot(path=shot, full_page=True)
            assert shot.stat().st_size > 10_000
            keep = os.environ.get(SCREENSHOT_ENV)
            if keep:
                (ROOT / keep).write_bytes(shot.read_bytes())
        finally:
            stop.set()
            await traffic
        await expect(page.locator("#fig-pubs")).to_have_text("0")

    # At a phone's width nothing is wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390

    assert errors == []

    # A restart in memory mode loses the channels' streams: the console says so.
    await broker.stop()
    await broker.start()
    for channel in ("chat:lobby", "chat:news"):
        await expect(page.locator("#log li.resync", has_text=channel)).to_have_count(1)
    await expect(page.locator("#status-text")).to_have_text("connected")
    # Chromium logs each refused reconnection attempt; nothing else may go wrong.
    assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e] == []
