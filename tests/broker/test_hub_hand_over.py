"""A command sent to an idle hub is handled at once, on the sender's stack, in the hub's own
context (``Hub._hand_over``); a busy hub, or one with commands queued, takes it in turn."""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import pytest

from broker.hub import ChannelsQuery, Reply
from tests.broker.hub_helpers import client, publications, running_hub

pytestmark = pytest.mark.anyio

#: Which context a command was handled in: the hub's has the default.
WHERE: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="hub")


class Probe(Reply[Any]):
    """A reply that notes the context the hub answered it in."""

    __slots__ = ("where",)

    def __init__(self) -> None:
        super().__init__()
        self.where: str | None = None

    def set(self, value: Any) -> None:
        self.where = WHERE.get()
        super().set(value)


async def test_an_idle_hub_handles_a_command_before_submit_returns_in_its_own_context() -> None:
    async with running_hub() as running:
        subscriber = client("s")
        await running.subscribe(subscriber, "c")
        publications(subscriber)
        WHERE.set("sender")
        probe = Probe()
        await running.hub.submit(ChannelsQuery(probe))
        # Answered already, without a turn of the loop, and not in the sender's context (the
        # hub's log lines must not carry the sending connection's ``client``).
        assert probe.where == "hub"
        assert await probe.wait() == [("c", 1)]
        assert WHERE.get() == "sender"


async def test_commands_queued_before_are_handled_first_and_in_order() -> None:
    async with running_hub() as running:
        first, second = Probe(), Probe()
        running.hub.submit_nowait(ChannelsQuery(first))  # handed over: the hub was idle
        # Queue one without handing it over, as a burst that found the hub busy would.
        running.hub._mailbox.send_nowait(ChannelsQuery(second))
        third = Probe()
        await running.hub.submit(ChannelsQuery(third))
        # The hub was not idle (one queued): the third waits its turn, after the second.
        assert first.where == "hub" and second.where is None and third.where is None
        with anyio.fail_after(5):
            await third.wait()
        assert second.where == "hub" and third.where == "hub"


async def test_a_command_sent_while_one_is_handed_over_is_queued_not_nested() -> None:
    async with running_hub() as running:
        order: list[str] = []

        class Nested(Probe):
            def set(self, value: Any) -> None:
                order.append("outer begins")
                running.hub.submit_nowait(ChannelsQuery(inner))
                order.append("outer ends")
                super().set(value)

        class Inner(Probe):
            def set(self, value: Any) -> None:
                order.append("inner")
                super().set(value)

        inner = Inner()
        await running.hub.submit(ChannelsQuery(Nested()))
        with anyio.fail_after(5):
            await inner.wait()
        assert order == ["outer begins", "outer ends", "inner"]


async def test_a_publication_to_an_idle_hub_is_fanned_out_before_publish_returns() -> None:
    async with running_hub() as running:
        subscribers = [client(f"s{i}") for i in range(3)]
        for subscriber in subscribers:
            await running.subscribe(subscriber, "news")
            publications(subscriber)
        await running.publish("news", {"n": 1})
        for subscriber in subscribers:
            assert [p.offset for p in publications(subscriber)] == [1]
