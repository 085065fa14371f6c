"""Pages in a real Chromium using the broker's JavaScript client from ``/v1/client.js``."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Page

from tests.browser.conftest import ROOT, BrokerProcess
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

HELLO = (ROOT / "examples" / "web" / "hello.html").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")

WAIT_MS = TIMEOUT * 1000

#: A page on the broker's origin that loads the client and lets the test drive it.
TEST_PAGE = """<!doctype html><meta charset="utf-8"><title>test page</title>
<script type="module">
  import { connect } from "/v1/client.js";
  window.seen = [];
  window.resyncs = [];
  window.connections = [];
  window.start = async (encoding, channel, backoff = { base: 50, cap: 300 }) => {
    const client = await connect("/v1/ws", { encoding, backoff });
    window.client = client;
    client.on("connected", (event) => connections.push(event.connection));
    client.on("resync", (resync) => resyncs.push([resync.epoch, resync.offset]));
    if (channel) await client.subscribe(channel, (message) => seen.push(message));
    return client.clientId;
  };
  window.ready = true;
</script>
"""


async def open_page(browser: Browser, broker: BrokerProcess, html: str = TEST_PAGE) -> Page:
    """A page on the broker's origin holding ``html``: the browser loads a page of the broker
    (``/healthz``) and the test replaces its content, so ``/v1/client.js`` and ``/v1/ws`` are
    same-origin, as for a page the broker's host would serve. (A page the test answered through
    request interception would not do: Chromium counts it as public and blocks its WebSocket to
    127.0.0.1, net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS.)"""
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{broker.base}/healthz")
    await page.set_content(html)
    return page


async def test_the_readme_page_connects_subscribes_and_publishes(
    browser: Browser, brokers: list[BrokerProcess]
) -> None:
    broker = await BrokerProcess().start()
    brokers.append(broker)
    assert HELLO.strip() in README, "the README shows the page as it is"
    page = await open_page(browser, broker, HELLO)
    item = page.locator("#log li")
    await item.wait_for()
    assert await item.text_content() == '1: {"text":"hello from a page"}'


async def test_one_page_publishes_and_another_sees_it_in_json_and_msgpack(
    browser: Browser, brokers: list[BrokerProcess]
) -> None:
    broker = await BrokerProcess().start()
    brokers.append(broker)
    reader = await open_page(browser, broker)
    writer = await open_page(browser, broker)
    await reader.wait_for_function("window.ready")
    await writer.wait_for_function("window.ready")
    await reader.evaluate("() => start('json', 'chat:pages')")
    writer_id = await writer.evaluate("() => start('msgpack', null)")
    reply = await writer.evaluate(
        "() => client.publish('chat:pages', {text: 'hi', list: [1, 2.5, null]})"
    )
    assert reply["offset"] == 1
    await reader.wait_for_function("window.seen.length === 1")
    seen = await reader.evaluate("window.seen")
    assert seen == [
        {
            "channel": "chat:pages",
            "offset": 1,
            "epoch": reply["epoch"],
            "data": {"text": "hi", "list": [1, 2.5, None]},
            "publisher": writer_id,
        }
    ]
    # MessagePack came from the broker's own /v1/msgpack.js, loaded only by the writer.
    assert await writer.evaluate("window.client.encoding") == "msgpack"


async def test_a_page_survives_a_broker_restart_and_recovers_what_was_published_meanwhile(
    browser: Browser, brokers: list[BrokerProcess], redis_server: RedisServer
) -> None:
    env = {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": redis_server.url,
        "BROKER_NAMESPACES__FEED__HISTORY_SIZE": "100",
        "BROKER_LIMITS__RETRY_AFTER": "0.5",
    }
    serving = await BrokerProcess(**env).start()
    other = await BrokerProcess(**env).start()
    brokers += [serving, other]
    page = await open_page(browser, serving)
    await page.wait_for_function("window.ready")
    await page.evaluate("() => start('json', 'feed:news')")
    for n in range(1, 4):
        await other.publish("feed:news", n)
    await page.wait_for_function("window.seen.length === 3")

    await serving.stop()  # the page loses its broker
    for n in range(4, 9):
        await other.publish("feed:news", n)  # published meanwhile, through another process
    await serving.start()  # same port
    await page.wait_for_function("window.connections.includes(2)")
    await other.publish("feed:news", 9)

    await page.wait_for_function("window.seen.length >= 9")
    seen = await page.evaluate("window.seen.map((m) => [m.offset, m.data])")
    assert seen == [[n, n] for n in range(1, 10)]  # every one, once, in order
    assert await page.evaluate("window.resyncs") == []


async def test_a_restart_in_memory_mode_tells_the_page_to_resync(
    browser: Browser, brokers: list[BrokerProcess]
) -> None:
    broker = await BrokerProcess(BROKER_LIMITS__RETRY_AFTER="0.5").start()
    brokers.append(broker)
    page = await open_page(browser, broker)
    await page.wait_for_function("window.ready")
    await page.evaluate("() => start('json', 'news')")
    first = await broker.publish("news", "before")
    await page.wait_for_function("window.seen.length === 1")
    await broker.stop()
    await broker.start()
    await page.wait_for_function("window.resyncs.length === 1")
    epoch, _ = await page.evaluate("window.resyncs[0]")
    assert epoch != first["epoch"]
    await broker.publish("news", "after")
    await page.wait_for_function("window.seen.length === 2")
    assert await page.evaluate("window.seen.map((m) => m.data)") == ["before", "after"]


async def test_coming_back_online_reconnects_at_once_instead_of_after_the_backoff(
    browser: Browser, brokers: list[BrokerProcess]
) -> None:
    broker = await BrokerProcess(BROKER_LIMITS__RETRY_AFTER="0").start()
    brokers.append(broker)
    page = await open_page(browser, broker)
    await page.wait_for_function("window.ready")
    # Every reconnection attempt waits a minute at least: only the event can bring it back soon.
    await page.evaluate("() => start('json', 'news', {base: 60000, cap: 60000, random: () => 1})")
    await broker.stop()
    await broker.start()
    await page.evaluate("() => window.dispatchEvent(new Event('online'))")
    await page.wait_for_function("window.connections.includes(2)", timeout=5000)
    assert await page.evaluate("window.client.connected")
