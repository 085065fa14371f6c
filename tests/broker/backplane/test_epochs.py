"""An epoch changes only when history is lost (docs/protocol.md §1), over both backplanes: a channel
of a history namespace keeps its epoch while it is empty and nobody is subscribed, so a client
that left it at offset 0 recovers everything published since."""

from __future__ import annotations

import pytest

from broker.settings import BackplaneSettings, NamespaceSettings
from protocol import Encoding, StreamPosition
from tests.broker.backplane.test_behaviour import (
    backplane,
    clients,
    history,
    publish,
    serve,
    subscribe,
)
from tests.conftest import wait_until
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

__all__ = ["backplane"]  # the fixture, over both backplanes


async def test_an_empty_channel_keeps_its_epoch_after_its_last_subscriber_left(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10)) as running,
        clients(running.url(), Encoding.JSON) as (pub,),
    ):
        async with open_client(running.url()) as leaver:
            first = await subscribe(leaver, "h:quiet")
            assert first.offset == 0
        # It left: nobody on the channel now, and nothing in its history.
        await wait_until(lambda: running.broker.hub.subscriber_count("h:quiet") == 0)
        replies = [await publish(pub, "h:quiet", i, i) for i in range(1, 4)]
        assert {r.epoch for r in replies} == {first.epoch}
        async with open_client(running.url(), Encoding.MSGPACK) as back:
            since = StreamPosition(offset=0, epoch=first.epoch)
            reply = await subscribe(back, "h:quiet", since=since)
            assert (reply.recovered, reply.epoch, reply.offset) == (True, first.epoch, 3)
            assert [(p.offset, back.data(p.data)) for p in reply.publications] == [
                (1, 1),
                (2, 2),
                (3, 3),
            ]


async def test_an_empty_channel_read_by_history_keeps_the_epoch_it_answered(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10)) as running,
        clients(running.url(), Encoding.JSON) as (client,),
    ):
        empty = await history(client, "h:never")
        assert (empty.offset, empty.publications) == (0, [])
        published = await publish(client, "h:never", "first", 1)
        assert (published.offset, published.epoch) == (1, empty.epoch)
