"""The hub actor without any server: what each command puts in which outbox.

The hub runs with the in-memory backplane, as in a one-process broker: publications go into the
backplane, which assigns offsets and epochs, keeps history and presence, and hands each
publication to the hub through its mailbox.

To know that the hub handled everything submitted so far, a test submits a ``ChannelsQuery`` and
waits for its reply (the mailbox is one ordered stream). Reads from the backplane (history,
presence, recovery) run in tasks of the hub, so their answers are awaited on the outbox itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from broker.backplane import Head, MemoryBackplane
from broker.hub import (
    ChannelsQuery,
    ChatJoinCommand,
    ChatSayCommand,
    DetachCommand,
    HistoryCommand,
    Hub,
    PresenceCommand,
    Reply,
    SubscribeCommand,
    Subscriber,
    UnsubscribeCommand,
)
from broker.outbox import Outbox
from broker.settings import (
    LimitSettings,
    NamespaceSettings,
    OverflowPolicy,
    Settings,
)
from protocol import (
    JSON,
    MSGPACK,
    ClientInfo,
    Codec,
    Encoding,
    Error,
    ErrorCode,
    Gap,
    History,
    HistoryResult,
    Join,
    Leave,
    Presence,
    PresenceResult,
    Publication,
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    namespace_of,
)
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.anyio

M = TypeVar("M")

#: Namespaces with the options the tests need; other channels use the defaults (none of them).
SETTINGS = Settings(
    namespaces={
        "h": NamespaceSettings(history_size=3),
        "p": NamespaceSettings(presence=True),
        "jl": NamespaceSettings(join_leave=True),
    }
)

#: Valid JSON that MessagePack cannot carry: its integers are 64-bit at most.
HUGE = 2**70


@dataclass
class Running:
    hub: Hub
    backplane: MemoryBackplane
    settings: Settings

    async def publish(
        self, channel: str, data: Any, publisher: str | None = None, codec: Codec = JSON
    ) -> Head:
        """Publish ``data`` as a client (``publisher``) or the HTTP API (None) does."""
        options = self.settings.namespace(namespace_of(channel))
        return await self.backplane.publish(channel, raw(data, codec), codec, publisher, options)

    async def barrier(self) -> list[tuple[str, int]]:
        """Wait until the hub handled every command submitted so far; its channels and counts."""
        reply: Reply[list[tuple[str, int]]] = Reply()
        await self.hub.submit(ChannelsQuery(reply))
        return await reply.wait()

    async def subscribe(
        self, subscriber: Subscriber, channel: str, since: StreamPosition | None = None
    ) -> Subscribed:
        """Subscribe and return the ``subscribed`` reply (waiting for a recovery read)."""
        request = Subscribe(id=1, channel=channel, since=since)
        await self.hub.submit(SubscribeCommand(subscriber, request))
        return only(await answer(subscriber), Subscribed)

    async def unsubscribe(self, subscriber: Subscriber, channel: str) -> None:
        await self.hub.submit(UnsubscribeCommand(subscriber, Unsubscribe(id=2, channel=channel)))
        await self.barrier()

    async def history(
        self,
        subscriber: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        limit: int | None = None,
    ) -> list[ServerMessage]:
        request = History(id=5, channel=channel, since=since, limit=limit)
        await self.hub.submit(HistoryCommand(subscriber, request))
        return await answer(subscriber)

    async def history_offsets(
        self,
        subscriber: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        limit: int | None = None,
    ) -> list[int]:
        result = only(await self.history(subscriber, channel, since, limit), HistoryResult)
        return offsets(result.publications)

    async def presence(self, subscriber: Subscriber, channel: str) -> list[ServerMessage]:
        await self.hub.submit(PresenceCommand(subscriber, Presence(id=8, channel=channel)))
        return await answer(subscriber)


@asynccontextmanager
async def running_hub(settings: Settings = SETTINGS) -> AsyncIterator[Running]:
    """A hub and its backplane taking commands until the block ends, bounded by ``TIMEOUT``."""
    backplane = MemoryBackplane()
    hub = Hub(settings, backplane)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            await tg.start(backplane.run, hub.submit)
            yield Running(hub, backplane, settings)
            tg.cancel_scope.cancel()


def client(
    name: str,
    encoding: Encoding | None = Encoding.JSON,
    *,
    max_messages: int = 1000,
    user: str | None = None,
) -> Subscriber:
    outbox = Outbox(
        max_messages=max_messages, max_bytes=1024 * 1024, policy=OverflowPolicy.DISCONNECT
    )
    return Subscriber(id=name, encoding=encoding, outbox=outbox, user=user)


def raw(value: Any, codec: Codec = JSON) -> msgspec.Raw:
    """``value`` as a payload in ``codec``'s encoding, without touching the codec's counters."""
    if codec is JSON:
        return msgspec.Raw(msgspec.json.encode(value))
    return msgspec.Raw(msgspec.msgpack.encode(value))


def received(subscriber: Subscriber) -> list[ServerMessage]:
    """Every message queued for ``subscriber`` since the last call, decoded, in order."""
    codec = subscriber.codec()
    return [
        message
        for frame in subscriber.outbox.drain()
        for message in codec.decode_server(frame.data)
    ]


async def answer(subscriber: Subscriber) -> list[ServerMessage]:
    """What the hub queued for ``subscriber``, once it queued something."""
    await subscriber.outbox.wait_ready()
    return received(subscriber)


def only(messages: list[ServerMessage], kind: type[M]) -> M:
    """The one message in ``messages``, checked to be a ``kind``."""
    assert len(messages) == 1, messages
    message = messages[0]
    assert isinstance(message, kind), message
    return message


def publications(subscriber: Subscriber) -> list[Publication]:
    """The publications queued for ``subscriber``, checking that nothing else was."""
    messages = received(subscriber)
    assert all(isinstance(m, Publication) for m in messages), messages
    return [m for m in messages if isinstance(m, Publication)]


def offsets(items: list[Publication]) -> list[int]:
    return [item.offset for item in items]


def payload_of(subscriber: Subscriber, publication: Publication) -> Any:
    return subscriber.codec().decode_payload(publication.data)


def error_of(messages: list[ServerMessage]) -> tuple[int | None, str]:
    error = only(messages, Error)
    return error.id, error.code


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


# --- history ------------------------------------------------------------------------------------


async def test_history_where_the_namespace_keeps_none_is_an_error() -> None:
    async with running_hub() as running:
        await running.publish("news", 1)
        assert error_of(await running.history(client("s"), "news")) == (5, ErrorCode.BAD_REQUEST)


async def test_history_keeps_the_last_history_size_publications() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        for i in range(5):
            head = await running.publish("h:log", i)
        result = only(await running.history(subscriber, "h:log"), HistoryResult)
        assert (result.id, result.channel, result.epoch, result.offset) == (
            5,
            "h:log",
            head.epoch,
            5,
        )
        assert offsets(result.publications) == [3, 4, 5]
        assert [payload_of(subscriber, p) for p in result.publications] == [2, 3, 4]


async def test_history_since_a_position_returns_the_later_publications_up_to_limit() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        for i in range(5):
            head = await running.publish("h:log", i)
        since = StreamPosition(offset=3, epoch=head.epoch)
        assert await running.history_offsets(subscriber, "h:log", since) == [4, 5]
        since = StreamPosition(offset=2, epoch=head.epoch)
        assert await running.history_offsets(subscriber, "h:log", since, limit=2) == [3, 4]


async def test_history_since_a_position_in_a_lost_stream_returns_the_latest_publications() -> None:
    async with running_hub() as running:
        for i in range(5):
            await running.publish("h:log", i)
        since = StreamPosition(offset=1, epoch="lost")
        assert await running.history_offsets(client("s"), "h:log", since, limit=2) == [4, 5]


async def test_history_without_a_position_returns_the_latest_limit_publications() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        for i in range(5):
            await running.publish("h:log", i)
        assert await running.history_offsets(subscriber, "h:log", limit=2) == [4, 5]
        assert await running.history_offsets(subscriber, "h:log", limit=0) == []


@pytest.mark.parametrize("limit", [3, 4, 5, 6, 100])
async def test_history_with_a_limit_at_or_above_what_is_kept_returns_everything_kept(
    limit: int,
) -> None:
    async with running_hub() as running:
        for i in range(5):
            await running.publish("h:log", i)
        assert await running.history_offsets(client("s"), "h:log", limit=limit) == [3, 4, 5]


async def test_history_forgets_publications_older_than_history_ttl() -> None:
    settings = Settings(namespaces={"t": NamespaceSettings(history_size=10, history_ttl=0.05)})
    async with running_hub(settings) as running:
        subscriber = client("s")
        await running.publish("t:log", 1)
        await anyio.sleep(0.06)
        await running.publish("t:log", 2)
        assert await running.history_offsets(subscriber, "t:log") == [2]
        await anyio.sleep(0.06)
        assert await running.history_offsets(subscriber, "t:log") == []


# --- recovery (docs/protocol.md §1) ---------------------------------------------------------------


async def test_recovery_returns_exactly_the_missed_publications_then_live_ones_follow() -> None:
    async with running_hub() as running:
        watcher, returning = client("watcher"), client("returning")
        await running.subscribe(watcher, "h:room")
        first = await running.subscribe(returning, "h:room")
        await running.publish("h:room", "one")
        await running.barrier()
        (seen,) = publications(returning)
        await running.hub.submit(DetachCommand(returning))
        await running.publish("h:room", "two")
        await running.publish("h:room", "three")
        back = client("returning")
        since = StreamPosition(offset=seen.offset, epoch=first.epoch)
        await running.hub.submit(
            SubscribeCommand(back, Subscribe(id=7, channel="h:room", since=since))
        )
        # Published while the recovery read may still be in flight: held, then delivered.
        await running.publish("h:room", "four")
        messages = await answer(back)
        await running.publish("h:room", "five")
        await running.barrier()
        messages += received(back)
        subscribed = messages[0]
        assert isinstance(subscribed, Subscribed)
        assert (subscribed.id, subscribed.recovered, subscribed.epoch) == (7, True, first.epoch)
        assert [payload_of(back, p) for p in subscribed.publications][:2] == ["two", "three"]
        live = [m for m in messages[1:] if isinstance(m, Publication)]
        assert len(live) == len(messages) - 1
        # No gap, no duplicate: every offset after ``since`` exactly once, in order.
        assert offsets(subscribed.publications) + offsets(live) == [2, 3, 4, 5]
        assert subscribed.offset == offsets(subscribed.publications)[-1]


async def test_recovery_from_the_latest_offset_recovers_with_nothing_missed() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "news")
        await running.publish("news", 1)
        since = StreamPosition(offset=1, epoch=subscribed.epoch)
        recovered = await running.subscribe(client("back"), "news", since)
        assert recovered.recovered
        assert recovered.publications == []
        assert recovered.offset == 1


async def test_recovery_in_another_epoch_fails_without_publications() -> None:
    async with running_hub() as running:
        await running.subscribe(client("watcher"), "h:room")
        await running.publish("h:room", 1)
        since = StreamPosition(offset=0, epoch="another")
        reply = await running.subscribe(client("back"), "h:room", since)
        assert not reply.recovered
        assert reply.publications == []
        assert reply.offset == 1
        assert reply.epoch != "another"


async def test_recovery_from_an_offset_no_longer_retained_fails_without_publications() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "h:room")
        for i in range(5):
            await running.publish("h:room", i)
        # Kept: 3, 4, 5. From 1, publication 2 is lost; from 2, nothing is.
        since = StreamPosition(offset=1, epoch=subscribed.epoch)
        lost = await running.subscribe(client("a"), "h:room", since)
        assert not lost.recovered
        assert lost.publications == []
        assert (lost.epoch, lost.offset) == (subscribed.epoch, 5)
        since = StreamPosition(offset=2, epoch=subscribed.epoch)
        kept = await running.subscribe(client("b"), "h:room", since)
        assert kept.recovered
        assert offsets(kept.publications) == [3, 4, 5]


async def test_recovery_from_an_offset_beyond_the_latest_fails_without_publications() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "h:room")
        await running.publish("h:room", 1)
        since = StreamPosition(offset=2, epoch=subscribed.epoch)
        reply = await running.subscribe(client("back"), "h:room", since)
        assert not reply.recovered
        assert reply.publications == []


async def test_recovery_without_history_fails_once_a_publication_was_missed() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "news")
        await running.publish("news", 1)
        since = StreamPosition(offset=0, epoch=subscribed.epoch)
        reply = await running.subscribe(client("back"), "news", since)
        assert not reply.recovered
        assert reply.publications == []


async def test_a_subscribe_cancelled_by_unsubscribe_during_its_recovery_is_still_answered() -> None:
    # docs/protocol.md §1: every ``subscribe`` is answered by ``subscribed`` or ``error``.
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "h:room")
        await running.publish("h:room", 1)
        subscriber = client("s")
        since = StreamPosition(offset=0, epoch=subscribed.epoch)
        # Both are queued before the hub runs again: the unsubscribe comes before the read ends.
        running.hub.submit_nowait(
            SubscribeCommand(subscriber, Subscribe(id=1, channel="h:room", since=since))
        )
        running.hub.submit_nowait(
            UnsubscribeCommand(subscriber, Unsubscribe(id=2, channel="h:room"))
        )
        await running.barrier()
        await running.barrier()
        messages = received(subscriber)
        answered = [m for m in messages if isinstance(m, Subscribed | Error) and m.id == 1]
        assert len(answered) == 1, messages
        assert messages[-1] == Unsubscribed(id=2, channel="h:room")


async def test_a_channel_forgotten_and_recreated_gets_a_new_epoch_and_restarts_offsets() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        before = await running.subscribe(subscriber, "news")
        await running.publish("news", 1)
        await running.unsubscribe(subscriber, "news")
        assert running.hub.statistics().channels == 0
        since = StreamPosition(offset=1, epoch=before.epoch)
        after = await running.subscribe(client("t"), "news", since)
        assert after.epoch != before.epoch
        assert after.offset == 0
        assert not after.recovered


async def test_a_channel_keeps_its_epoch_while_it_has_history_but_no_subscribers() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        before = await running.subscribe(subscriber, "h:room")
        await running.publish("h:room", 1)
        await running.hub.submit(DetachCommand(subscriber))
        await running.barrier()
        assert running.hub.statistics().channels == 0
        since = StreamPosition(offset=0, epoch=before.epoch)
        after = await running.subscribe(client("t"), "h:room", since)
        assert after.epoch == before.epoch
        assert after.recovered
        assert offsets(after.publications) == [1]


# --- presence and join/leave --------------------------------------------------------------------


async def test_presence_lists_every_subscriber_of_the_channel_with_its_user() -> None:
    async with running_hub() as running:
        await running.subscribe(client("c1", user="alice"), "p:room")
        await running.subscribe(client("c2"), "p:room")
        result = only(await running.presence(client("asker"), "p:room"), PresenceResult)
        assert (result.id, result.channel) == (8, "p:room")
        assert sorted(result.clients, key=lambda info: info.client) == [
            ClientInfo(client="c1", user="alice"),
            ClientInfo(client="c2", user=None),
        ]


async def test_presence_forgets_subscribers_that_left() -> None:
    async with running_hub() as running:
        leaving, detached = client("leaving"), client("detached")
        await running.subscribe(client("staying"), "p:room")
        await running.subscribe(leaving, "p:room")
        await running.subscribe(detached, "p:room")
        await running.unsubscribe(leaving, "p:room")
        await running.hub.submit(DetachCommand(detached))
        result = only(await running.presence(client("asker"), "p:room"), PresenceResult)
        assert result.clients == [ClientInfo(client="staying", user=None)]


async def test_presence_of_a_channel_without_subscribers_is_empty() -> None:
    async with running_hub() as running:
        result = only(await running.presence(client("asker"), "p:empty"), PresenceResult)
        assert result.clients == []


async def test_presence_where_the_namespace_disables_it_is_an_error() -> None:
    async with running_hub() as running:
        await running.subscribe(client("s"), "room")
        messages = await running.presence(client("asker"), "room")
        assert error_of(messages) == (8, ErrorCode.BAD_REQUEST)


async def test_join_and_leave_reach_the_other_subscribers_but_not_the_client_itself() -> None:
    async with running_hub() as running:
        present = client("present", Encoding.MSGPACK)
        joiner = client("joiner", user="bob")
        await running.subscribe(present, "jl:room")
        await running.subscribe(joiner, "jl:room")  # checks that it got only ``subscribed``
        assert received(present) == [Join(channel="jl:room", client="joiner", user="bob")]
        await running.unsubscribe(joiner, "jl:room")
        assert received(present) == [Leave(channel="jl:room", client="joiner", user="bob")]
        assert received(joiner) == [Unsubscribed(id=2, channel="jl:room")]


async def test_a_detached_subscriber_leaves_with_a_leave_message() -> None:
    async with running_hub() as running:
        present, gone = client("present"), client("gone")
        await running.subscribe(present, "jl:room")
        await running.subscribe(gone, "jl:room")
        received(present)
        await running.hub.submit(DetachCommand(gone))
        await running.barrier()
        assert received(present) == [Leave(channel="jl:room", client="gone", user=None)]


async def test_no_join_or_leave_where_the_namespace_does_not_enable_them() -> None:
    async with running_hub() as running:
        present, other = client("present"), client("other")
        await running.subscribe(present, "room")
        await running.subscribe(other, "room")
        await running.hub.submit(DetachCommand(other))
        await running.barrier()
        assert received(present) == []


# --- detach and slow consumers ------------------------------------------------------------------


async def test_detach_removes_the_subscriber_from_every_channel_and_forgets_empty_ones() -> None:
    async with running_hub() as running:
        leaving, staying = client("leaving"), client("staying")
        for channel in ["a", "b", "c"]:
            await running.subscribe(leaving, channel)
        await running.subscribe(staying, "a")
        assert running.hub.statistics().subscriptions == 4
        assert running.hub.statistics().channels == 3
        await running.hub.submit(DetachCommand(leaving))
        assert await running.barrier() == [("a", 1)]
        assert running.hub.statistics().subscriptions == 1
        assert running.hub.statistics().channels == 1
        assert leaving.outbox.closed
        assert leaving.detached
        await running.publish("a", 1)
        await running.barrier()
        assert offsets(publications(staying)) == [1]


async def test_a_detached_subscribers_later_subscribe_is_ignored() -> None:
    async with running_hub() as running:
        gone = client("gone")
        await running.hub.submit(DetachCommand(gone))
        await running.hub.submit(SubscribeCommand(gone, Subscribe(id=1, channel="news")))
        assert await running.barrier() == []
        assert gone.channels == set()
        assert gone.outbox.drain() == []


async def test_a_subscriber_whose_outbox_overflows_is_detached_and_the_others_get_everything() -> (
    None
):
    async with running_hub() as running:
        slow = client("slow", max_messages=2)
        healthy = [client("j"), client("m", Encoding.MSGPACK)]
        for subscriber in [slow, *healthy]:
            await running.subscribe(subscriber, "news")
        # Nobody drains the slow outbox: publications 1 and 2 fill it, 3 overflows it.
        for i in range(5):
            await running.publish("news", i)
        await running.barrier()
        assert slow.outbox.overflowed
        assert slow.detached
        assert slow.channels == set()
        assert running.hub.subscriber_count("news") == 2
        for subscriber in healthy:
            assert offsets(publications(subscriber)) == [1, 2, 3, 4, 5]
        assert running.hub.statistics().deliveries == 2 + 2 * 5


# --- the chat room of /ws/chat (docs/protocol.md §3) ----------------------------------------------


def texts(subscriber: Subscriber) -> list[bytes]:
    return [frame.data for frame in subscriber.outbox.drain()]


async def test_chat_says_reach_every_member_including_the_sayer() -> None:
    async with running_hub() as running:
        members = [client(f"c{i}", None) for i in range(3)]
        for member in members:
            await running.hub.submit(ChatJoinCommand(member))
        await running.hub.submit(ChatSayCommand(members[0], "hello"))
        await running.hub.submit(ChatSayCommand(members[1], "hi"))
        await running.barrier()
        for member in members:
            assert texts(member) == [b"Client says: hello", b"Client says: hi"]


async def test_a_client_leaving_the_chat_is_announced_to_the_others() -> None:
    async with running_hub() as running:
        leaving, staying = client("leaving", None), client("staying", None)
        await running.hub.submit(ChatJoinCommand(leaving))
        await running.hub.submit(ChatJoinCommand(staying))
        await running.hub.submit(DetachCommand(leaving))
        await running.hub.submit(ChatSayCommand(staying, "anyone?"))
        await running.barrier()
        assert texts(staying) == [b"A client has left the chat.", b"Client says: anyone?"]
        assert texts(leaving) == []


async def test_chat_text_never_reaches_protocol_subscribers() -> None:
    async with running_hub() as running:
        member, subscriber = client("member", None), client("s")
        await running.hub.submit(ChatJoinCommand(member))
        await running.subscribe(subscriber, "chat")
        await running.hub.submit(ChatSayCommand(member, "hello"))
        await running.barrier()
        assert received(subscriber) == []
        assert texts(member) == [b"Client says: hello"]


# --- publications the hub cannot encode ---------------------------------------------------------


async def test_the_hub_keeps_serving_after_a_publication_fails_to_encode() -> None:
    async with running_hub() as running:
        json_subscriber, msgpack_subscriber = client("j"), client("m", Encoding.MSGPACK)
        await running.subscribe(json_subscriber, "news")
        await running.subscribe(msgpack_subscriber, "news")
        # Converting the payload for the MessagePack subscriber raises inside the hub.
        await running.publish("news", HUGE)
        await running.barrier()
        received(json_subscriber)
        received(msgpack_subscriber)
        await running.publish("news", "after")
        await running.barrier()
        for subscriber in (json_subscriber, msgpack_subscriber):
            delivered = publications(subscriber)
            assert [payload_of(subscriber, p) for p in delivered] == ["after"]


async def test_a_subscriber_that_cannot_be_sent_a_publication_is_told_of_the_gap() -> None:
    # docs/protocol.md §1: offset order, no silent hole; ``gap`` is how a skip is announced.
    async with running_hub() as running:
        msgpack_subscriber = client("m", Encoding.MSGPACK)
        await running.subscribe(client("j"), "news")
        await running.subscribe(msgpack_subscriber, "news")
        await running.publish("news", HUGE)
        await running.publish("news", "fine")
        await running.barrier()
        accounted: list[int] = []
        for message in received(msgpack_subscriber):
            match message:
                case Publication(offset=offset):
                    accounted.append(offset)
                case Gap(from_offset=first, to_offset=last):
                    accounted.extend(range(first, last + 1))
        assert accounted == [1, 2]


async def test_a_history_request_for_a_publication_that_cannot_be_encoded_is_answered() -> None:
    async with running_hub() as running:
        await running.publish("h:log", HUGE)
        asker = client("m", Encoding.MSGPACK)
        messages = await running.history(asker, "h:log")
        assert len(messages) == 1
        assert isinstance(messages[0], HistoryResult | Error)
        # And the hub is still there.
        assert await running.barrier() == []


async def test_a_recovery_that_cannot_be_encoded_leaves_no_subscription_behind() -> None:
    async with running_hub() as running:
        subscribed = await running.subscribe(client("watcher"), "h:room")
        await running.publish("h:room", HUGE)
        subscriber = client("m", Encoding.MSGPACK)
        since = StreamPosition(offset=0, epoch=subscribed.epoch)
        await running.hub.submit(
            SubscribeCommand(subscriber, Subscribe(id=1, channel="h:room", since=since))
        )
        messages = await answer(subscriber)
        await running.publish("h:room", "later")
        await running.barrier()
        messages += received(subscriber)
        if isinstance(messages[0], Error):
            # Refused: it holds no subscription, so it may subscribe again.
            assert "h:room" not in subscriber.channels
        else:
            # Accepted: it is live and gets what comes next.
            assert isinstance(messages[-1], Publication)
            assert messages[-1].offset == 2
