"""The hub actor without any server: what each command puts in which outbox.

The hub runs with the in-memory backplane, as in a one-process broker: publications go into the
backplane, which assigns offsets and epochs, keeps history and presence, and hands each
publication to the hub through its mailbox.

To know that the hub handled everything submitted so far, a test submits a ``ChannelsQuery`` and
waits for its reply (the mailbox is one ordered stream). Reads from the backplane (history,
presence, recovery) run in tasks of the hub, so their answers are awaited on the outbox itself.
"""

from __future__ import annotations

import anyio
import pytest

from broker.backplane import Head, MemoryBackplane
from broker.hub import (
    ChannelsQuery,
    Hub,
    Reply,
    SubscribeCommand,
)
from broker.settings import (
    LimitSettings,
    Settings,
)
from protocol import (
    JSON,
    MSGPACK,
    Encoding,
    ErrorCode,
    Publication,
    Subscribe,
    Unsubscribed,
)
from tests.broker.hub_helpers import (
    SETTINGS,
    client,
    error_of,
    offsets,
    only,
    payload_of,
    publications,
    raw,
    received,
    running_hub,
)
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.anyio


# --- the hub itself -----------------------------------------------------------------------------


async def test_the_hub_takes_commands_once_started_and_refuses_them_once_stopped() -> None:
    hub = Hub(SETTINGS, MemoryBackplane())
    assert not hub.running
    reply: Reply[list[tuple[str, int]]] = Reply()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            assert hub.running
            await hub.submit(ChannelsQuery(reply))
            assert await reply.wait() == []
            tg.cancel_scope.cancel()
    assert not hub.running
    with pytest.raises(anyio.ClosedResourceError):
        await hub.submit(ChannelsQuery(Reply()))


# --- subscribe and unsubscribe ------------------------------------------------------------------


async def test_subscribe_is_answered_with_the_channels_epoch_and_latest_offset() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("first"), "news")
        assert (subscribed.id, subscribed.channel, subscribed.offset) == (1, "news", 0)
        assert subscribed.epoch
        assert not subscribed.recovered
        assert subscribed.publications == []
        await running.publish("news", 1)
        head = await running.publish("news", 2)
        later = await running.subscribe(client("second"), "news")
        assert (later.epoch, later.offset) == (subscribed.epoch, 2) == (head.epoch, head.offset)


async def test_publications_of_a_channel_get_offsets_1_2_3_in_order() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        subscribed = await running.subscribe(subscriber, "news")
        for i in range(3):
            await running.publish("news", {"i": i})
        await running.barrier()
        delivered = publications(subscriber)
        assert offsets(delivered) == [1, 2, 3]
        assert [payload_of(subscriber, p) for p in delivered] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert {p.epoch for p in delivered} == {subscribed.epoch}
        assert {p.channel for p in delivered} == {"news"}


async def test_each_channel_counts_its_own_offsets() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "a")
        await running.subscribe(subscriber, "b")
        for channel in ["a", "b", "a", "a", "b"]:
            await running.publish(channel, channel)
        await running.barrier()
        delivered = [(p.channel, p.offset) for p in publications(subscriber)]
        assert delivered == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]


async def test_unsubscribe_is_answered_and_stops_delivery() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "news")
        await running.unsubscribe(subscriber, "news")
        await running.publish("news", 1)
        await running.barrier()
        assert received(subscriber) == [Unsubscribed(id=2, channel="news")]


async def test_unsubscribe_from_a_channel_not_subscribed_is_an_error() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.unsubscribe(subscriber, "news")
        assert error_of(received(subscriber)) == (2, ErrorCode.NOT_SUBSCRIBED)


async def test_subscribing_twice_to_a_channel_is_an_error_and_delivers_once() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "news")
        await running.hub.submit(SubscribeCommand(subscriber, Subscribe(id=9, channel="news")))
        await running.barrier()
        assert error_of(received(subscriber)) == (9, ErrorCode.ALREADY_SUBSCRIBED)
        await running.publish("news", 1)
        await running.barrier()
        assert offsets(publications(subscriber)) == [1]


async def test_subscriptions_beyond_max_subscriptions_are_refused() -> None:
    settings = Settings(limits=LimitSettings(max_subscriptions=2))
    async with running_hub(settings) as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "a")
        await running.subscribe(subscriber, "b")
        await running.hub.submit(SubscribeCommand(subscriber, Subscribe(id=3, channel="c")))
        channels = await running.barrier()
        assert error_of(received(subscriber)) == (3, ErrorCode.LIMIT_EXCEEDED)
        assert sorted(channels) == [("a", 1), ("b", 1)]


async def test_a_freed_subscription_slot_can_be_used_again() -> None:
    settings = Settings(limits=LimitSettings(max_subscriptions=1))
    async with running_hub(settings) as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "a")
        await running.unsubscribe(subscriber, "a")
        received(subscriber)
        assert (await running.subscribe(subscriber, "b")).channel == "b"


async def test_a_subscriber_is_idle_only_while_it_has_no_subscription() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        assert subscriber.idle_since is not None
        await running.subscribe(subscriber, "a")
        assert subscriber.idle_since is None
        await running.unsubscribe(subscriber, "a")
        assert subscriber.idle_since is not None


# --- publications -------------------------------------------------------------------------------


async def test_a_publication_is_encoded_once_per_encoding_and_shared_by_every_subscriber() -> None:
    async with running_hub() as running:
        json_subscribers = [client(f"j{i}", Encoding.JSON) for i in range(3)]
        msgpack_subscribers = [client(f"m{i}", Encoding.MSGPACK) for i in range(3)]
        for subscriber in json_subscribers + msgpack_subscribers:
            await running.subscribe(subscriber, "news")
        encoded = (JSON.messages_encoded, MSGPACK.messages_encoded)
        await running.publish("news", {"text": "hello"})
        await running.barrier()
        assert (JSON.messages_encoded, MSGPACK.messages_encoded) == (
            encoded[0] + 1,
            encoded[1] + 1,
        )
        for group in (json_subscribers, msgpack_subscribers):
            queues = [subscriber.outbox.drain() for subscriber in group]
            assert all(len(queue) == 1 for queue in queues)
            frame = queues[0][0]
            # The very same Frame object, not equal copies.
            assert all(queue[0] is frame for queue in queues)
            assert (frame.channel, frame.offset) == ("news", 1)
            codec = group[0].codec()
            message = only(codec.decode_server(frame.data), Publication)
            assert codec.decode_payload(message.data) == {"text": "hello"}


async def test_a_json_payload_is_converted_once_for_every_messagepack_subscriber() -> None:
    async with running_hub() as running:
        subscribers = [client(f"m{i}", Encoding.MSGPACK) for i in range(3)]
        for subscriber in subscribers:
            await running.subscribe(subscriber, "news")
        converted = (JSON.payloads_converted, MSGPACK.payloads_converted)
        await running.publish("news", {"n": [1, 2.5, "x", None]})
        await running.barrier()
        assert (JSON.payloads_converted, MSGPACK.payloads_converted) == (
            converted[0],
            converted[1] + 1,
        )
        for subscriber in subscribers:
            (delivered,) = publications(subscriber)
            assert payload_of(subscriber, delivered) == {"n": [1, 2.5, "x", None]}


async def test_a_payload_the_reader_already_converted_is_not_converted_again() -> None:
    async with running_hub() as running:
        subscriber = client("j", Encoding.JSON)
        await running.subscribe(subscriber, "news")
        converted = JSON.payloads_converted
        options = SETTINGS.default_namespace
        await running.backplane.publish(
            "news",
            raw({"k": 1}, MSGPACK),
            MSGPACK,
            "m",
            options,
            converted={Encoding.JSON: raw({"k": 1})},
        )
        await running.barrier()
        assert JSON.payloads_converted == converted
        (delivered,) = publications(subscriber)
        assert payload_of(subscriber, delivered) == {"k": 1}


async def test_a_publication_carries_its_publishers_id_in_from() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "news")
        await running.publish("news", 1, publisher="pub")
        await running.barrier()
        (delivered,) = publications(subscriber)
        assert delivered.from_ == "pub"


async def test_an_http_api_publication_is_delivered_with_from_null() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        subscribed = await running.subscribe(subscriber, "news")
        head = await running.publish("news", {"a": 1}, publisher=None)
        assert head == Head(subscribed.epoch, 1)
        await running.barrier()
        (frame,) = subscriber.outbox.drain()
        assert only(JSON.decode_server(frame.data), Publication).from_ is None
        # Present and null on the wire, not absent (docs/protocol.md §1).
        assert b'"from":null' in frame.data


async def test_a_publisher_subscribed_to_its_channel_gets_its_own_publication() -> None:
    async with running_hub() as running:
        publisher = client("pub")
        await running.subscribe(publisher, "news")
        await running.publish("news", 1, publisher="pub")
        await running.barrier()
        assert offsets(publications(publisher)) == [1]


async def test_statistics_count_publications_and_deliveries() -> None:
    async with running_hub() as running:
        for name in ["a", "b"]:
            await running.subscribe(client(name), "news")
        await running.publish("news", 1)
        await running.publish("nobody-listens", 1)
        await running.barrier()
        stats = running.hub.statistics()
        assert (stats.publications, stats.deliveries, stats.gaps) == (1, 2, 0)
        assert stats.mailbox_queued == 0
        assert stats.mailbox_size == SETTINGS.hub.mailbox_size
