"""Publications the hub cannot encode: the hub keeps serving, and the subscriber is told."""

from __future__ import annotations

import pytest

from broker.hub import (
    SubscribeCommand,
)
from protocol import (
    Encoding,
    Error,
    Gap,
    HistoryResult,
    Publication,
    StreamPosition,
    Subscribe,
)
from tests.broker.hub_helpers import (
    HUGE,
    answer,
    client,
    payload_of,
    publications,
    received,
    running_hub,
)

pytestmark = pytest.mark.anyio


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
