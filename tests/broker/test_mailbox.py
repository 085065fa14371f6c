"""The hub's ``Mailbox``: bounded, ordered, one receiver, on a real asyncio loop."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from broker.mailbox import Mailbox

pytestmark = pytest.mark.anyio


async def test_items_come_out_in_order_and_an_empty_mailbox_would_block() -> None:
    mailbox: Mailbox[int] = Mailbox(4)
    for item in range(3):
        mailbox.send_nowait(item)
    assert len(mailbox) == 3
    assert [await mailbox.receive(), mailbox.receive_nowait(), mailbox.receive_nowait()] == [
        0,
        1,
        2,
    ]
    with pytest.raises(anyio.WouldBlock):
        mailbox.receive_nowait()
    assert mailbox.poll() is None
    mailbox.send_nowait(3)
    assert mailbox.poll() == 3 and mailbox.poll() is None


async def test_an_idle_receiver_is_woken_by_the_next_item() -> None:
    mailbox: Mailbox[str] = Mailbox(4)
    receiving = asyncio.create_task(mailbox.receive())
    await asyncio.sleep(0)
    assert not receiving.done()
    mailbox.send_nowait("a")
    assert await asyncio.wait_for(receiving, 5) == "a"


async def test_a_full_mailbox_refuses_at_once_and_senders_wait_in_order() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.send_nowait(0)
    mailbox.send_nowait(1)
    with pytest.raises(anyio.WouldBlock):
        mailbox.send_nowait(2)
    first = asyncio.create_task(mailbox.send(2))
    await asyncio.sleep(0)
    second = asyncio.create_task(mailbox.send(3))
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    # Room is made, but the waiting senders come first: a newcomer still waits.
    assert mailbox.receive_nowait() == 0
    with pytest.raises(anyio.WouldBlock):
        mailbox.send_nowait(9)
    received: list[int] = []
    while len(received) < 3:
        received.append(await asyncio.wait_for(mailbox.receive(), 5))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert received == [1, 2, 3]


async def test_a_cancelled_sender_leaves_nothing_behind() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(0)
    waiting = asyncio.create_task(mailbox.send(1))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert mailbox.receive_nowait() == 0
    with pytest.raises(anyio.WouldBlock):
        mailbox.receive_nowait()
    mailbox.send_nowait(2)  # nobody waits any more: room at once
    assert mailbox.receive_nowait() == 2


async def test_close_refuses_senders_and_ends_the_receiver_after_what_is_queued() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(0)
    waiting = asyncio.create_task(mailbox.send(1))
    await asyncio.sleep(0)
    mailbox.close()
    with pytest.raises(anyio.ClosedResourceError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(anyio.ClosedResourceError):
        mailbox.send_nowait(2)
    assert await mailbox.receive() == 0
    with pytest.raises(anyio.EndOfStream):
        await mailbox.receive()


async def test_close_wakes_an_idle_receiver_with_end_of_stream() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    receiving = asyncio.create_task(mailbox.receive())
    await asyncio.sleep(0)
    mailbox.close()
    with pytest.raises(anyio.EndOfStream):
        await asyncio.wait_for(receiving, 5)
