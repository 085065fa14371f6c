"""The outbox's side of the direct path: ``Outbox._direct``, the one attribute ``offer`` reads
instead of eight, says what the outbox's whole state says, whatever happens to it; and a
publication goes straight to the socket exactly when it should."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.flusher import FlushScheduler
from broker.settings import OverflowPolicy
from protocol import Frame
from tests.broker.test_outbox import DISCONNECT, DROP_OLDEST, control, outbox, publication


class Socket:
    """Where the outbox's direct path writes (a ``DirectWriter``): takes a frame at once while
    ``open``, as ``TransportLink.write_now`` does while the socket is below its mark."""

    def __init__(self) -> None:
        self.open = True
        self.frames: list[Frame] = []

    def write_now(self, frame: Frame) -> bool:
        if self.open:
            self.frames.append(frame)
        return self.open


#: What may happen to an outbox between two checks of its flag.
OPERATIONS = (
    "publication",
    "reply",
    "big publication",
    "socket pushes back",
    "socket drains",
    "writer attached",
    "writer detached",
    "writer waits",
    "flush",
    "writer drains",
    "take skipped",
    "interrupt",
    "overflow",
    "close",
    "next turn",
    "loop turn",
)


async def run_operations(operations: list[str], policy: OverflowPolicy, interval: float) -> None:
    box = outbox(max_messages=4, max_bytes=100, policy=policy)
    flusher = FlushScheduler(interval)
    socket = Socket()
    box.flusher = flusher

    def write_through() -> bool:
        if not socket.open:
            return False
        socket.frames.extend(box.drain())
        return True

    box.write_through = write_through
    # As a connection starts: the writer attached, then waiting for frames.
    box.writer = socket
    box.call_when_ready(lambda: None, None)
    offset = 0
    try:
        for operation in operations:
            if operation in ("publication", "big publication"):
                offset += 1
                box.offer(publication("a", offset, 150 if operation == "big publication" else 30))
            elif operation == "reply":
                box.offer(control(10))
            elif operation == "socket pushes back":
                socket.open = False
            elif operation == "socket drains":
                socket.open = True
            elif operation == "writer attached":
                box.writer = socket
            elif operation == "writer detached":
                box.writer = None
            elif operation == "writer waits":
                box.call_when_ready(lambda: None, None)
            elif operation == "flush":
                box.flush()
            elif operation == "writer drains":
                box.drain()
            elif operation == "take skipped":
                box.take_skipped()
            elif operation == "interrupt":
                box.interrupt()
            elif operation == "overflow":
                box.overflow()
            elif operation == "close":
                box.close()
            elif operation == "next turn":
                flusher._next_turn()
            else:
                await asyncio.sleep(0)  # the flusher's flush after the turn, ready callbacks
            # The flag offer reads is what the whole condition says, after every operation.
            assert box._direct is box._direct_now(), operation
    finally:
        flusher.close()
    assert box._direct is box._direct_now()


@settings(max_examples=500, deadline=None)
@given(
    operations=st.lists(st.sampled_from(OPERATIONS), max_size=40),
    policy=st.sampled_from([DISCONNECT, DROP_OLDEST]),
    interval=st.sampled_from([0.0, 0.005]),
)
def test_the_direct_path_flag_always_says_what_the_outbox_state_says(
    operations: list[str], policy: OverflowPolicy, interval: float
) -> None:
    """``offer`` reads one attribute (``_direct``) for the outbox's side of the direct path,
    instead of eight: whatever happens to the outbox, it says what they would."""
    asyncio.run(run_operations(operations, policy, interval))


@pytest.mark.anyio
async def test_a_publication_goes_straight_out_once_the_writer_waits_and_not_while_it_works() -> (
    None
):
    box = outbox()
    box.flusher = flusher = FlushScheduler(0.0)
    socket = Socket()
    box.writer = socket
    box.write_through = lambda: False
    try:
        assert box.offer(publication("a", 1))  # the writer is not waiting yet: queued
        assert len(box) == 1 and not socket.frames
        box.drain()
        box.call_when_ready(lambda: None, None)
        assert box.offer(publication("a", 2))  # straight out
        assert len(box) == 0 and [f.offset for f in socket.frames] == [2]
        flusher._next_turn()
        box.interrupt()
        assert box.offer(publication("a", 3))  # the writer is woken: queued
        assert len(box) == 1 and len(socket.frames) == 1
    finally:
        flusher.close()
