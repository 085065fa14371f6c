"""Who is on a channel: presence, join and leave, detaching and slow consumers, and the chat
room of /ws/chat (docs/protocol.md §3)."""

from __future__ import annotations

import pytest

from broker.hub import (
    ChatJoinCommand,
    ChatSayCommand,
    DetachCommand,
    SubscribeCommand,
    Subscriber,
)
from protocol import (
    ClientInfo,
    Encoding,
    ErrorCode,
    Join,
    Leave,
    PresenceResult,
    Subscribe,
    Unsubscribed,
)
from tests.broker.hub_helpers import (
    client,
    error_of,
    offsets,
    only,
    publications,
    received,
    running_hub,
)

pytestmark = pytest.mark.anyio


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
