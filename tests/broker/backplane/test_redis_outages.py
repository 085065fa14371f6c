"""The Redis backplane through outages, with real redis-servers the tests stop, restart and
cut off: readiness, `unavailable` answers, resubscription, and what a broker missed filled
from the stream (or reported as a gap, or a new epoch)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from protocol import (
    Encoding,
    Error,
    Gap,
    History,
    Publication,
    Publish,
    Published,
    ServerMessage,
    StreamPosition,
    Unsubscribe,
    Unsubscribed,
)
from tests.broker.backplane.redis_helpers import (
    USER,
    Tally,
    allow_cutoff_user,
    command,
    cut_off,
    cutoff_url,
    eventually,
    numsub,
    on_redis,
    readyz,
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
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient

pytestmark = pytest.mark.anyio


# --- outages ------------------------------------------------------------------------------------


async def test_while_redis_is_down_readyz_is_503_publishes_are_unavailable_and_clients_stay(
    redis_server: RedisServer,
) -> None:
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as (pub, sub),
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        before = await subscribe(sub, "h:news")
        await publish(pub, "h:news", "before", 1)
        assert [m.offset for m in await receive(sub, 1)] == [1]
        await redis_server.stop()

        await wait_readyz(running, 503)
        await pub.send(Publish(id=2, channel="h:news", data=raw(pub, "lost")))
        error = await pub.expect(Error)
        assert (error.id, error.code) == (2, "unavailable")
        response = await http.post(
            running.http("/v1/publish"), json={"channel": "h:news", "data": "lost"}
        )
        assert (response.status_code, response.json()["error"]) == (503, "unavailable")
        await pub.send(History(id=3, channel="h:news"))
        error = await pub.expect(Error)
        assert (error.id, error.code) == (3, "unavailable")
        await assert_alive(pub)
        await assert_alive(sub)  # nothing was delivered for the failed publishes

        await redis_server.start()  # same port, and empty: the stream is lost
        await wait_readyz(running, 200)
        after = await publish(pub, "h:news", "after", 4)
        assert after.epoch != before.epoch
        (message,) = await receive(sub, 1)
        assert (message.epoch, sub.data(message.data)) == (after.epoch, "after")
        await sub.send(Unsubscribe(id=5, channel="h:news"))
        await sub.expect(Unsubscribed)
        old = StreamPosition(offset=1, epoch=before.epoch)
        reply = await subscribe(sub, "h:news", request_id=6, since=old)
        assert (reply.recovered, reply.epoch) == (False, after.epoch)


def assert_in_order_once(messages: list[Publication]) -> None:
    """Per epoch, offsets strictly increase: in order, no duplicate."""
    last: dict[str, int] = {}
    for message in messages:
        assert message.offset > last.get(message.epoch, 0), f"out of order: {message}"
        last[message.epoch] = message.offset


async def test_a_steady_stream_through_a_redis_restart_answers_unavailable_then_goes_on(
    redis_server: RedisServer,
) -> None:
    """Publishes during the outage answer ``unavailable`` (none is a false success); the
    subscriber stays connected and gets the publications of the old stream in order, then those
    of the new one (a new epoch: the restarted Redis lost the old stream)."""
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as (pub, sub),
    ):
        await subscribe(sub, "h:steady")
        acknowledged = Tally()  # (epoch, offset) of every publish answered ``published``
        refused = Tally()  # every publish answered ``unavailable``
        restarted = asyncio.Event()

        async def publisher() -> None:
            n = 0
            since_restart = 0
            while since_restart < 10:
                n += 1
                await pub.send(Publish(id=n, channel="h:steady", data=raw(pub, n)))
                reply = await pub.recv()
                if isinstance(reply, Error):
                    assert reply.code == "unavailable"
                    refused.add(n)
                else:
                    assert isinstance(reply, Published)
                    acknowledged.add((reply.epoch, reply.offset))
                    since_restart += restarted.is_set()
                await asyncio.sleep(0.01)  # a steady pace: time is the behaviour

        async def outage() -> None:
            await acknowledged.reach(10)
            await redis_server.stop()

            await wait_readyz(running, 503)
            await refused.reach(3)
            await redis_server.start()
            restarted.set()

        messages: list[Publication] = []
        gaps: list[Gap] = []
        async with asyncio.timeout(TIMEOUT * 2):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(publisher())
                tasks.create_task(outage())
            while acknowledged.items[-1] not in {(m.epoch, m.offset) for m in messages}:
                message = await sub.recv()
                if isinstance(message, Gap):
                    gaps.append(message)
                else:
                    assert isinstance(message, Publication)
                    messages.append(message)
        assert len(refused) >= 3
        assert_in_order_once(messages)
        epochs = list(dict.fromkeys(epoch for epoch, _ in acknowledged.items))
        assert len(epochs) == 2, "the restarted Redis starts a new epoch"
        old, new = ([offset for epoch, offset in acknowledged.items if epoch == e] for e in epochs)
        got_old = [m.offset for m in messages if m.epoch == epochs[0]]
        got_new = [m.offset for m in messages if m.epoch == epochs[1]]
        # The old stream, up to the crash: a publication in flight when Redis died may be lost
        # with the stream it was in (the new epoch tells the client); nothing before it is.
        assert gaps == []
        assert got_old[: len(old) - 1] == old[:-1]
        assert got_new[-1] == new[-1]
        await assert_alive(sub)


async def test_after_its_pubsub_link_is_killed_a_broker_resubscribes_and_misses_nothing(
    redis_server: RedisServer,
) -> None:
    """``CLIENT KILL TYPE pubsub`` for the subscribers' broker, three times during a steady
    stream from another broker: Redis keeps the data, so the subscribers get every offset once,
    in order (what went by while the link was down is filled from the stream, whose history
    holds all of it)."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON, Encoding.MSGPACK) as pubs,
            clients(subscribing.url(), Encoding.JSON, Encoding.MSGPACK) as subs,
        ):
            for sub in subs:
                await subscribe(sub, "long:stream")
            published = Tally()
            kills_done = asyncio.Event()

            async def publisher(pub: ProtocolClient) -> None:
                n = 0
                while not kills_done.is_set() or n < 30:
                    n += 1
                    published.add((await publish(pub, "long:stream", n, n)).offset)

            async def killer() -> None:
                for _ in range(3):
                    await published.reach(len(published) + 20)
                    killed = await command(redis, "CLIENT", "KILL", "TYPE", "pubsub", "USER", USER)
                    assert killed == 1

                    async def resubscribed() -> bool:
                        return await numsub(redis, "long:stream") == 1

                    await eventually(resubscribed)
                kills_done.set()

            async with asyncio.timeout(TIMEOUT * 2), asyncio.TaskGroup() as tasks:
                for pub in pubs:
                    tasks.create_task(publisher(pub))
                tasks.create_task(killer())
            total = max(published.items)
            assert sorted(published.items) == list(range(1, total + 1))
            for sub in subs:
                got = await receive(sub, total)
                assert [m.offset for m in got] == list(range(1, total + 1))
                await assert_alive(sub)


async def cut_off_while_publishing(
    redis_server: RedisServer, channel: str, missed: int
) -> tuple[list[ServerMessage], int, int]:
    """The subscriber's broker loses Redis (its user is locked out) while another broker
    publishes ``missed`` publications; then it may connect again. What the subscriber received
    up to the last publication, the offset before the outage and the last offset."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON) as (pub,),
            clients(subscribing.url(), Encoding.MSGPACK, Encoding.JSON) as (sub, local),
        ):
            await subscribe(sub, channel)
            for i in range(1, 4):
                await publish(pub, channel, i, i)
            assert [m.offset for m in await receive(sub, 3)] == [1, 2, 3]
            await cut_off(redis)

            await wait_readyz(subscribing, 503)
            assert await readyz(publishing) == 200
            await local.send(Publish(id=1, channel=channel, data=raw(local, "no")))
            error = await local.expect(Error)
            assert (error.id, error.code) == (1, "unavailable")
            for i in range(4, 4 + missed):
                await publish(pub, channel, i, i)
            await allow_cutoff_user(redis)

            await wait_readyz(subscribing, 200)
            last = await publish(pub, channel, "live", 100)
            got: list[ServerMessage] = []
            async with asyncio.timeout(TIMEOUT):
                while not got or not (
                    isinstance(got[-1], Publication) and got[-1].offset >= last.offset
                ):
                    got.append(await sub.recv())
            await assert_alive(sub)
            return got, 3, last.offset


async def test_what_a_broker_missed_while_cut_off_from_redis_is_filled_from_the_stream(
    redis_server: RedisServer,
) -> None:
    got, before, last = await cut_off_while_publishing(redis_server, "h:cut", missed=20)
    assert all(isinstance(m, Publication) for m in got), got
    assert [m.offset for m in got] == list(range(before + 1, last + 1))  # type: ignore[union-attr]


async def test_what_redis_trimmed_before_the_fill_is_reported_as_a_gap(
    redis_server: RedisServer,
) -> None:
    # history_size = 3: of the 20 missed, Redis keeps the last 3 (and the live one pushes one
    # of those out only after the fill has read them, or arrives in order after it).
    got, before, last = await cut_off_while_publishing(redis_server, "small:cut", missed=20)
    assert isinstance(got[0], Gap), got
    assert got[0].channel == "small:cut"
    assert got[0].from_offset == before + 1
    rest = got[1:]
    assert all(isinstance(m, Publication) for m in rest), rest
    offsets = [m.offset for m in rest]  # type: ignore[union-attr]
    assert offsets == list(range(got[0].to_offset + 1, last + 1))
    assert last - got[0].to_offset >= 2


async def test_after_redis_lost_the_stream_a_broker_delivers_the_new_epoch_from_offset_1(
    redis_server: RedisServer,
) -> None:
    """Redis restarts empty; another broker publishes into the new stream before this one is
    back. Those publications are retained in the new stream, so its subscribers get them."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON) as (pub,),
            clients(subscribing.url(), Encoding.JSON) as (sub,),
        ):
            before = await subscribe(sub, "h:reborn")
            await redis_server.stop()
            await redis_server.start()  # without the user: the subscribers' broker stays out

            await wait_readyz(publishing, 200)
            first = [await publish(pub, "h:reborn", i, i) for i in (1, 2)]
            assert first[0].epoch != before.epoch
            async with redis_client(redis_server.url) as fresh:
                await allow_cutoff_user(fresh)

            await wait_readyz(subscribing, 200)
            await publish(pub, "h:reborn", 3, 3)
            got: list[tuple[str, int]] = []
            while (first[0].epoch, 3) not in got:
                message = await sub.expect(Publication)
                got.append((message.epoch, message.offset))
            assert got == [(first[0].epoch, offset) for offset in (1, 2, 3)]
