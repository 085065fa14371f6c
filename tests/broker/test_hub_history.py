"""The hub's history and recovery (docs/protocol.md §1): what a channel keeps, what a
subscriber recovers, and epochs."""

from __future__ import annotations

import anyio
import pytest

from broker.hub import (
    DetachCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from broker.settings import (
    NamespaceSettings,
    Settings,
)
from protocol import (
    Error,
    ErrorCode,
    HistoryResult,
    Publication,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.broker.hub_helpers import (
    answer,
    client,
    error_of,
    offsets,
    only,
    payload_of,
    publications,
    received,
    running_hub,
)

pytestmark = pytest.mark.anyio


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
