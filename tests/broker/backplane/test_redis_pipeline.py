"""The Redis backplane's publish pipeline (broker/backplane/redis_pipeline.py), with real
redis-servers: a connection publishes without waiting for each round trip, and still every
publication keeps its order and every publish gets its reply, in order, even through failures.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
import pytest
import structlog

from broker.backplane.redis import RedisBackplane
from broker.backplane.redis_pipeline import PipelineStatistics
from broker.config import ConfigError, load_settings
from broker.settings import NamespaceSettings, Settings
from protocol import Encoding, Error, Publish, Published, ServerMessage
from tests.broker.backplane.redis_helpers import (
    PREFIX,
    brokers,
    command,
    on_redis,
    redis_client,
    wait_readyz,
)
from tests.broker.backplane.test_behaviour import (
    assert_alive,
    clients,
    publish,
    raw,
    receive,
    serve_ready,
    subscribe,
)
from tests.conftest import RunningBroker
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient

pytestmark = pytest.mark.anyio

N = 2000


def pipeline_statistics(running: RunningBroker, shard: int = 0) -> PipelineStatistics:
    backplane = running.broker.backplane
    assert isinstance(backplane, RedisBackplane)
    return backplane.shards[shard].pipeline.statistics()


async def publish_all(client: ProtocolClient, channel: str, count: int, first_id: int = 1) -> None:
    """Send ``count`` publishes with ids, without waiting for any reply."""
    for n in range(first_id, first_id + count):
        await client.send(Publish(id=n, channel=channel, data=raw(client, n)))


async def replies(client: ProtocolClient, count: int) -> list[ServerMessage]:
    return [await client.recv() for _ in range(count)]


async def noscript_errors(redis: Any) -> int:
    """How many NOSCRIPT errors Redis has answered since it started (INFO errorstats)."""
    stats = await redis.info("errorstats")
    return int(stats.get("errorstat_NOSCRIPT", {}).get("count", 0))


async def test_one_connection_publishes_without_waiting_and_everything_stays_in_order(
    redis_server: RedisServer,
) -> None:
    """2,000 publishes sent at once by one connection: the replies come in publish order with
    offsets 1..N, subscribers on this broker and on another one get them all in that order, and
    the broker sent them in far fewer round trips than publications."""
    async with (
        brokers(on_redis(redis_server.url), 2) as (a, b),
        clients(a.url(), Encoding.JSON, Encoding.MSGPACK) as (pub, here),
        clients(b.url(), Encoding.JSON) as (there,),
    ):
        for sub in (here, there):
            await subscribe(sub, "ticks")
        await publish_all(pub, "ticks", N)
        answered = await replies(pub, N)
        assert all(isinstance(reply, Published) for reply in answered), [
            reply for reply in answered if not isinstance(reply, Published)
        ][:3]
        published = [reply for reply in answered if isinstance(reply, Published)]
        assert [(p.id, p.offset) for p in published] == [(n, n) for n in range(1, N + 1)]
        assert len({p.epoch for p in published}) == 1
        for sub in (here, there):
            got = await receive(sub, N)
            assert [(m.offset, sub.data(m.data)) for m in got] == [(n, n) for n in range(1, N + 1)]
        statistics = pipeline_statistics(a)
        # Sent again: the first batch, after the fresh Redis answered NOSCRIPT.
        assert N < statistics.sent <= N + 256
        assert statistics.round_trips <= N // 4, statistics
        await assert_alive(pub)


async def test_replies_to_publishes_and_the_errors_between_them_leave_in_request_order(
    redis_server: RedisServer,
) -> None:
    """Errors the reader makes at once (a refused namespace, a bad frame) wait for the replies to
    earlier publishes still in the pipeline; a publish without ``id`` answers nothing."""
    settings = on_redis(redis_server.url)
    namespaces = {**settings.namespaces, "ro": NamespaceSettings(allow_publish=False)}
    settings = msgspec.structs.replace(settings, namespaces=namespaces)
    async with serve_ready(settings) as running, clients(running.url(), Encoding.JSON) as (pub,):
        expected: list[tuple[str, int]] = []
        for round_ in range(50):
            n = 10 * round_
            await pub.send(Publish(id=n + 1, channel="news", data=raw(pub, n)))
            await pub.send(Publish(channel="news", data=raw(pub, n)))  # no id: no reply
            await pub.send(Publish(id=n + 2, channel="ro:news", data=raw(pub, n)))
            await pub.send_json({"type": "publish", "id": n + 3})  # no channel: bad_request
            await pub.send(Publish(id=n + 4, channel="news", data=raw(pub, n)))
            expected += [
                ("published", n + 1),
                ("permission_denied", n + 2),
                ("bad_request", n + 3),
                ("published", n + 4),
            ]
        got: list[tuple[str, int | None]] = []
        for reply in await replies(pub, len(expected)):
            if isinstance(reply, Published):
                got.append(("published", reply.id))
            else:
                assert isinstance(reply, Error), reply
                got.append((reply.code, reply.id))
        assert got == expected
        await assert_alive(pub)


async def test_replies_stay_in_publish_order_across_redis_servers() -> None:
    """Channels on two Redis servers: each server's pipeline answers on its own, the replies
    still leave in the order of the publishes."""
    first, second = RedisServer(), RedisServer()
    await first.start()
    await second.start()
    try:
        names = [f"c{i}" for i in range(20)]
        on = {zlib.crc32(name.encode()) % 2: name for name in names}
        channels = [on[0], on[1]]
        async with (
            serve_ready(on_redis(first.url, second.url)) as running,
            clients(running.url(), Encoding.MSGPACK) as (pub,),
        ):
            count = 600
            for n in range(1, count + 1):
                await pub.send(Publish(id=n, channel=channels[n % 2], data=raw(pub, n)))
            answered = [r for r in await replies(pub, count) if isinstance(r, Published)]
            assert [(r.id, r.channel) for r in answered] == [
                (n, channels[n % 2]) for n in range(1, count + 1)
            ]
            offsets = {c: [r.offset for r in answered if r.channel == c] for c in channels}
            assert offsets == {c: list(range(1, count // 2 + 1)) for c in channels}
            for shard in (0, 1):
                assert pipeline_statistics(running, shard).sent >= count // 2
    finally:
        await first.close()
        await second.close()


async def test_a_small_publish_queue_makes_the_publisher_wait_and_loses_nothing(
    redis_server: RedisServer,
) -> None:
    settings = on_redis(redis_server.url)
    backplane = msgspec.structs.replace(settings.backplane, publish_queue=4)
    settings = msgspec.structs.replace(settings, backplane=backplane)
    count = 400
    async with (
        serve_ready(settings) as running,
        clients(running.url(), Encoding.JSON, Encoding.JSON) as (pub, sub),
    ):
        await subscribe(sub, "news")
        await publish_all(pub, "news", count)
        answered = await replies(pub, count)
        assert [(r.id, r.offset) for r in answered if isinstance(r, Published)] == [
            (n, n) for n in range(1, count + 1)
        ]
        assert [m.offset for m in await receive(sub, count)] == list(range(1, count + 1))
        # At most 4 publishes queued or in flight: batches of at most 4.
        assert pipeline_statistics(running).round_trips >= count // 4


async def test_one_failing_script_fails_only_its_own_publish(redis_server: RedisServer) -> None:
    """A channel whose head key holds the wrong type: its script fails inside the pipeline, the
    publishes around it in the same round trip succeed."""
    async with (
        redis_client(redis_server.url) as redis,
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.JSON) as (pub,),
    ):
        await redis.set(f"{PREFIX}:m:broken", "not a hash")
        with structlog.testing.capture_logs() as logs:
            for n in range(1, 301):
                channel = "broken" if n % 3 == 0 else "fine"
                await pub.send(Publish(id=n, channel=channel, data=raw(pub, n)))
            answered = await replies(pub, 300)
        assert [r.id for r in answered if isinstance(r, Published | Error)] == list(range(1, 301))
        failed = [r for r in answered if isinstance(r, Error)]
        assert [(r.id, r.code) for r in failed] == [(n, "unavailable") for n in range(3, 301, 3)]
        fine = [r.offset for r in answered if isinstance(r, Published)]
        assert fine == list(range(1, 201))
        assert any(log["event"] == "backplane.publish_failed" for log in logs)
        await assert_alive(pub)


async def test_after_script_flush_the_pipeline_loads_the_script_and_goes_on(
    redis_server: RedisServer,
) -> None:
    """NOSCRIPT: Redis lost the script (as after a restart) but kept the data, so nothing is
    refused and the offsets go on."""
    async with (
        redis_client(redis_server.url) as redis,
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.MSGPACK, Encoding.JSON) as (pub, sub),
    ):
        await subscribe(sub, "news")
        before = await publish(pub, "news", 0, 1)
        for flush in range(3):
            await command(redis, "SCRIPT", "FLUSH")
            errors = await noscript_errors(redis)
            await publish_all(pub, "news", 300, first_id=1000 * (flush + 1))
            answered = await replies(pub, 300)
            assert all(isinstance(r, Published) for r in answered), answered[:3]
            assert await noscript_errors(redis) > errors, "the NOSCRIPT path ran"
        offsets = [r.offset for r in answered if isinstance(r, Published)]
        assert offsets == list(range(602, 902))
        assert {r.epoch for r in answered if isinstance(r, Published)} == {before.epoch}
        assert [m.offset for m in await receive(sub, 901)] == list(range(1, 902))


async def test_while_redis_is_down_publishes_are_unavailable_and_after_a_restart_they_go_on(
    redis_server: RedisServer,
) -> None:
    """Redis killed with publishes in flight: every publish gets its reply, in order, either
    ``published`` or ``unavailable``; while it is down each publish is refused at once; once a
    new Redis (empty, without the script: NOSCRIPT) is back, a burst goes through again.

    The publisher's outbox holds a tenth of N: when Redis goes, the publishes pending in the
    pipeline (up to ``publish_queue``, 1,024) are answered at once, and so are those still
    unread once it counts as down (one read brings over a thousand), all in one turn. A client
    that reads still gets every reply: the outbox writes through once half full, rather than
    drop it with 4008 (as it did, now and then, with the default outbox of 1,000).
    """
    settings = on_redis(redis_server.url)
    settings = msgspec.structs.replace(
        settings, queue=msgspec.structs.replace(settings.queue, max_messages=N // 10)
    )
    async with (
        redis_client(redis_server.url) as redis,
        serve_ready(settings) as running,
        clients(running.url(), Encoding.JSON) as (pub,),
    ):
        await publish_all(pub, "news", N)
        answered = await replies(pub, 100)
        await redis_server.stop()
        answered += await replies(pub, N - 100)
        assert [(r.id, type(r)) for r in answered if isinstance(r, Published | Error)] == [
            (n, type(r)) for n, r in enumerate(answered, 1)
        ]
        assert {r.code for r in answered if isinstance(r, Error)} <= {"unavailable"}
        offsets = [r.offset for r in answered if isinstance(r, Published)]
        assert offsets == list(range(1, len(offsets) + 1))
        assert len(offsets) >= 100

        await wait_readyz(running, 503)
        await pub.send(Publish(id=N + 1, channel="news", data=raw(pub, "down")))
        refused = await pub.expect(Error)
        assert (refused.id, refused.code) == (N + 1, "unavailable")
        await assert_alive(pub)

        await redis_server.start()  # the same port, empty: no data, no script
        await wait_readyz(running, 200)
        await publish_all(pub, "news", 500, first_id=N + 2)
        after = [r for r in await replies(pub, 500) if isinstance(r, Published)]
        assert [(r.id, r.offset) for r in after] == [(N + 1 + n, n) for n in range(1, 501)]
        # Nothing watches a channel here, so no other script ran: the pipeline met NOSCRIPT.
        assert await noscript_errors(redis) > 0
        async with clients(running.url(), Encoding.JSON) as (sub,):
            await subscribe(sub, "news")
            await publish(pub, "news", "live", N + 600)
            (message,) = await receive(sub, 1)
            assert (message.offset, message.epoch) == (501, after[0].epoch)


async def test_a_publisher_that_leaves_with_publishes_in_flight_costs_nothing(
    redis_server: RedisServer,
) -> None:
    """Its replies arrive after its outbox is closed: they are refused quietly, nothing is
    logged as an error, and the broker goes on serving others."""
    async with serve_ready(on_redis(redis_server.url)) as running:
        with structlog.testing.capture_logs() as logs:
            async with clients(running.url(), Encoding.JSON) as (gone,):
                await publish_all(gone, "news", 1000)
            async with clients(running.url(), Encoding.JSON) as (other,):
                reply = await publish(other, "news", "still here", 1)
                assert reply.offset == 1001
        assert [log for log in logs if log["log_level"] in {"error", "critical"}] == []
        statistics = pipeline_statistics(running)
        assert (statistics.queued, statistics.in_flight) == (0, 0)


def test_publish_queue_must_be_positive() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BROKER_BACKPLANE__PUBLISH_QUEUE": "0"})
    assert str(caught.value) == (
        "$BROKER_BACKPLANE__PUBLISH_QUEUE: backplane.publish_queue = 0: expected `int` >= 1"
    )
    settings = load_settings(None, {"BROKER_BACKPLANE__PUBLISH_QUEUE": "16"})
    assert settings.backplane.publish_queue == 16
    assert Settings().backplane.publish_queue == 1024
