"""Idempotent publishing: a publish repeating an ``idempotency_key`` within the window is answered
with the first publication's offset and epoch and is not published again, over WebSocket and
HTTP, in memory and on Redis; a publish answered ``unavailable`` while Redis was paused, and
retried with its key, is published exactly once; the Python client retries so by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from broker.client import Backoff, connect
from broker.settings import BackplaneSettings, NamespaceSettings, Settings
from protocol import Encoding, Error, ErrorCode, Publication, Publish, Published, StreamPosition
from tests.broker.backplane.redis_helpers import on_redis, wait_readyz
from tests.broker.backplane.test_behaviour import (
    assert_alive,
    backplane,
    clients,
    history,
    publish,
    raw,
    receive,
    serve,
    serve_ready,
    subscribe,
)
from tests.conftest import TIMEOUT, wait_until
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

__all__ = ["backplane"]  # the fixture, over both backplanes

H = NamespaceSettings(history_size=100)


async def publish_keyed(
    client: ProtocolClient, channel: str, value: object, request_id: int, key: str
) -> Published | Error:
    await client.send(
        Publish(id=request_id, channel=channel, data=raw(client, value), idempotency_key=key)
    )
    reply = await client.recv()
    assert isinstance(reply, Published | Error), reply
    assert reply.id == request_id
    return reply


async def test_a_repeated_key_is_answered_with_the_first_offset_and_published_once(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=H) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as cs,
    ):
        first_publisher, second_publisher = cs
        async with open_client(running.url()) as sub:
            await subscribe(sub, "h:orders")
            first = await publish_keyed(first_publisher, "h:orders", "one", 1, "order-1")
            again = await publish_keyed(first_publisher, "h:orders", "one", 2, "order-1")
            # The key belongs to the publication, whoever repeats it.
            elsewhere = await publish_keyed(second_publisher, "h:orders", "one", 3, "order-1")
            other = await publish_keyed(first_publisher, "h:orders", "two", 4, "order-2")
            assert isinstance(first, Published) and isinstance(other, Published)
            assert (first.offset, other.offset) == (1, 2)
            for repeat in (again, elsewhere):
                assert isinstance(repeat, Published)
                assert (repeat.offset, repeat.epoch) == (first.offset, first.epoch)
            got = await receive(sub, 2)
            assert [(m.offset, sub.data(m.data)) for m in got] == [(1, "one"), (2, "two")]
            await assert_alive(sub)  # nothing more was delivered
            page = await history(sub, "h:orders")
            assert [p.offset for p in page.publications] == [1, 2]
            # The same key on another channel is another publication.
            elsewhere_channel = await publish_keyed(first_publisher, "h:other", "x", 5, "order-1")
            assert isinstance(elsewhere_channel, Published) and elsewhere_channel.offset == 1


async def test_http_publish_with_a_repeated_key_publishes_once(
    backplane: BackplaneSettings,
) -> None:
    async with serve(backplane, h=H) as running, open_client(running.url()) as sub:
        await subscribe(sub, "h:http")
        body = {"channel": "h:http", "data": {"n": 1}, "idempotency_key": "http-1"}
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            answers = [(await http.post(running.http("/v1/publish"), json=body)) for _ in "abc"]
            bad = await http.post(
                running.http("/v1/publish"),
                json={"channel": "h:http", "data": 1, "idempotency_key": "has space"},
            )
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert len({(a.json()["offset"], a.json()["epoch"]) for a in answers}) == 1
        assert answers[0].json()["offset"] == 1
        assert bad.status_code == 400
        got = await receive(sub, 1)
        assert got[0].offset == 1
        await assert_alive(sub)


async def test_a_malformed_key_is_a_bad_request_and_publishes_nothing(
    backplane: BackplaneSettings,
) -> None:
    async with serve(backplane, h=H) as running, open_client(running.url()) as pub:
        for key in ("", "x" * 129, "naïve", "a b"):
            await pub.send_json(
                {"type": "publish", "id": 9, "channel": "h:x", "data": 1, "idempotency_key": key}
            )
            reply = await pub.expect(Error)
            assert (reply.id, reply.code) == (9, ErrorCode.BAD_REQUEST)
        page = await history(pub, "h:x")
        assert page.publications == []


async def test_a_key_is_forgotten_after_the_window(backplane: BackplaneSettings) -> None:
    settings = Settings(
        namespaces={"h": H},
        backplane=BackplaneSettings(
            kind=backplane.kind, redis_url=backplane.redis_url, idempotency_window=0.3
        ),
    )
    async with serve_ready(settings) as running, open_client(running.url()) as pub:
        first = await publish_keyed(pub, "h:w", "a", 1, "k")
        await asyncio.sleep(0.6)  # the window is time itself: nothing else to await
        later = await publish_keyed(pub, "h:w", "a", 2, "k")
        assert isinstance(first, Published) and isinstance(later, Published)
        assert (first.offset, later.offset) == (1, 2)


# --- Redis paused: the publish in flight is answered unavailable, then published anyway ---------


@asynccontextmanager
async def paused(server: RedisServer) -> AsyncIterator[None]:
    """Redis stopped with SIGSTOP for the duration of the block: its sockets accept what is sent,
    and it runs all of it when it resumes."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def test_a_publish_answered_unavailable_while_redis_is_paused_is_published_once(
    redis_server: RedisServer,
) -> None:
    """The first attempt reaches the paused Redis and times out (``unavailable``); Redis runs it
    when it resumes. The retry with the same key is answered with that publication's offset."""
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        open_client(running.url()) as pub,
        open_client(running.url()) as sub,
    ):
        await subscribe(sub, "h:pay")
        await publish(pub, "h:warm-up", "loads the script", 9)
        async with paused(redis_server):
            failed = await publish_keyed(pub, "h:pay", "pay 10", 1, "payment-7")
            assert isinstance(failed, Error) and failed.code == ErrorCode.UNAVAILABLE
            assert "same idempotency_key" in failed.message
        await wait_readyz(running, 200)
        # Redis ran the first attempt once it resumed: it is delivered...
        (delivered,) = await receive(sub, 1)
        assert (delivered.offset, sub.data(delivered.data)) == (1, "pay 10")
        # ...and the retry is answered with its offset, without a second publication.
        retry = await publish_keyed(pub, "h:pay", "pay 10", 2, "payment-7")
        assert isinstance(retry, Published)
        assert (retry.offset, retry.epoch) == (1, delivered.epoch)
        marker = await publish(pub, "h:pay", "next", 3)
        assert marker.offset == 2
        assert [sub.data(m.data) for m in await receive(sub, 1)] == ["next"]
        page = await history(sub, "h:pay", since=StreamPosition(offset=0, epoch=retry.epoch))
        assert [(p.offset, sub.data(p.data)) for p in page.publications] == [
            (1, "pay 10"),
            (2, "next"),
        ]


async def test_the_python_client_retries_unavailable_with_its_key_and_publishes_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.client")
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        open_client(running.url()) as sub,
        connect(running.url(), backoff=Backoff(base=0.1, cap=0.3), publish_retry_for=20) as client,
    ):
        await subscribe(sub, "h:pay")
        await client.publish("h:warm-up", "loads the script")
        async with paused(redis_server):
            publishing = asyncio.create_task(client.publish("h:pay", {"amount": 10}))
            await wait_until(lambda: any(r.msg == "publish.retry" for r in caplog.records))
            await asyncio.sleep(1.5)  # a pause long enough for the broker to turn unready
        reply = await asyncio.wait_for(publishing, TIMEOUT * 2)
        assert reply.offset == 1
        marker = await client.publish("h:pay", "next")
        assert marker.offset == 2
        got: list[Publication] = await receive(sub, 2)
        assert [(m.offset, sub.data(m.data)) for m in got] == [(1, {"amount": 10}), (2, "next")]
