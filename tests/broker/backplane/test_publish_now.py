"""``publish_now``: a publish done at once, without a coroutine on the way to the hub, when it can
be (the memory backplane, room in the hub's mailbox); otherwise nothing is done and the awaited
``publish_submit`` takes over, keeping the order of offsets and the mailbox's bound: a publish
waiting for room is never overtaken by a later one."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest

from broker.backplane import Head, LivePublication
from broker.backplane.redis import RedisBackplane
from broker.runtime import Broker
from broker.settings import BackplaneSettings, HubSettings, NamespaceSettings, Settings
from protocol import JSON, Publication, Publish, Published, Subscribe, Subscribed, namespace_of
from tests.conftest import TIMEOUT, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

MAILBOX = 2
SETTINGS = Settings(
    hub=HubSettings(mailbox_size=MAILBOX),
    namespaces={"h": NamespaceSettings(history_size=10)},
)
CHANNEL = "h:news"


def data(n: int) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(n))


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A broker whose backplane runs and whose hub does not: what reaches the hub stays in its
    mailbox (read with ``drain``), which fills after ``MAILBOX`` publications."""
    broker = Broker(SETTINGS)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            run = functools.partial(broker.backplane.run, deliver_now=broker.hub.offer)
            await tasks.start(run, broker.control.deliver)
            broker.backplane.watch(CHANNEL)
            yield broker
            tasks.cancel_scope.cancel()


def drain(broker: Broker) -> list[int]:
    """The offsets of the live publications in the hub's mailbox, taken as the hub would."""
    offsets = []
    mailbox = broker.hub._mailbox
    while (command := mailbox.poll()) is not None:
        assert isinstance(command, LivePublication)
        offsets.append(command.publication.offset)
    return offsets


def publish_now(broker: Broker, n: int, key: str | None = None) -> Head | None:
    options = SETTINGS.namespace(namespace_of(CHANNEL))
    return broker.backplane.publish_now(CHANNEL, data(n), JSON, "alice", options, None, key)


async def test_a_publish_with_room_in_the_mailbox_is_done_at_once(broker: Broker) -> None:
    heads = [publish_now(broker, n) for n in range(MAILBOX)]
    assert [head.offset for head in heads if head is not None] == [1, 2]
    assert drain(broker) == [1, 2]
    page = await broker.backplane.latest(CHANNEL, None, SETTINGS.namespace(CHANNEL))
    assert [p.offset for p in page.publications] == [1, 2]


async def test_a_publish_that_would_wait_is_not_done_at_all(broker: Broker) -> None:
    for n in range(MAILBOX):
        assert publish_now(broker, n) is not None
    # The mailbox is full: nothing is recorded, not the offset, not the idempotency key.
    assert publish_now(broker, 9, key="k") is None
    options = SETTINGS.namespace(CHANNEL)
    page = await broker.backplane.latest(CHANNEL, None, options)
    assert page.head.offset == MAILBOX
    assert len(page.publications) == MAILBOX
    assert drain(broker) == [1, 2]
    head = publish_now(broker, 9, key="k")
    assert head is not None and head.offset == 3
    assert publish_now(broker, 9, key="k") == head  # the key is known now: not published again
    assert drain(broker) == [3]


async def test_a_publish_waiting_for_room_is_not_overtaken(broker: Broker) -> None:
    for n in range(MAILBOX):
        assert publish_now(broker, n) is not None
    heads: list[int] = []

    async def publish(n: int) -> None:
        # As ``/v1/ws`` does: at once if it can be, else the awaited way.
        head = publish_now(broker, n)
        if head is None:
            outcome = await broker.publish_submit(CHANNEL, data(n), JSON, "alice")
            assert isinstance(outcome, Head)
            head = outcome
        heads.append(head.offset)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publish, 3)
        await anyio.wait_all_tasks_blocked()
        # The first waits for room; the mailbox then takes one item: the waiting publish moves
        # in, and the mailbox is full again, so a later publish cannot pass it.
        assert broker.hub._mailbox.poll() is not None
        tasks.start_soon(publish, 4)
        await anyio.wait_all_tasks_blocked()
        assert publish_now(broker, 5) is None
        offsets: list[int] = []
        while len(offsets) < 3:
            offsets += drain(broker)
            await anyio.wait_all_tasks_blocked()
    assert offsets == [2, 3, 4]
    assert heads == [3, 4]


async def test_redis_never_publishes_at_once() -> None:
    backplane = RedisBackplane(BackplaneSettings())
    options = SETTINGS.namespace(CHANNEL)
    assert backplane.publish_now(CHANNEL, data(1), JSON, None, options) is None


async def test_bursts_of_publishes_through_a_one_command_mailbox_keep_their_order() -> None:
    # Over the wire: two publishers' bursts through a mailbox of one command, so that most
    # publishes find it full and wait (the awaited path) while others go at once.
    count = 40
    async with (
        serve_broker(Settings(hub=HubSettings(mailbox_size=1))) as running,
        open_client(running.url()) as sub,
        open_client(running.url()) as first,
        open_client(running.url()) as second,
    ):
        await sub.send(Subscribe(id=1, channel="burst"))
        await sub.expect(Subscribed)
        for publisher in (first, second):
            for n in range(1, count + 1):
                await publisher.send(Publish(id=n, channel="burst", data=data(n)))
        replies = {}
        for publisher in (first, second):
            published = [await publisher.expect(Published) for _ in range(count)]
            assert [p.id for p in published] == list(range(1, count + 1))
            offsets = [p.offset for p in published]
            assert offsets == sorted(offsets)
            replies[publisher] = offsets
        received = [await sub.expect(Publication) for _ in range(2 * count)]
        assert [p.offset for p in received] == list(range(1, 2 * count + 1))
        assert sorted(replies[first] + replies[second]) == list(range(1, 2 * count + 1))
