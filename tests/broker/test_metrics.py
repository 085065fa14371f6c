"""``/metrics``: scrape, act, scrape again; each figure moves as a user of it would expect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broker.settings import (
    BackplaneKind,
    BackplaneSettings,
    LimitSettings,
    MonitorSettings,
    OverflowPolicy,
    QueueSettings,
    Settings,
    WebSocketSettings,
)
from protocol import (
    Disconnect,
    Encoding,
    Error,
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
)
from tests.broker.test_connection import publish_many, subscribe_raw
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.rawclient import masked_frame, open_raw, read_frames
from tests.redis_server import RedisServer
from tests.scrape import Scrape, scrape
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


async def http_publish(running: RunningBroker, channel: str, data: object) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            running.http("/v1/publish"), json={"channel": channel, "data": data}
        )
    response.raise_for_status()


async def scrape_until(running: RunningBroker, condition: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until ``condition(scrape)`` holds (figures of a closing connection land when its
    cleanup has run)."""
    result: Scrape | None = None

    async def check() -> bool:
        nonlocal result
        result = await scrape(running.http(""))
        return bool(condition(result))

    async with asyncio.timeout(TIMEOUT):
        while not await check():  # noqa: ASYNC110 - figures change without an event to await
            await asyncio.sleep(0.05)
    assert result is not None
    return result


async def test_publications_move_the_delivery_latency_of_each_encoding_and_http_durations(
    running: RunningBroker,
) -> None:
    before = await scrape(running.http(""))
    assert before.value("broker_delivery_latency_seconds_count") == 0
    async with (
        open_client(running.url(), Encoding.JSON) as json_client,
        open_client(running.url(), Encoding.MSGPACK) as msgpack_client,
    ):
        for client in (json_client, msgpack_client):
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
        for i in range(5):
            await http_publish(running, "news", {"n": i})
        for client in (json_client, msgpack_client):
            for _ in range(5):
                await client.expect(Publication)
    after = await scrape(running.http(""))
    for encoding in ("json", "msgpack"):
        writes = after.value("broker_delivery_latency_seconds_count", encoding=encoding)
        assert 1 <= writes <= 5, encoding
        assert after.value("broker_delivery_latency_seconds_sum", encoding=encoding) > 0
        # Loopback and an idle hub: well under a second, so in the finite buckets.
        assert (
            after.value("broker_delivery_latency_seconds_bucket", encoding=encoding, le="1.0")
            == writes
        )
    assert after.value("broker_http_request_duration_seconds_count", route="/v1/publish") == 5
    assert after.value("broker_http_request_duration_seconds_count", route="/metrics") >= 1
    assert after.value("broker_publications_total") == 5


async def test_the_delivery_latency_histogram_can_be_turned_off() -> None:
    settings = Settings(monitor=MonitorSettings(delivery_latency=False))
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        await client.send(Subscribe(id=1, channel="news"))
        await client.expect(Subscribed)
        for i in range(3):
            await http_publish(running, "news", {"n": i})
        for _ in range(3):
            await client.expect(Publication)
        after = await scrape(running.http(""))
    assert after.value("broker_publications_total") == 3
    assert after.label_values("broker_delivery_latency_seconds_count", "encoding") == set()
    # The other histograms stay.
    assert after.value("broker_http_request_duration_seconds_count", route="/v1/publish") == 3


async def test_one_write_in_delivery_latency_every_is_measured() -> None:
    settings = Settings(monitor=MonitorSettings(delivery_latency_every=4))
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        await client.send(Subscribe(id=1, channel="news"))
        await client.expect(Subscribed)
        for i in range(8):  # one at a time: eight writes of one publication each
            await http_publish(running, "news", {"n": i})
            await client.expect(Publication)
        after = await scrape(running.http(""))
    # The first write with a publication, then every fourth (the reply's write is not one).
    assert after.value("broker_delivery_latency_seconds_count", encoding="json") == 2


async def test_a_connection_reset_counts_as_1006_and_a_close_frame_without_code_as_1005(
    running: RunningBroker,
) -> None:
    reset = await open_raw(running.port, "/v1/ws")
    reset.reset()
    after = await scrape_until(
        running, lambda s: s.value("broker_connections_closed_total", code="1006") == 1
    )
    assert after.value("broker_connections_closed_total", code="1005") == 0
    # A close frame with no status code is what 1005 is for (RFC 6455 §7.1.5).
    polite = await open_raw(running.port, "/v1/ws")
    await polite.send(masked_frame(b"", opcode=0x8))
    after = await scrape_until(
        running, lambda s: s.value("broker_connections_closed_total", code="1005") == 1
    )
    assert after.value("broker_connections_closed_total", code="1006") == 1
    polite.sock.close()


async def test_refusals_count_by_reason() -> None:
    settings = Settings(
        limits=LimitSettings(max_connections=1, publish_rate=0.001, publish_burst=1)
    )
    async with serve_broker(settings) as running:
        before = await scrape(running.http(""))
        reasons = before.label_values("broker_drops_total", "reason")
        assert reasons == {
            "outbox_overflow",
            "write_timeout",
            "rate_limit",
            "connection_limit",
            "heartbeat",
            "protocol_error",
            "auth_failure",
        }
        assert before.value("broker_drops_total") == 0
        async with open_client(running.url()) as client:
            await client.send(Publish(id=1, channel="news", data=msgspec.Raw(b"1")))
            await client.expect(Published)
            await client.send(Publish(id=2, channel="news", data=msgspec.Raw(b"2")))
            assert (await client.expect(Error)).code == "rate_limited"
            await client.send_json({"type": "nonsense", "id": 3})
            assert (await client.expect(Error)).code == "bad_request"
            async with connect(running.url(), open_timeout=TIMEOUT) as refused:
                with pytest.raises(ConnectionClosed):
                    while True:
                        await refused.recv()
            after = await scrape(running.http(""))
        assert after.value("broker_drops_total", reason="rate_limit") == 1
        assert after.value("broker_drops_total", reason="protocol_error") == 1
        assert after.value("broker_drops_total", reason="connection_limit") == 1
        assert after.value("broker_drops_total", reason="heartbeat") == 0


async def test_a_silent_client_counts_as_a_heartbeat_drop() -> None:
    settings = Settings(websocket=WebSocketSettings(heartbeat=0.3, heartbeat_grace=0.0))
    async with serve_broker(settings) as running:
        async with open_client(running.url()) as client:
            notice = await client.expect(Disconnect)
            assert notice.code == 4009
        after = await scrape_until(
            running, lambda s: s.value("broker_drops_total", reason="heartbeat") == 1
        )
        assert after.value("broker_connections_closed_total", code="4009") == 1


async def test_process_metrics_and_the_event_loop_lag_are_exported(running: RunningBroker) -> None:
    after = await scrape_until(
        running, lambda s: s.value("broker_event_loop_lag_seconds_count") >= 2
    )
    assert after.value("process_open_fds") > 0
    assert after.value("process_resident_memory_bytes") > 0
    assert after.value("process_cpu_seconds_total") > 0
    assert after.has("python_info")
    assert after.value("broker_backplane_up", server="memory") == 1


async def test_redis_backplane_figures_move_with_publications_and_a_reconnect(
    redis_server: RedisServer,
) -> None:
    settings = Settings(
        backplane=BackplaneSettings(
            kind=BackplaneKind.REDIS, redis_url=redis_server.url, health_interval=0.2
        )
    )
    async with serve_broker(settings) as running:
        await wait_until(lambda: running.broker.ready)
        server = redis_server.url
        before = await scrape(running.http(""))
        assert before.value("broker_backplane_up", server=server) == 1
        assert before.value("broker_backplane_reconnects_total", server=server) == 0
        async with open_client(running.url()) as client:
            await client.send(Subscribe(id=1, channel="news"))
            await client.expect(Subscribed)
            for i in range(3):
                await http_publish(running, "news", i)
            for _ in range(3):
                await client.expect(Publication)
        after = await scrape(running.http(""))
        # The first round trip finds the script not loaded yet and is sent again after a load.
        assert 3 <= after.value("broker_backplane_pipeline_publishes_total", server=server) <= 4
        assert 1 <= after.value("broker_backplane_pipeline_round_trips_total", server=server) <= 4
        assert after.value("broker_backplane_publications_received_total", server=server) == 3
        assert (
            after.value("broker_backplane_round_trip_seconds_count", server=server, op="publish")
            >= 1
        )
        assert after.value("broker_backplane_pipeline_queued", server=server) == 0
        await redis_server.stop()
        await scrape_until(running, lambda s: s.value("broker_backplane_up", server=server) == 0)
        await redis_server.start()
        after = await scrape_until(
            running, lambda s: s.value("broker_backplane_up", server=server) == 1
        )
        assert after.value("broker_backplane_reconnects_total", server=server) == 1


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (Settings(queue=QueueSettings(max_messages=100, max_bytes=256 * 1024)), "outbox_overflow"),
        (
            Settings(
                queue=QueueSettings(max_messages=100_000, max_bytes=64 * 1024 * 1024),
                websocket=WebSocketSettings(write_timeout=0.5),
            ),
            "write_timeout",
        ),
    ],
)
async def test_a_stalled_subscriber_counts_as_a_drop_of_its_cause(
    settings: Settings, reason: str
) -> None:
    async with serve_broker(settings) as running:
        stalled = await subscribe_raw(running, "busy")
        try:
            async with open_client(running.url()) as pub:
                await wait_until(lambda: running.broker.hub.subscriber_count("busy") == 1)
                await publish_many(pub, "busy", 4000, [])
                after = await scrape_until(
                    running, lambda s: s.value("broker_drops_total", reason=reason) == 1
                )
        finally:
            stalled.reset()
    assert after.value("broker_drops_total") == 1
    assert after.value("broker_slow_consumers_total") == 1
    assert after.value("broker_connections_closed_total", code="4008") == 1


async def test_gap_messages_of_drop_oldest_are_counted_as_sent() -> None:
    settings = Settings(
        queue=QueueSettings(
            max_messages=100, max_bytes=256 * 1024, overflow=OverflowPolicy.DROP_OLDEST
        ),
    )
    async with serve_broker(settings) as running:
        stalled = await subscribe_raw(running, "busy")
        try:
            async with open_client(running.url()) as pub:
                await wait_until(lambda: running.broker.hub.subscriber_count("busy") == 1)
                # 8 MB: more than the kernel buffers and the outbox hold, so the oldest are
                # dropped; then the client reads again and gets a gap where they were.
                await publish_many(pub, "busy", 4000, [])
                frames = await read_frames(stalled, idle=1.0)
                gaps = sum(payload.count(b'"type":"gap"') for _, payload in frames)
                assert gaps >= 1
                after = await scrape(running.http(""))
        finally:
            stalled.reset()
    assert after.value("broker_gap_messages_total") == gaps
    assert after.value("broker_drops_total") == 0
