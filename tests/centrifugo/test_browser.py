"""A web page using Centrifugo's JavaScript SDK (its browser bundle, from the pinned npm package)
in headless Chromium, against ``/connection/websocket`` of a real broker."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from playwright.async_api import async_playwright

from broker.settings import NamespaceSettings, Settings
from tests.centrifugo.jsdriver import JS_DIR, sdk_or_fail
from tests.conftest import TIMEOUT, serve_broker

pytestmark = pytest.mark.anyio

BUNDLE = JS_DIR / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"

# Runs in the page: connect, subscribe with recovery enabled, publish, and report what arrived.
PAGE_SCRIPT = """
async (url) => {
  const client = new Centrifuge(url);
  const events = [];
  const sub = client.newSubscription('page:room');
  const received = new Promise((resolve) => sub.on('publication', (ctx) => {
    events.push({ data: ctx.data, offset: ctx.offset });
    resolve();
  }));
  sub.on('subscribed', (ctx) => events.push({ subscribed: ctx.recoverable }));
  client.connect();
  sub.subscribe();
  await sub.ready(5000);
  await sub.publish({ text: 'from the page' });
  await received;
  const presence = await sub.presence();
  client.disconnect();
  return { events, members: Object.keys(presence.clients).length };
}
"""


async def test_a_page_with_the_js_sdk() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("needs Debian's chromium (.ci/run installs it)")
    await sdk_or_fail()
    assert BUNDLE.is_file(), f"the SDK's browser bundle is missing: {BUNDLE}"
    settings = Settings(
        default_namespace=NamespaceSettings(history_size=10, presence=True),
    )
    async with serve_broker(settings) as running, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(TIMEOUT * 1000)
            # The page has the broker's own origin, as a page it served would.
            await page.goto(running.http("/healthz"))
            await page.set_content("<!doctype html><title>centrifuge</title>")
            await page.add_script_tag(path=str(BUNDLE))
            result: dict[str, Any] = await page.evaluate(
                PAGE_SCRIPT, running.url("/connection/websocket")
            )
        finally:
            await browser.close()
    assert result["events"] == [
        {"subscribed": True},
        {"data": {"text": "from the page"}, "offset": 1},
    ]
    assert result["members"] == 1
