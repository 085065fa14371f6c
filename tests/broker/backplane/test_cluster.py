"""Redis Cluster: a real local cluster of three masters with a replica each (started by the test
on private ports). Every key of a channel shares its hash tag, so the publish script runs on the
node that owns the channel's slot; live publications use sharded pub/sub. Two brokers on the
cluster act as one, and a master killed with SIGKILL, its replica promoted, costs nothing: every
publication arrives once, in order, in one epoch per channel."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from broker.backplane.control import DisconnectClient
from broker.client import Backoff, connect
from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import Disconnect, Encoding, Join, Publication, Publish
from tests.broker.backplane.redis_helpers import eventually, presence_of
from tests.broker.backplane.test_behaviour import (
    client_id,
    clients,
    history,
    raw,
    receive,
    serve_ready,
    subscribe,
)
from tests.conftest import TIMEOUT
from tests.redis_cluster import RedisClusterServers
from tests.wsclient import ProtocolClient

pytestmark = pytest.mark.anyio

CHANNELS = [f"h:room-{i}" for i in range(6)]


def on_cluster(cluster: RedisClusterServers) -> Settings:
    return Settings(
        namespaces={"h": NamespaceSettings(history_size=1000)},
        backplane=BackplaneSettings(
            kind=BackplaneKind.REDIS,
            redis_url=cluster.url,
            redis_cluster=True,
            health_interval=0.2,
            timeout=1.0,
        ),
    )


async def collect(
    client: ProtocolClient, counts: dict[str, int]
) -> dict[str, list[tuple[int, str, object]]]:
    """Publications per channel until each channel has ``counts[channel]`` of them."""
    got: dict[str, list[tuple[int, str, object]]] = defaultdict(list)
    async with asyncio.timeout(TIMEOUT * 3):
        while any(len(got[c]) < n for c, n in counts.items()):
            message = await client.recv()
            if isinstance(message, Publication):
                got[message.channel].append(
                    (message.offset, message.epoch, client.data(message.data))
                )
    return got


async def test_two_brokers_on_a_cluster_survive_a_master_killed_and_its_replica_promoted() -> None:
    async with (
        RedisClusterServers() as cluster,
        serve_ready(on_cluster(cluster)) as a,
        serve_ready(on_cluster(cluster)) as b,
        clients(b.url(), Encoding.MSGPACK) as (sub,),
        connect(a.url(), backoff=Backoff(base=0.1, cap=0.5), publish_retry_for=40) as pub,
    ):
        for i, channel in enumerate(CHANNELS):
            await subscribe(sub, channel, request_id=i + 1)
        epochs = {}
        for channel in CHANNELS:
            for n in range(1, 4):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert reply.offset == n
                epochs[channel] = reply.epoch
        got = await collect(sub, dict.fromkeys(CHANNELS, 3))

        # Every key of a channel is on the node that owns the channel's slot.
        slots = {c: await _keyslot(cluster, f"broker:m:{{{c}}}") for c in CHANNELS}
        probe = aioredis.RedisCluster.from_url(cluster.url)
        try:
            for channel, slot in slots.items():
                for kind in "ms":
                    assert await _keyslot(cluster, f"broker:{kind}:{{{channel}}}") == slot
                    assert await probe.exists(f"broker:{kind}:{{{channel}}}") == 1
        finally:
            await probe.aclose()
        assert len({await cluster.owner(slot) for slot in slots.values()}) > 1  # spread

        # The hardest node to lose: the one carrying the subscribers' broker's health channel
        # (its pub/sub link fails whole, not one channel at a time).
        backplane: Any = b.broker.backplane
        health_slot = await _keyslot(cluster, f"broker:health:{backplane.process}")
        victim = await cluster.owner(health_slot)
        await cluster.wait_replicated(victim)
        await victim.stop()  # SIGKILL: the cluster promotes its replica
        for channel in CHANNELS:
            for n in range(4, 7):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert (reply.offset, reply.epoch) == (n, epochs[channel])
        assert await cluster.owner(health_slot) is not victim

        more = await collect(sub, dict.fromkeys(CHANNELS, 3))
        for channel in CHANNELS:
            assert got[channel] + more[channel] == [
                (n, epochs[channel], f"{channel}/{n}") for n in range(1, 7)
            ]


async def _keyslot(cluster: RedisClusterServers, key: str) -> int:
    """``CLUSTER KEYSLOT key``, as Redis computes it."""
    client = aioredis.Redis(port=cluster.nodes[0].port)
    try:
        return int(await client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def test_presence_history_the_channel_list_and_chat_work_across_brokers_on_a_cluster() -> (
    None
):
    async with RedisClusterServers() as cluster:
        settings = on_cluster(cluster)
        settings = msgspec.structs.replace(
            settings,
            namespaces={
                **settings.namespaces,
                "p": NamespaceSettings(presence=True, join_leave=True, history_size=10),
            },
        )
        async with (
            serve_ready(settings) as a,
            serve_ready(settings) as b,
            clients(a.url(), Encoding.JSON) as (on_a,),
            clients(b.url(), Encoding.JSON) as (on_b,),
        ):
            await subscribe(on_a, "p:lobby")
            await subscribe(on_b, "p:lobby")
            assert await on_a.expect(Join) == Join(channel="p:lobby", client=client_id(on_b))
            both = sorted([client_id(on_a), client_id(on_b)])

            async def both_present() -> bool:
                return await presence_of(on_a, "p:lobby") == both

            await eventually(both_present)  # b writes its member to Redis in the background
            # The publisher is subscribed: its own publication may come before or after its
            # ``published`` (docs/protocol.md).
            await on_b.send(Publish(id=7, channel="p:lobby", data=raw(on_b, "hello")))
            own = [await on_b.recv(), await on_b.recv()]
            assert sorted((type(m).__name__, m.offset) for m in own) == [  # type: ignore[union-attr]
                ("Publication", 1),
                ("Published", 1),
            ]
            assert [m.offset for m in await receive(on_a, 1)] == [1]
            page = await history(on_a, "p:lobby")
            assert [on_a.data(p.data) for p in page.publications] == ["hello"]
            assert await a.broker.control.channels() == [("p:lobby", 2)]
            assert await a.broker.control.count(DisconnectClient(client_id(on_b))) == 1
            assert (await on_b.expect(Disconnect)).code == 4010
