"""The outbox: a bounded, never-blocking queue of frames, and what each overflow policy does."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.outbox import Outbox, OutboxStatistics, SkippedRange
from broker.settings import OverflowPolicy
from protocol import Frame
from tests.conftest import TIMEOUT

DISCONNECT = OverflowPolicy.DISCONNECT
DROP_OLDEST = OverflowPolicy.DROP_OLDEST


def control(size: int, tag: str = "c") -> Frame:
    """A control frame (a reply, ``welcome``): no channel, never dropped."""
    return Frame(tag.encode() * size)


def publication(channel: str, offset: int, size: int = 10) -> Frame:
    """A ``message`` frame of ``channel`` at ``offset``, ``size`` bytes long."""
    return Frame(b"p" * size, channel, offset)


def outbox(
    *, max_messages: int = 100, max_bytes: int = 10_000, policy: OverflowPolicy = DISCONNECT
) -> Outbox:
    return Outbox(max_messages=max_messages, max_bytes=max_bytes, policy=policy)


def overflow_counter(box: Outbox) -> list[None]:
    """A list that grows by one each time ``box`` calls its ``on_overflow`` callback."""
    calls: list[None] = []
    box.on_overflow = lambda: calls.append(None)
    return calls


# --- under the limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [DISCONNECT, DROP_OLDEST])
def test_offer_accepts_every_frame_while_under_both_limits(policy: OverflowPolicy) -> None:
    box = outbox(max_messages=3, max_bytes=30, policy=policy)
    frames = [control(10), publication("a", 1), publication("a", 2)]
    assert [box.offer(frame) for frame in frames] == [True, True, True]
    assert len(box) == 3
    assert not box.overflowed
    assert box.drain() == frames


def test_a_frame_that_fills_max_bytes_exactly_still_fits() -> None:
    box = outbox(max_bytes=25)
    assert box.offer(control(10))
    assert box.offer(control(15))
    assert box.statistics().queued_bytes == 25
    assert not box.overflowed


def test_statistics_count_queued_messages_and_bytes_against_the_limits() -> None:
    box = outbox(max_messages=5, max_bytes=100)
    box.offer(control(7))
    box.offer(publication("a", 1, size=13))
    assert box.statistics() == OutboxStatistics(
        queued_messages=2,
        queued_bytes=20,
        max_messages=5,
        max_bytes=100,
        dropped=0,
        overflowed=False,
    )


# --- policy DISCONNECT --------------------------------------------------------------------------


def test_disconnect_refuses_the_frame_that_would_exceed_max_messages() -> None:
    box = outbox(max_messages=2)
    assert box.offer(publication("a", 1))
    assert box.offer(publication("a", 2))
    assert not box.offer(publication("a", 3))
    assert box.overflowed
    assert [frame.offset for frame in box.drain()] == [1, 2]


def test_disconnect_refuses_the_publication_that_would_exceed_max_bytes() -> None:
    box = outbox(max_bytes=25)
    assert box.offer(publication("a", 1, size=10))
    assert box.offer(publication("a", 2, size=10))
    assert not box.offer(publication("a", 3, size=6))
    assert box.overflowed
    assert box.statistics().queued_bytes == 20


def test_a_reply_passes_the_byte_bound_while_the_outbox_is_under_it_and_not_after() -> None:
    # A recovery or history reply may be larger than the whole outbox; refusing it would drop a
    # client that reads fine and could never recover.
    box = outbox(max_bytes=25)
    assert box.offer(control(10))
    assert box.offer(control(40))
    assert not box.overflowed
    assert box.statistics().queued_bytes == 50
    assert not box.offer(control(1))
    assert box.overflowed


def test_after_an_overflow_every_offer_is_refused_even_one_that_would_fit() -> None:
    box = outbox(max_messages=1)
    box.offer(control(1))
    box.offer(control(1))
    box.drain()
    assert not box.offer(control(1))
    assert len(box) == 0


def test_on_overflow_is_called_exactly_once_however_many_frames_are_refused() -> None:
    box = outbox(max_messages=1)
    calls = overflow_counter(box)
    box.offer(control(1))
    assert calls == []
    for _ in range(3):
        box.offer(control(1))
    assert calls == [None]


def test_overflow_marks_the_client_too_slow_and_refuses_every_later_frame() -> None:
    # The hub calls it when a client falls behind some other way (a recovery that holds too
    # many publications for it), with room still left in the outbox.
    box = outbox()
    calls = overflow_counter(box)
    box.offer(control(1))
    box.overflow()
    assert box.overflowed
    assert not box.offer(control(1))
    assert calls == [None]


def test_overflow_calls_on_overflow_only_the_first_time() -> None:
    box = outbox(max_messages=1)
    calls = overflow_counter(box)
    box.overflow()
    box.overflow()
    box.offer(control(1))
    assert calls == [None]


def test_statistics_report_the_overflow() -> None:
    box = outbox(max_messages=1)
    box.offer(control(1))
    box.offer(control(1))
    stats = box.statistics()
    assert stats.overflowed
    assert stats.queued_messages == 1
    assert stats.dropped == 0


def client_view(box: Outbox) -> dict[str, list[int]]:
    """The offsets of each channel as the writer hands them to the client: gaps, then frames."""
    seen: dict[str, list[int]] = defaultdict(list)
    for skipped in box.take_skipped():
        seen[skipped.channel].extend(range(skipped.first, skipped.last + 1))
    for frame in box.drain():
        assert frame.channel is not None
        seen[frame.channel].append(frame.offset)
    return dict(seen)


# --- policy DROP_OLDEST -------------------------------------------------------------------------


def test_drop_oldest_drops_the_oldest_publications_to_stay_within_max_messages() -> None:
    box = outbox(max_messages=3, policy=DROP_OLDEST)
    assert all(box.offer(publication("a", offset)) for offset in range(1, 6))
    assert [frame.offset for frame in box.drain()] == [3, 4, 5]
    assert box.take_skipped() == [SkippedRange("a", 1, 2)]
    assert not box.overflowed


def test_drop_oldest_drops_as_many_publications_as_the_newcomer_needs_bytes() -> None:
    box = outbox(max_bytes=30, policy=DROP_OLDEST)
    for offset in (1, 2, 3):
        box.offer(publication("a", offset, size=10))
    assert box.offer(publication("a", 4, size=25))
    assert [frame.offset for frame in box.drain()] == [4]
    assert box.take_skipped() == [SkippedRange("a", 1, 3)]


def test_take_skipped_gives_one_contiguous_range_per_channel() -> None:
    box = outbox(max_messages=4, policy=DROP_OLDEST)
    for frame in [
        publication("a", 1),
        publication("b", 7),
        publication("a", 2),
        publication("b", 8),
    ]:
        box.offer(frame)
    for offset in range(1, 5):
        box.offer(publication("c", offset))
    ranges = sorted(box.take_skipped(), key=lambda skipped: skipped.channel)
    assert ranges == [SkippedRange("a", 1, 2), SkippedRange("b", 7, 8)]
    assert [(frame.channel, frame.offset) for frame in box.drain()] == [
        ("c", 1),
        ("c", 2),
        ("c", 3),
        ("c", 4),
    ]


def test_take_skipped_reports_each_dropped_publication_only_once() -> None:
    box = outbox(max_messages=1, policy=DROP_OLDEST)
    box.offer(publication("a", 1))
    box.offer(publication("a", 2))
    assert box.take_skipped() == [SkippedRange("a", 1, 1)]
    assert box.take_skipped() == []
    box.offer(publication("a", 3))
    assert box.take_skipped() == [SkippedRange("a", 2, 2)]


def test_statistics_count_the_dropped_publications() -> None:
    box = outbox(max_messages=2, policy=DROP_OLDEST)
    for offset in range(1, 6):
        box.offer(publication("a", offset))
    assert box.statistics().dropped == 3
    assert not box.statistics().overflowed


def test_control_frames_are_never_dropped_and_move_to_the_front_in_their_order() -> None:
    box = outbox(max_bytes=32, policy=DROP_OLDEST)
    first, second = control(1, "x"), control(1, "y")
    for frame in [
        publication("a", 1),
        first,
        publication("a", 2),
        second,
        publication("a", 3),
    ]:
        assert box.offer(frame)
    # 32 bytes queued; the newcomer needs 20 more: a1 and a2 go, the control frames stay.
    assert box.offer(publication("a", 4, size=20))
    assert box.drain() == [first, second, publication("a", 3), publication("a", 4, size=20)]
    assert box.take_skipped() == [SkippedRange("a", 1, 2)]


def test_a_control_frame_at_the_front_does_not_stop_drop_oldest_from_making_room_by_count() -> None:
    # A ``subscribed`` reply followed by a burst of publications: the publications behind the
    # reply are the ones to drop, the client is not to be disconnected.
    box = outbox(max_messages=3, policy=DROP_OLDEST)
    reply = control(10)
    for frame in [reply, publication("a", 1), publication("a", 2)]:
        box.offer(frame)
    assert box.offer(publication("a", 3))
    assert not box.overflowed
    assert box.drain() == [reply, publication("a", 2), publication("a", 3)]
    assert box.take_skipped() == [SkippedRange("a", 1, 1)]


def test_a_control_frame_among_the_oldest_does_not_stop_drop_oldest_from_making_room_by_bytes() -> (
    None
):
    box = outbox(max_bytes=50, policy=DROP_OLDEST)
    first, second = control(10, "x"), control(10, "y")
    for frame in [publication("a", 1), first, publication("a", 2), second]:
        box.offer(frame)
    # 40 bytes queued; the 30-byte newcomer needs a1 and a2 (20 bytes) gone.
    assert box.offer(publication("a", 3, size=30))
    assert not box.overflowed
    assert box.drain() == [first, second, publication("a", 3, size=30)]
    assert box.take_skipped() == [SkippedRange("a", 1, 2)]


def test_a_publication_larger_than_max_bytes_is_skipped_itself_and_never_queued() -> None:
    box = outbox(max_bytes=30, policy=DROP_OLDEST)
    box.offer(publication("b", 1))
    assert box.offer(publication("a", 1, size=31))
    assert not box.overflowed
    assert box.take_skipped() == [SkippedRange("a", 1, 1)]
    assert box.statistics().queued_bytes <= 30
    assert box.drain() == [publication("b", 1)]


def test_a_skipped_oversized_publication_is_not_reported_before_older_ones_of_its_channel() -> None:
    # The writer sends the gaps first, then the queued frames (broker/connection.py): the gap for
    # offset 2 must not reach the client ahead of offset 1 (docs/protocol.md §1: offset order).
    box = outbox(max_bytes=30, policy=DROP_OLDEST)
    box.offer(publication("a", 1))
    box.offer(publication("a", 2, size=31))
    assert client_view(box) == {"a": [1, 2]}


def test_a_control_frame_arriving_when_the_bytes_are_used_up_overflows_drop_oldest() -> None:
    box = outbox(max_bytes=30, policy=DROP_OLDEST)
    calls = overflow_counter(box)
    box.offer(control(31))
    assert not box.offer(control(1))
    assert box.overflowed
    assert calls == [None]


def test_control_frames_alone_overflow_drop_oldest_like_disconnect() -> None:
    box = outbox(max_messages=2, policy=DROP_OLDEST)
    calls = overflow_counter(box)
    first, second = control(1, "x"), control(1, "y")
    assert box.offer(first)
    assert box.offer(second)
    assert not box.offer(control(1, "z"))
    assert box.overflowed
    assert not box.offer(publication("a", 1))
    assert calls == [None]
    assert box.drain() == [first, second]
    assert box.take_skipped() == []


def test_a_publication_meeting_an_outbox_full_of_control_frames_overflows_it() -> None:
    box = outbox(max_messages=2, policy=DROP_OLDEST)
    box.offer(control(1))
    box.offer(control(1))
    assert not box.offer(publication("a", 1))
    assert box.overflowed
    assert box.statistics().dropped == 0


# --- drain and close ----------------------------------------------------------------------------


def test_drain_returns_every_frame_oldest_first_and_leaves_the_outbox_empty() -> None:
    box = outbox(max_messages=3, max_bytes=30)
    frames = [control(10, "x"), publication("a", 1), control(10, "y")]
    for frame in frames:
        box.offer(frame)
    assert box.drain() == frames
    assert len(box) == 0
    assert box.drain() == []
    stats = box.statistics()
    assert (stats.queued_messages, stats.queued_bytes) == (0, 0)


def test_a_drained_outbox_takes_frames_up_to_its_limits_again() -> None:
    box = outbox(max_messages=2, max_bytes=20)
    box.offer(control(10))
    box.offer(control(10))
    box.drain()
    assert box.offer(control(10))
    assert box.offer(control(10))
    assert not box.overflowed


def test_close_refuses_every_later_frame_and_releases_the_queued_ones() -> None:
    box = outbox(max_messages=2, policy=DROP_OLDEST)
    calls = overflow_counter(box)
    box.offer(publication("a", 1))
    box.offer(publication("a", 2))
    box.offer(publication("a", 3))
    box.close()
    assert box.closed
    assert not box.offer(control(1))
    assert not box.offer(publication("a", 4))
    assert box.drain() == []
    assert box.take_skipped() == []
    assert box.statistics().queued_bytes == 0
    # Closing is not overflowing: the writer must not report a slow consumer.
    assert not box.overflowed
    assert calls == []


def test_close_is_idempotent() -> None:
    box = outbox()
    box.close()
    box.close()
    assert box.closed
    assert not box.offer(control(1))


# --- wait_ready (anyio) -------------------------------------------------------------------------


async def does_not_return_soon(wait: Callable[[], Awaitable[None]]) -> bool:
    """Whether ``wait()`` is still waiting after 50 ms."""
    with anyio.move_on_after(0.05) as scope:
        await wait()
    return scope.cancelled_caught


async def returns_once_woken(box: Outbox, wake: Callable[[], object]) -> None:
    """``box.wait_ready()`` blocks until ``wake()`` is called, then returns."""
    returned = anyio.Event()

    async def waiter() -> None:
        await box.wait_ready()
        returned.set()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not returned.is_set()
            wake()
            await returned.wait()


@pytest.mark.anyio
async def test_wait_ready_blocks_while_the_outbox_is_empty() -> None:
    box = outbox()
    assert await does_not_return_soon(box.wait_ready)


@pytest.mark.anyio
async def test_wait_ready_returns_at_once_when_frames_are_queued() -> None:
    box = outbox()
    box.offer(control(1))
    with anyio.fail_after(TIMEOUT):
        await box.wait_ready()


@pytest.mark.anyio
async def test_wait_ready_returns_when_a_frame_arrives() -> None:
    box = outbox()
    await returns_once_woken(box, lambda: box.offer(control(1)))


@pytest.mark.anyio
async def test_wait_ready_returns_when_the_outbox_overflows() -> None:
    waiting = outbox(max_bytes=5)

    def overflow() -> None:
        assert not waiting.offer(publication("a", 1, size=6))

    await returns_once_woken(waiting, overflow)
    assert waiting.overflowed


@pytest.mark.anyio
async def test_wait_ready_returns_when_the_hub_declares_an_overflow() -> None:
    box = outbox()
    await returns_once_woken(box, box.overflow)


@pytest.mark.anyio
async def test_wait_ready_returns_when_the_outbox_is_closed() -> None:
    box = outbox()
    await returns_once_woken(box, box.close)


@pytest.mark.anyio
async def test_wait_ready_returns_when_interrupted_and_from_then_on() -> None:
    box = outbox()
    await returns_once_woken(box, box.interrupt)
    with anyio.fail_after(TIMEOUT):
        await box.wait_ready()
    assert len(box) == 0


# --- properties ---------------------------------------------------------------------------------

CHANNELS = ("a", "b", "c")
MAX_BYTES = 100

#: A writer's turn (``None``: take the gaps, then drain) or an offer of (channel, size).
Step = tuple[str, int] | None


def steps(max_size: int) -> st.SearchStrategy[list[Step]]:
    offer = st.tuples(st.sampled_from(CHANNELS), st.integers(min_value=1, max_value=max_size))
    return st.lists(st.one_of(offer, st.none()), max_size=60)


def deliver(steps_: list[Step], max_messages: int) -> None:
    """Offer publications under ``DROP_OLDEST`` with writer turns between them.

    Checks that the bounds hold after every offer, and that what a client would see of each
    channel (each turn's gaps, then its frames) accounts for every offered offset exactly once,
    in order.
    """
    box = outbox(max_messages=max_messages, max_bytes=MAX_BYTES, policy=DROP_OLDEST)
    offered: dict[str, list[int]] = defaultdict(list)
    seen: dict[str, list[int]] = defaultdict(list)

    def writer_turn() -> None:
        for channel, offsets in client_view(box).items():
            seen[channel].extend(offsets)

    for step in steps_:
        if step is None:
            writer_turn()
            continue
        channel, size = step
        offset = len(offered[channel]) + 1
        offered[channel].append(offset)
        assert box.offer(publication(channel, offset, size))
        stats = box.statistics()
        assert stats.queued_bytes <= MAX_BYTES
        assert stats.queued_messages <= max_messages
    writer_turn()
    assert seen == offered
    assert not box.overflowed


moderate = settings(max_examples=150, deadline=None)


@moderate
@given(steps=steps(MAX_BYTES), max_messages=st.integers(min_value=1, max_value=8))
def test_drop_oldest_accounts_for_every_publication_once_and_in_order(
    steps: list[Step], max_messages: int
) -> None:
    deliver(steps, max_messages)


@moderate
@given(steps=steps(2 * MAX_BYTES), max_messages=st.integers(min_value=1, max_value=8))
def test_drop_oldest_accounts_for_every_publication_even_those_larger_than_max_bytes(
    steps: list[Step], max_messages: int
) -> None:
    deliver(steps, max_messages)
