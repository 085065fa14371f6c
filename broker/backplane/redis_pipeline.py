"""The Redis backplane's publish pipeline: one queue and one task per Redis server.

Every publish this process makes to one Redis server goes through its ``PublishPipeline``:
``submit`` queues it and returns a future at once (it waits only while ``backplane.publish_queue``
publishes are queued or in flight), and the pipeline's task sends what is queued, up to ``BATCH``
publishes, as one pipeline of ``EVALSHA`` commands (no ``MULTI``): one write, one round trip for
the whole batch, on one connection. Only then does it take the next batch. So Redis runs the
scripts in the order they were queued, and a channel's offsets follow that order; a connection
that publishes without waiting for each reply pays a round trip per batch, not per publication.

The replies are read one by one, and each publish's future ends as soon as its own reply is read,
with its ``Head`` or ``BackplaneUnavailable``; then its ``on_settled`` callback, if any, is called
at once, in the pipeline's task. A ``/v1/ws`` reader sends its reply from that callback, in the
very turn of the event loop that read Redis's answer: no hop through the loop per publish (a done
callback, or redis-py's ``Pipeline``, whose ``execute`` yields to the loop before it returns, would
add one, and the publisher's own publication, which comes through pub/sub and the hub, would then
tend to arrive before its ``published`` rather than after, as when the reader awaited the script).
Such a callback must not raise; if it does, the error is logged and the pipeline goes on.

A future ends with ``BackplaneUnavailable``:

* with the rest of its batch, without trying Redis, when the server is not ready (the pub/sub
  link is down) as the batch is taken;
* with the publishes of its batch not answered yet, when the connection fails or the round trip
  takes longer than ``backplane.timeout`` (some of them may have been published: as with a single
  command, the reply is what was lost);
* alone, when its script fails (Redis answers each command of a pipeline on its own).

A Redis that restarted, or ran ``SCRIPT FLUSH``, answers ``NOSCRIPT``. The publishes answered
``NOSCRIPT`` with nothing after them run (the usual case: all of them) are sent again, in order, in
one more round trip that begins with ``SCRIPT LOAD``: nothing is published out of order. A
``NOSCRIPT`` followed by a script that ran (another process loaded the script in between) fails
with ``BackplaneUnavailable`` instead of being sent after a later publish.

A future abandoned before its batch is taken (an HTTP request cancelled, say) is not sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from broker.backplane.base import BackplaneUnavailable, Head
from broker.logs import get_logger
from broker.monitor.histogram import Histogram

log = get_logger("broker.backplane.redis")

#: Most publishes sent in one round trip.
BATCH = 256
# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)

Keys = tuple[str, ...]
Args = tuple[str | int | bytes, ...]
Settled = Callable[[], None]


@dataclass(slots=True)
class _Entry:
    future: asyncio.Future[Head]
    keys: Keys
    args: Args
    on_settled: Settled | None


@dataclass(slots=True)
class PipelineStatistics:
    #: Publishes waiting for their batch, and in the batch being sent.
    queued: int
    in_flight: int
    #: Since the start: round trips made (``SCRIPT LOAD`` retries included) and script runs sent.
    round_trips: int
    sent: int


class PublishPipeline:
    """The publishes of this process to one Redis server. See the module docstring."""

    def __init__(
        self,
        redis: aioredis.Redis,
        script: str,
        *,
        size: int,
        timeout: float,
        ready: Callable[[], bool],
    ) -> None:
        self._redis = redis
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._timeout = timeout
        self._ready = ready
        self._queue: deque[_Entry] = deque()
        #: One unit per publish queued or in flight; waiters get room in FIFO order.
        self._room = asyncio.Semaphore(size)
        #: Set when something is queued while the task waits for work.
        self._wakeup: anyio.Event | None = None
        self._running = False
        self._in_flight = 0
        self._round_trips = 0
        self._sent = 0
        #: Seconds per round trip (``broker_backplane_round_trip_seconds{op="publish"}``).
        self.round_trip_seconds = Histogram()

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(len(self._queue), self._in_flight, self._round_trips, self._sent)

    async def submit(
        self, keys: Keys, args: Args, on_settled: Settled | None = None
    ) -> asyncio.Future[Head]:
        """Queue a run of the script; waits only while the queue is full.

        Returns a future that ends with the publication's head or ``BackplaneUnavailable``;
        ``on_settled`` is called right after it ends (see the module docstring). Nothing settles
        it before this returns. Raises ``BackplaneUnavailable`` when the pipeline does not run.
        """
        if not self._running:
            raise BackplaneUnavailable("the backplane is not running")
        await self._room.acquire()
        if not self._running:  # stopped while this waited for room
            self._room.release()
            raise BackplaneUnavailable("the backplane is not running")
        future: asyncio.Future[Head] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(future, keys, args, on_settled))
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
        return future

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send batches until cancelled; then fail whatever is left."""
        self._running = True
        task_status.started()
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wakeup = wakeup = anyio.Event()
                    await wakeup.wait()
                    continue
                batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
                self._in_flight = len(batch)
                try:
                    await self._send(batch)
                except Exception:
                    # A bug, not Redis: say so, answer ``unavailable``, and go on with the next.
                    log.exception("backplane.pipeline_failed")
                    _fail(batch, "internal error")
                finally:
                    self._in_flight = 0
                    _fail(batch, "the backplane stopped")  # cancelled: nothing else ended them
                    for _ in batch:
                        self._room.release()
        finally:
            self._running = False
            left = list(queue)
            queue.clear()
            _fail(left, "the backplane stopped")
            for _ in left:
                self._room.release()

    async def _send(self, batch: list[_Entry]) -> None:
        entries = [entry for entry in batch if not entry.future.done()]
        if not entries:
            return
        if not self._ready():
            _fail(entries, "redis is not reachable")
            return
        try:
            again = await self._round_trip(entries, load=False)
            if again:
                # Redis lost the script (a restart, SCRIPT FLUSH): load it, then send them again.
                again = await self._round_trip(again, load=True)
                _fail(again, "redis lost the publish script")
        except _FAILURES as exc:
            _fail(entries, str(exc) or type(exc).__name__)

    async def _round_trip(self, entries: Sequence[_Entry], *, load: bool) -> list[_Entry]:
        """Send a script run per entry (after ``SCRIPT LOAD`` if ``load``) in one write, within
        ``timeout``, and settle each entry as its reply is read. Returns the entries answered
        ``NOSCRIPT`` after which no script ran: they may be sent again, in order."""
        self._round_trips += 1
        started = time.monotonic()
        pool = self._redis.connection_pool
        noscript: list[_Entry] = []
        failures: list[ResponseError] = []
        with anyio.fail_after(self._timeout):
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                commands: list[tuple[str | int | bytes, ...]] = [
                    ("EVALSHA", self._sha, len(entry.keys), *entry.keys, *entry.args)
                    for entry in entries
                ]
                if load:
                    commands.insert(0, ("SCRIPT", "LOAD", self._script))
                await connection.send_packed_command(connection.pack_commands(commands))
                self._sent += len(entries)
                if load:
                    await _read(connection)  # should it fail, the scripts answer NOSCRIPT
                for entry in entries:
                    result = await _read(connection)
                    if isinstance(result, NoScriptError):
                        noscript.append(entry)
                        continue
                    if noscript:
                        # A later script ran: sending these again would publish them after it.
                        _fail(noscript, "redis lost the publish script")
                        noscript = []
                    if isinstance(result, ResponseError):
                        failures.append(result)
                        _fail((entry,), str(result))
                    else:
                        offset, epoch = result
                        _settle(entry, Head(epoch.decode(), int(offset)))
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.release(connection)
                self.round_trip_seconds.observe(time.monotonic() - started)
        if failures:
            # A script error is not an outage: say so, once per round trip.
            log.warning("backplane.publish_failed", failed=len(failures), error=str(failures[0]))
        return noscript


async def _read(connection: AbstractConnection) -> Any:
    """The next reply on ``connection``; an error reply is returned, not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:
        return exc


def _settle(entry: _Entry, head: Head) -> None:
    if not entry.future.done():
        entry.future.set_result(head)
    _settled(entry)


def _fail(entries: Sequence[_Entry], reason: str) -> None:
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(BackplaneUnavailable(reason))
        _settled(entry)


def _settled(entry: _Entry) -> None:
    """Call ``entry``'s ``on_settled``, once."""
    callback, entry.on_settled = entry.on_settled, None
    if callback is not None:
        try:
            callback()
        except Exception:
            log.exception("backplane.on_settled_failed")
