"""``queue.flush_interval``: adaptive write coalescing in the ``FlushScheduler``.

Outboxes run on a real asyncio loop, with a ``write_through`` that records what each flush wrote
and when (by the loop's clock). The same rules end to end, over a real server and real clients:
test_coalescing.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from broker.config import ConfigError, load_settings
from broker.flusher import FlushScheduler
from broker.outbox import Outbox
from broker.settings import OverflowPolicy, Settings
from protocol import Frame
from tests.conftest import TIMEOUT

pytestmark = pytest.mark.anyio

#: Long enough that a flush delayed by it cannot be mistaken for one right after the turn, even on
#: a busy machine; short enough to keep each test well under a second.
INTERVAL = 0.05
#: Slack for the timer: asyncio runs a timer up to its clock resolution early.
EARLY = 0.002


def publication(offset: int) -> Frame:
    return Frame(b"p%d" % offset, "room", offset)


def reply(tag: bytes) -> Frame:
    """A control frame: no channel."""
    return Frame(tag)


class Link:
    """An outbox wired as ``Connection`` wires it on the ``TransportLink`` path: a writer without
    a task (``call_when_ready``) and a ``write_through`` that takes the socket at once. Here the
    socket is a list: every write, with the loop time it was made at."""

    def __init__(self, flusher: FlushScheduler, *, max_messages: int = 100) -> None:
        #: Whether the socket takes a write at once (a client reading); False: it is full.
        self.taking = True
        self.outbox = Outbox(
            max_messages=max_messages, max_bytes=100_000, policy=OverflowPolicy.DISCONNECT
        )
        self.outbox.flusher = flusher
        self.outbox.write_through = self._write_through
        self.writes: list[tuple[float, list[bytes]]] = []
        self.written = asyncio.Event()
        self.woken = asyncio.Event()
        self.outbox.call_when_ready(self.woken.set, None)

    def _write_through(self) -> bool:
        if not self.taking:
            return False
        frames = self.outbox.drain()
        assert frames, "an empty write"
        self.writes.append((asyncio.get_running_loop().time(), [frame.data for frame in frames]))
        self.written.set()
        return True

    def offer(self, frame: Frame) -> None:
        assert self.outbox.offer(frame)

    async def next_write(self) -> tuple[float, list[bytes]]:
        """The next write, waited for (at most ``TIMEOUT``)."""
        count = len(self.writes)
        async with asyncio.timeout(TIMEOUT):
            while len(self.writes) == count:
                self.written.clear()
                await self.written.wait()
        return self.writes[count]

    @property
    def contents(self) -> list[list[bytes]]:
        return [data for _, data in self.writes]


async def next_turn() -> None:
    """Let the loop run the callbacks scheduled so far (a flush ``call_soon``-ed before this)."""
    await asyncio.sleep(0)


#: Publications per wake-up of a test's dense stream, each in a turn of its own: a stream that
#: stays dense even when a busy machine runs its ``asyncio.sleep(INTERVAL / 10)`` several times
#: late (the moving average of its gaps then stays well under ``INTERVAL / DENSE``).
BURST = 3


async def stream(links: tuple[Link, ...], offset: int, *, until_write: int | None = None) -> int:
    """One wake-up of a dense stream to ``links``: ``BURST`` publications from ``offset + 1``,
    each in a turn of its own, then a sleep of a tenth of an interval. Returns the last offset.
    With ``until_write``, it stops as soon as the first link has more writes than that, so that
    nothing offered is left waiting for the next one."""
    for _ in range(BURST):
        offset += 1
        for link in links:
            link.offer(publication(offset))
        await next_turn()
        if until_write is not None and len(links[0].writes) > until_write:
            return offset
    await asyncio.sleep(INTERVAL / 10)
    return offset


async def make_dense(*links: Link) -> int:
    """Offer publications back to back, each in a turn of its own (the same ones to every link
    in the same turn), until they wait for the timer, and go on until that timer's write: the
    stream is dense from then on. Each is written right after its turn until then (a stream
    starts sparse), and it takes at most ``DENSE * SMOOTHING`` of them to recognise the stream
    as dense. Returns the offset of the last one."""
    limit = FlushScheduler.DENSE * FlushScheduler.SMOOTHING
    for offset in range(1, limit + 1):
        writes = [len(link.writes) for link in links]
        for link in links:
            link.offer(publication(offset))
        await next_turn()
        if [len(link.writes) for link in links] == writes:
            # They wait for the timer. The stream goes on meanwhile (dense), so that the next
            # one offered waits too.
            async with asyncio.timeout(TIMEOUT):
                while len(links[0].writes) == writes[0]:
                    offset = await stream(links, offset, until_write=writes[0])
            # (Two, if a busy machine ran the timer so late that the next publication found
            # its connection's interval over.)
            assert all(len(link.writes) > count for link, count in zip(links, writes, strict=True))
            return offset
        for link in links:  # not dense yet: written at once
            assert link.contents[-1] == [b"p%d" % offset]
    raise AssertionError(f"still sparse after {limit} publications back to back")


@pytest.fixture
def flusher() -> Iterator[FlushScheduler]:
    scheduler = FlushScheduler(INTERVAL)
    yield scheduler
    scheduler.close()


# --- the setting ---------------------------------------------------------------------------------


def test_flush_interval_defaults_to_5_ms_and_reads_from_the_environment() -> None:
    assert Settings().queue.flush_interval == 0.005
    settings = load_settings(None, {"BROKER_QUEUE__FLUSH_INTERVAL": "0"})
    assert settings.queue.flush_interval == 0.0
    settings = load_settings(None, {"BROKER_QUEUE__FLUSH_INTERVAL": "0.002"})
    assert settings.queue.flush_interval == 0.002


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-0.001", "expected `float` >= 0.0"),
        ("nan", "expected `float` >= 0.0"),
        ("5", "expected `float` <= 1.0"),  # 5 ms meant, surely
        ("inf", "expected `float` <= 1.0"),
        ("'soon'", "expected `float`, got `str`"),
    ],
)
def test_a_bad_flush_interval_is_a_config_error_naming_the_key(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"BROKER_QUEUE__FLUSH_INTERVAL": value})
    message = str(info.value)
    assert message.startswith("$BROKER_QUEUE__FLUSH_INTERVAL: queue.flush_interval = "), message
    assert message.endswith(expected), message


# --- the scheduler on a real loop -----------------------------------------------------------------


async def test_a_burst_is_written_at_once_until_dense_then_it_waits_for_one_flush(
    flusher: FlushScheduler,
) -> None:
    link = Link(flusher)
    last = await make_dense(link)
    assert len(link.writes) >= 4  # the first ones went at once: the stream started sparse
    writes = len(link.writes)
    # Dense now: more offers, each in a turn of its own, in quick succession: none leaves in
    # its turn; all leave together in one write when the interval is up.
    loop = asyncio.get_running_loop()
    offered_at = loop.time()
    for offset in range(last + 1, last + 4):
        link.offer(publication(offset))
        await next_turn()
    assert len(link.writes) == writes
    at, data = await link.next_write()
    assert len(link.writes) == writes + 1
    assert data == [b"p%d" % offset for offset in range(last + 1, last + 4)]
    # Due an interval after the previous write was due (which a busy loop may have run late).
    assert at > offered_at + EARLY
    assert not link.woken.is_set()  # written in the flusher's turn: the writer never woke


async def test_two_publications_per_interval_are_each_written_at_once(
    flusher: FlushScheduler,
) -> None:
    """Sparse: a stream of a publication every half interval is never dense, so none waits for
    the rest of its connection's interval (the earlier rule held each one about half an
    interval)."""
    link = Link(flusher)
    loop = asyncio.get_running_loop()
    due = loop.time()
    for offset in range(1, 21):
        await asyncio.sleep(max(0.0, due - loop.time()))
        link.offer(publication(offset))
        await next_turn()
        assert link.contents[-1] == [b"p%d" % offset], f"publication {offset} waited"
        due += INTERVAL / 2
    assert len(link.writes) == 20


async def test_a_lone_publication_after_a_dense_stream_and_a_quiet_spell_leaves_at_once(
    flusher: FlushScheduler,
) -> None:
    link = Link(flusher)
    last = await make_dense(link)
    # Quiet for a few intervals: the next publication is sparse again, and leaves at once.
    await asyncio.sleep(3 * INTERVAL)
    link.offer(publication(last + 1))
    await next_turn()
    assert link.contents[-1] == [b"p%d" % (last + 1)]


async def test_under_a_dense_stream_each_outbox_gets_one_write_per_interval(
    flusher: FlushScheduler,
) -> None:
    link = Link(flusher)
    last = await make_dense(link)
    first = len(link.writes) - 1  # the write of the publication that waited
    loop = asyncio.get_running_loop()
    end = loop.time() + 4 * INTERVAL
    offset = last
    while loop.time() < end:
        offset = await stream((link,), offset)
    async with asyncio.timeout(TIMEOUT):
        while sum(map(len, link.contents)) < offset:
            await link.next_write()
    times = [at for at, _ in link.writes[first:]]
    # About one write per interval, not one per publication (about 120): each flush is due an
    # interval after the previous one was due. (A timer a busy machine ran an interval late may
    # find the next publication past its connection's interval: that one leaves at once.)
    assert len(times) <= (times[-1] - times[0]) / INTERVAL + 2, [
        round((at - times[0]) / INTERVAL, 2) for at in times
    ]
    assert [data for write in link.contents for data in write] == [
        b"p%d" % i for i in range(1, offset + 1)
    ]


async def test_outboxes_busy_together_are_flushed_by_one_timer_callback(
    flusher: FlushScheduler,
) -> None:
    a, b = Link(flusher), Link(flusher)
    last = await make_dense(a, b)
    a.offer(publication(last + 1))
    await next_turn()
    b.offer(publication(last + 1))
    b_at, b_data = await b.next_write()
    a_at, a_data = a.writes[-1]
    assert a_data == b_data == [b"p%d" % (last + 1)]
    assert abs(a_at - b_at) < EARLY  # in the same callback


async def test_a_quiet_connection_is_not_delayed_by_another_ones_stream(
    flusher: FlushScheduler,
) -> None:
    """Coalescing follows each connection's own traffic: a connection that receives rarely gets
    its publication right after the turn while another one in the process is under a dense
    stream, and that one still gets one write per interval."""
    busy, quiet = Link(flusher), Link(flusher)
    offset = await make_dense(busy)
    first = len(busy.writes) - 1
    loop = asyncio.get_running_loop()
    end = loop.time() + 6 * INTERVAL
    quiet_sent = 0
    quiet_due = loop.time() + INTERVAL
    while loop.time() < end:
        offset = await stream((busy,), offset)
        if loop.time() >= quiet_due:  # every 2.5 intervals: one for the quiet connection
            quiet_due += 2.5 * INTERVAL
            quiet_sent += 1
            quiet.offer(publication(quiet_sent))
            await next_turn()
            # Left in the same turn as the busy one's stream goes on: no timer, no wait.
            assert len(quiet.writes) == quiet_sent
            assert quiet.contents[-1] == [b"p%d" % quiet_sent]
            assert loop.time() - quiet.writes[-1][0] < EARLY
    assert quiet_sent >= 2
    async with asyncio.timeout(TIMEOUT):
        while sum(map(len, busy.contents)) < offset:
            await busy.next_write()
    times = [at for at, _ in busy.writes[first:]]
    # About one write per interval, not one per publication (about 180).
    assert len(times) <= (times[-1] - times[0]) / INTERVAL + 2, [
        round((at - times[0]) / INTERVAL, 2) for at in times
    ]
    assert [data for write in busy.contents for data in write] == [
        b"p%d" % i for i in range(1, offset + 1)
    ]


async def test_with_interval_zero_every_turn_flushes() -> None:
    flusher = FlushScheduler(0.0)
    link = Link(flusher)
    for offset in range(1, 41):  # back to back: dense, were there an interval
        link.offer(publication(offset))
        await next_turn()
        assert len(link.writes) == offset
    # Several offers in one turn still leave in one write.
    link.offer(publication(41))
    link.offer(publication(42))
    await next_turn()
    assert link.contents[-1] == [b"p41", b"p42"]
    flusher.close()


async def test_a_control_frame_is_not_delayed_and_takes_the_queued_publications_along(
    flusher: FlushScheduler,
) -> None:
    link = Link(flusher)
    last = await make_dense(link)
    writes = len(link.writes)
    link.offer(publication(last + 1))
    await next_turn()
    assert len(link.writes) == writes  # waiting for the timer
    link.offer(reply(b"pong"))
    await next_turn()
    assert link.contents[writes:] == [[b"p%d" % (last + 1), b"pong"]]  # in order, one write
    # The timer then finds nothing to write (``Link`` fails on an empty write), and a reply's
    # flush does not count as one of publications: the next publication is not delayed either.
    await asyncio.sleep(INTERVAL)
    link.offer(reply(b"published"))
    await next_turn()
    link.offer(publication(last + 2))
    await next_turn()
    assert link.contents[writes + 1 :] == [[b"published"], [b"p%d" % (last + 2)]]


async def test_replies_alone_are_never_delayed(flusher: FlushScheduler) -> None:
    link = Link(flusher)
    for i in range(40):
        link.offer(reply(b"r%d" % i))
        await next_turn()
    assert link.contents == [[b"r%d" % i] for i in range(40)]


async def test_an_outbox_closed_while_its_flush_waits_is_skipped(flusher: FlushScheduler) -> None:
    link, other = Link(flusher), Link(flusher)
    last = await make_dense(link, other)
    writes = len(link.writes)
    link.offer(publication(last + 1))
    other.offer(publication(last + 1))
    link.outbox.close()
    _, data = await other.next_write()  # the timer has fired
    assert data == [b"p%d" % (last + 1)]
    assert len(link.writes) == writes
    assert link.woken.is_set()  # the close woke the writer, as without coalescing


async def test_an_outbox_half_full_while_the_flush_waits_is_written_at_once(
    flusher: FlushScheduler,
) -> None:
    """A dense stream's window filling in one turn (a burst for one connection) is written
    each time the outbox is half full, not held for the timer until it overflows: a client
    that reads loses nothing, and the writes are of half an outbox each."""
    link = Link(flusher, max_messages=200)
    offset = await make_dense(link)
    writes = len(link.writes)
    for n in range(1, 1001):  # in one turn: five outboxes' worth
        link.offer(publication(offset + n))
    assert not link.outbox.overflowed
    assert [len(data) for data in link.contents[writes:]] == [100] * 10
    assert len(link.outbox) == 0


async def test_an_overflow_while_the_flush_waits_wakes_the_writer_at_once(
    flusher: FlushScheduler,
) -> None:
    """A socket that takes nothing: the writer is woken once the outbox is half full (not when
    the timer fires), and the outbox overflows at its bound."""
    link = Link(flusher, max_messages=200)
    offset = await make_dense(link)
    link.taking = False
    queued = 0
    while link.outbox.offer(publication(offset + 1)):  # in one turn: all wait for the timer
        offset += 1
        queued += 1
        assert queued <= 200
    assert len(link.outbox) == 200
    async with asyncio.timeout(INTERVAL / 2):
        await link.woken.wait()
    assert link.outbox.overflowed


async def test_close_cancels_the_timer_and_writes_what_it_was_waiting_for() -> None:
    flusher = FlushScheduler(10.0)
    link = Link(flusher)
    last = 0
    while len(link.writes) == last:  # back to back until one waits (10 s: no timer fires)
        last += 1
        link.offer(publication(last))
        await next_turn()
    assert len(link.writes) == last - 1
    flusher.close()
    assert link.contents[-1] == [b"p%d" % last]
    flusher.close()  # idempotent
    # Usable again, and not waiting for the old timer.
    link.offer(publication(last + 1))
    await next_turn()
    assert link.contents[-1] == [b"p%d" % (last + 1)]
    flusher.close()


def test_a_timer_pending_when_its_loop_ends_neither_raises_nor_blocks_the_next_loop() -> None:
    flusher = FlushScheduler(10.0)
    holder: list[Link] = []

    async def first_loop() -> None:
        link = Link(flusher)
        holder.append(link)
        offset = 0
        while len(link.writes) == offset:  # until one waits for a timer this loop never runs
            offset += 1
            link.offer(publication(offset))
            await next_turn()

    asyncio.run(first_loop())
    flusher.close()  # outside any loop: drops the timer and what waited for it
    [link] = holder
    written = len(link.writes)

    async def second_loop() -> None:
        link.outbox.drain()
        link.offer(publication(1000))
        await next_turn()
        assert len(link.writes) == written + 1
        assert link.contents[-1] == [b"p1000"]
        flusher.close()

    asyncio.run(second_loop())
