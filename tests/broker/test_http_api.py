"""The HTTP API (docs/protocol.md §2) against a real server, real WebSocket clients watching."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broker.settings import NamespaceSettings, Settings, WebSocketSettings
from protocol import (
    Disconnect,
    Encoding,
    Ping,
    Pong,
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

ENCODINGS = pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])
LEAK = re.compile(r'Traceback|File "|\.py\b|site-packages')


@pytest.fixture
async def http(running: RunningBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as client:
        yield client


async def subscribe(client: ProtocolClient, channel: str) -> Subscribed:
    await client.send(Subscribe(id=1, channel=channel))
    return await client.expect(Subscribed)


async def assert_nothing_more(client: ProtocolClient) -> None:
    await client.send(Ping(id=99))
    assert await client.recv() == Pong(id=99)


def metric_values(text: str) -> dict[str, float]:
    """Every unlabelled sample of a Prometheus text exposition, by sample name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


# --- POST /v1/publish ---------------------------------------------------------------------------


@ENCODINGS
async def test_http_publish_reaches_a_websocket_subscriber_from_nobody(
    running: RunningBroker, http: httpx.AsyncClient, encoding: Encoding
) -> None:
    data = {"price": 101.25, "tags": ["a", "b"], "note": "ünïcode"}
    async with open_client(running.url(), encoding) as sub:
        subscribed = await subscribe(sub, "prices")
        response = await http.post("/v1/publish", json={"channel": "prices", "data": data})
        assert response.status_code == 200
        body = response.json()
        assert body == {"channel": "prices", "offset": 1, "epoch": subscribed.epoch}
        message = await sub.expect(Publication)
        assert (message.channel, message.offset, message.epoch) == ("prices", 1, body["epoch"])
        assert message.from_ is None
        assert sub.data(message.data) == data


async def test_http_and_websocket_publications_share_one_offset_sequence(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with open_client(running.url()) as sub, open_client(running.url()) as pub:
        await subscribe(sub, "mixed")
        await pub.send(Publish(id=1, channel="mixed", data=msgspec.Raw(b'"ws"')))
        assert (await pub.expect(Published)).offset == 1
        response = await http.post("/v1/publish", json={"channel": "mixed", "data": "http"})
        assert response.json()["offset"] == 2
        got = [await sub.expect(Publication) for _ in range(2)]
        assert [(m.offset, sub.data(m.data)) for m in got] == [(1, "ws"), (2, "http")]
        assert pub.welcome is not None
        assert [m.from_ for m in got] == [pub.welcome.client, None]


async def test_http_publish_is_allowed_where_clients_may_not_publish() -> None:
    settings = Settings(namespaces={"ro": NamespaceSettings(allow_publish=False)})
    async with (
        serve_broker(settings) as running,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
        open_client(running.url()) as sub,
    ):
        await subscribe(sub, "ro:announcements")
        response = await http.post(
            running.http("/v1/publish"), json={"channel": "ro:announcements", "data": "hi"}
        )
        assert response.status_code == 200
        assert sub.data((await sub.expect(Publication)).data) == "hi"


BAD_BODIES: dict[str, bytes] = {
    "not-json": b"channel=news&data=1",
    "empty": b"",
    "truncated": b'{"channel": "news", "data": ',
    "array": b'["news", 1]',
    "missing-data": b'{"channel": "news"}',
    "missing-channel": b'{"data": 1}',
    "channel-not-a-string": b'{"channel": 5, "data": 1}',
    "channel-with-space": b'{"channel": "two words", "data": 1}',
    "empty-channel": b'{"channel": "", "data": 1}',
    "channel-of-256-chars": b'{"channel": "' + b"a" * 256 + b'", "data": 1}',
    "chat-room": b'{"channel": "#chat", "data": "sneaky"}',
    # No MessagePack form: MessagePack subscribers could never receive it.
    "integer-beyond-64-bits": b'{"channel": "news", "data": 100000000000000000000000000000}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_http_publish_with_a_bad_body_answers_400_without_a_traceback(
    running: RunningBroker, http: httpx.AsyncClient, body: bytes
) -> None:
    async with open_client(running.url(), Encoding.MSGPACK) as sub:
        await subscribe(sub, "news")
        response = await http.post(
            "/v1/publish", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert not LEAK.search(response.text), response.text
        assert response.json()["detail"]
        await assert_nothing_more(sub)
    assert running.broker.hub.statistics().publications == 0


# --- GET /v1/channels ---------------------------------------------------------------------------


async def test_channels_lists_each_channel_with_its_subscriber_count_but_not_the_chat_room(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with (
        open_client(running.url()) as a,
        open_client(running.url(), Encoding.MSGPACK) as b,
        connect(running.url("/ws/chat"), open_timeout=TIMEOUT) as chatter,
    ):
        await subscribe(a, "alpha")
        await subscribe(b, "alpha")
        await subscribe(b, "ns:beta")
        await chatter.send("in the room")
        assert await asyncio.wait_for(chatter.recv(), TIMEOUT) == "Client says: in the room"
        assert running.broker.hub.subscriber_count("#chat") == 1

        response = await http.get("/v1/channels")
        assert response.status_code == 200
        listing = response.json()["channels"]
        assert sorted(listing, key=lambda c: c["channel"]) == [
            {"channel": "alpha", "subscribers": 2},
            {"channel": "ns:beta", "subscribers": 1},
        ]


async def test_channels_is_empty_when_nobody_is_subscribed(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with open_client(running.url()) as client:
        await subscribe(client, "brief")
        await http.post("/v1/publish", json={"channel": "other", "data": 1})
    response = await http.get("/v1/channels")
    assert response.json() == {"channels": []}


# --- POST /v1/clients/{client}/disconnect -------------------------------------------------------


@ENCODINGS
async def test_disconnecting_a_client_closes_it_with_4010_and_leaves_the_others(
    running: RunningBroker, http: httpx.AsyncClient, encoding: Encoding
) -> None:
    async with open_client(running.url(), encoding) as target, open_client(running.url()) as other:
        assert target.welcome is not None
        client_id = target.welcome.client
        response = await http.post(f"/v1/clients/{client_id}/disconnect")
        assert response.status_code == 200
        assert response.json() == {"client": client_id, "disconnected": True}

        notice = await target.expect(Disconnect)
        assert notice.code == 4010
        with pytest.raises(ConnectionClosed) as closed:
            await target.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4010
        await assert_nothing_more(other)


async def test_disconnecting_an_unknown_client_answers_false(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with open_client(running.url()) as bystander:
        response = await http.post("/v1/clients/no-such-client/disconnect")
        assert response.status_code == 200
        assert response.json() == {"client": "no-such-client", "disconnected": False}
        await assert_nothing_more(bystander)


# --- health and metrics -------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200_while_running(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200


async def test_metrics_are_prometheus_text_that_follow_connections_and_publications(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async def scrape() -> dict[str, float]:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return metric_values(response.text)

    before = await scrape()
    assert before["broker_connections"] == 0
    async with open_client(running.url()) as a, open_client(running.url()) as b:
        await subscribe(a, "m")
        await subscribe(b, "m")
        during = await scrape()
        assert during["broker_connections"] == 2
        await http.post("/v1/publish", json={"channel": "m", "data": 1})
        for sub in (a, b):
            await sub.expect(Publication)
        after = await scrape()
    assert after["broker_publications_total"] == before["broker_publications_total"] + 1
    assert after["broker_deliveries_total"] == before["broker_deliveries_total"] + 2


async def test_a_publish_body_larger_than_the_message_limit_is_refused_with_413() -> None:
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(settings) as running, httpx.AsyncClient() as http:
        big = {"channel": "news", "data": "x" * 5000}
        response = await http.post(running.http("/v1/publish"), json=big)
        assert response.status_code == 413
        small = {"channel": "news", "data": "x" * 500}
        assert (await http.post(running.http("/v1/publish"), json=small)).status_code == 200
