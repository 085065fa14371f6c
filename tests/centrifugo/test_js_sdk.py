"""Centrifugo's own JavaScript SDK (npm ``centrifuge``, pinned in tests/centrifugo/js, run by
Node.js, unchanged) against ``/connection/websocket`` of a real broker."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from broker.runtime import Broker
from broker.settings import NamespaceSettings, QueueSettings, Settings, WebSocketSettings
from protocol import JSON, CloseCode
from tests.centrifugo.jsdriver import js_client
from tests.conftest import serve_broker, wait_until

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"
FAST_RECONNECT = {"minReconnectDelay": 300, "maxReconnectDelay": 1000}


def settings(**queue: int) -> Settings:
    return Settings(
        default_namespace=NamespaceSettings(history_size=1000, presence=True, join_leave=True),
        queue=QueueSettings(**queue),  # type: ignore[arg-type]
        websocket=WebSocketSettings(transport_buffer_bytes=16 * 1024),
    )


async def test_publish_receive_presence_history() -> None:
    async with (
        serve_broker(settings()) as running,
        js_client(running.url(PATH)) as alice,
        js_client(running.url(PATH)) as bob,
    ):
        await alice.call("subscribe", channel="chat:room")
        subscribed = await alice.event("subscribed")
        assert subscribed["recoverable"] and subscribed["positioned"]
        await bob.call("subscribe", channel="chat:room")
        joined = await alice.event("join")
        assert joined["info"]["client"]
        await bob.call("publish", channel="chat:room", data={"text": "hi"})
        publication = await alice.event("publication")
        assert publication["data"] == {"text": "hi"} and publication["offset"] == 1

        presence = await alice.call("presence", channel="chat:room")
        assert len(presence["clients"]) == 2
        stats = await alice.call("presenceStats", channel="chat:room")
        assert (stats["numClients"], stats["numUsers"]) == (2, 1)
        history = await alice.call("history", channel="chat:room", options={"limit": 10})
        assert [p["data"] for p in history["publications"]] == [{"text": "hi"}]
        assert history["epoch"] == subscribed["streamPosition"]["epoch"]


async def test_recovery_after_the_broker_drops_the_connection() -> None:
    async with (
        serve_broker(settings()) as running,
        js_client(running.url(PATH), **FAST_RECONNECT) as reader,
        js_client(running.url(PATH)) as writer,
    ):
        await reader.call("subscribe", channel="feed")
        first = await reader.event("subscribed")
        await writer.call("publish", channel="feed", data=1)
        assert (await reader.event("publication"))["offset"] == 1
        connection = next(c for c in running.broker.connections.values() if c.endpoint == PATH)
        connection.request_close(CloseCode.GOING_AWAY, reconnect=True)
        await wait_until(lambda: connection.id not in running.broker.connections)
        for n in (2, 3):
            await writer.call("publish", channel="feed", data=n)
        again = await reader.event("subscribed")
        assert again["wasRecovering"] and again["recovered"]
        assert again["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]
        recovered = [await reader.event("publication") for _ in range(2)]
        assert [(p["offset"], p["data"]) for p in recovered] == [(2, 2), (3, 3)]


async def test_a_stalled_client_is_dropped_and_recovers_everything(tmp_path: Path) -> None:
    count = 300
    pad = "x" * 20_000

    async def publish(broker: Broker, n: int) -> None:
        data = msgspec.json.encode({"n": n, "pad": pad})
        await broker.publish("firehose", msgspec.Raw(data), JSON, None)

    async with (
        serve_broker(settings(max_messages=50)) as running,
        js_client(running.url(PATH), **FAST_RECONNECT) as slow,
    ):
        await slow.call("subscribe", channel="firehose")
        await slow.event("subscribed")
        # Node stays in the first publication's handler, reading nothing, until told.
        release = tmp_path / "release"
        await slow.call("block", untilFile=str(release))
        await publish(running.broker, 1)
        assert (await slow.event("publication"))["offset"] == 1
        for n in range(2, count + 1):
            await publish(running.broker, n)
        await wait_until(lambda: running.broker.close_codes.get(CloseCode.SLOW_CONSUMER, 0) > 0)
        release.touch()
        again = await slow.event("subscribed")
        assert again["wasRecovering"] and again["recovered"]
        offsets = [(await slow.event("publication"))["offset"] for _ in range(count - 1)]
        assert offsets == list(range(2, count + 1))
