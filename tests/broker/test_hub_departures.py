"""Mass departures: a room whose members are all gone at once is emptied without recursion.

Detaching a chat member broadcasts its departure to the others; a member whose outbox refuses
that frame (it is closed: the connection ended) is detached in turn, which broadcasts again.
With thousands of members gone at once (a server shutdown, a network partition), that chain is
as long as the room.
"""

from __future__ import annotations

import pytest

from broker.hub import CHAT_LEFT, ChatJoinCommand, DetachCommand, SubscribeCommand
from protocol import Subscribe
from tests.broker.hub_helpers import client, running_hub

pytestmark = pytest.mark.anyio

ROOM_SIZE = 3000  # well past Python's default recursion limit of 1000


async def test_a_room_whose_members_all_left_at_once_is_emptied_by_one_detach() -> None:
    async with running_hub() as running:
        members = [client(f"m{i}", None) for i in range(ROOM_SIZE)]
        for member in members:
            await running.hub.submit(ChatJoinCommand(member))
        await running.barrier()
        for member in members:
            member.outbox.close()  # every connection ended before the hub heard of it

        await running.hub.submit(DetachCommand(members[0]))
        await running.barrier()

        assert all(member.detached for member in members)
        assert running.hub.statistics().channels == 0


async def test_members_still_connected_hear_each_departure_once() -> None:
    async with running_hub() as running:
        gone = [client(f"gone{i}", None) for i in range(ROOM_SIZE)]
        staying = client("staying", None, max_messages=10 * ROOM_SIZE)
        for member in [*gone, staying]:
            await running.hub.submit(ChatJoinCommand(member))
        await running.barrier()
        staying.outbox.drain()
        for member in gone:
            member.outbox.close()

        await running.hub.submit(DetachCommand(gone[0]))
        await running.barrier()

        left = [frame.data for frame in staying.outbox.drain()]
        assert len(left) == ROOM_SIZE
        assert set(left) == {CHAT_LEFT}
        assert not staying.detached


async def test_a_subscriber_without_channels_is_detached_at_once() -> None:
    async with running_hub() as running:
        subscriber = client("never-subscribed")
        assert running.hub.detach_unsubscribed(subscriber)
        assert subscriber.detached
        assert subscriber.outbox.closed
        # A subscribe still in the mailbox (submitted before the connection ended) finds it
        # detached, as it would behind a DetachCommand: no channel is left holding it.
        await running.hub.submit(SubscribeCommand(subscriber, Subscribe(id=1, channel="news")))
        assert await running.barrier() == []
        assert not subscriber.channels


async def test_a_subscriber_with_a_channel_goes_through_the_mailbox() -> None:
    async with running_hub() as running:
        member = client("member", None)
        await running.hub.submit(ChatJoinCommand(member))
        await running.barrier()
        assert not running.hub.detach_unsubscribed(member)
        assert not member.detached
        member.outbox.close()
        await running.hub.submit(DetachCommand(member))
        assert await running.barrier() == []
        assert member.detached
