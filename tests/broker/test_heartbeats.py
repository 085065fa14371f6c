"""The process's liveness sweep (``broker.heartbeats``): its deadlines, and what clients see of it
over real sockets: 4009 for silence, the server's pings and 1011 when no pong comes."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from websockets.exceptions import ConnectionClosed

from broker import heartbeats
from broker.heartbeats import BATCH, Sweep
from broker.settings import Settings, WebSocketSettings
from protocol import Disconnect, Encoding, Ping, Pong
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.rawclient import RawClient, masked_frame, open_raw
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


class Entry:
    """A sweep entry that records when it was called and answers from a script."""

    def __init__(self, *deadlines: float | None) -> None:
        self.sweep_tick: int | None = None
        self.script = list(deadlines)
        self.calls: list[float] = []
        self.done = asyncio.get_running_loop().create_future()

    def on_sweep(self, now: float) -> float | None:
        self.calls.append(now)
        deadline = self.script.pop(0) if self.script else None
        if deadline is None and not self.done.done():
            self.done.set_result(None)
        return deadline


# --- the sweep ------------------------------------------------------------------------------------


async def test_each_entry_is_checked_at_its_deadline_never_before() -> None:
    loop = asyncio.get_running_loop()
    sweep = Sweep(0.01, loop.time())
    start = loop.time()
    entries = {delay: Entry() for delay in (0.15, 0.05, 0.1)}
    for delay, entry in entries.items():
        sweep.schedule(entry, start + delay)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(entry.done for entry in entries.values()))
    for delay, entry in entries.items():
        (called,) = entry.calls
        assert called >= start + delay
    assert entries[0.05].calls[0] <= entries[0.1].calls[0] <= entries[0.15].calls[0]
    assert len(sweep) == 0


async def test_the_deadline_an_entry_returns_is_its_next_check() -> None:
    loop = asyncio.get_running_loop()
    sweep = Sweep(0.01, loop.time())
    start = loop.time()
    entry = Entry(start + 0.06, start + 0.09)
    sweep.schedule(entry, start + 0.03)
    async with asyncio.timeout(TIMEOUT):
        await entry.done
    assert len(entry.calls) == 3
    for called, deadline in zip(entry.calls, (0.03, 0.06, 0.09), strict=True):
        assert called >= start + deadline
    assert entry.sweep_tick is None


async def test_a_cancelled_entry_is_not_checked_and_a_moved_one_once_at_its_new_deadline() -> None:
    loop = asyncio.get_running_loop()
    sweep = Sweep(0.01, loop.time())
    start = loop.time()
    cancelled, moved, witness = Entry(), Entry(), Entry()
    sweep.schedule(cancelled, start + 0.02)
    sweep.schedule(moved, start + 0.02)
    sweep.schedule(witness, start + 0.12)
    sweep.cancel(cancelled)
    sweep.cancel(cancelled)  # twice: nothing happens
    sweep.schedule(moved, start + 0.08)
    async with asyncio.timeout(TIMEOUT):
        await witness.done
    assert cancelled.calls == []
    (called,) = moved.calls
    assert called >= start + 0.08


async def test_a_failing_check_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    sweep = Sweep(0.01, loop.time())

    class Failing(Entry):
        def on_sweep(self, now: float) -> float | None:
            super().on_sweep(now)
            raise RuntimeError("a bug")

    failing, healthy = Failing(), Entry()
    sweep.schedule(failing, loop.time() + 0.02)
    sweep.schedule(healthy, loop.time() + 0.02)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(failing.done, healthy.done)
    assert len(failing.calls) == len(healthy.calls) == 1
    assert failing.sweep_tick is None


async def test_no_more_than_a_batch_of_checks_run_in_one_turn_of_the_loop() -> None:
    loop = asyncio.get_running_loop()
    sweep = Sweep(0.01, loop.time())
    checked = 0
    seen_between: list[int] = []

    class Counting(Entry):
        def on_sweep(self, now: float) -> float | None:
            nonlocal checked
            checked += 1
            if checked == 1:
                # Runs once the sweep gives the loop back.
                loop.call_soon(lambda: seen_between.append(checked))
            return super().on_sweep(now)

    entries = [Counting() for _ in range(BATCH + 10)]
    deadline = loop.time() + 0.02
    for entry in entries:
        sweep.schedule(entry, deadline)
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(entry.done for entry in entries))
    assert seen_between == [BATCH]
    assert checked == BATCH + 10


async def test_one_sweep_per_loop_and_resolution() -> None:
    assert heartbeats.sweep(25.0) is heartbeats.sweep(35.0)  # both 1 s
    assert heartbeats.sweep(25.0).resolution == 1.0
    assert heartbeats.sweep(0.4).resolution == pytest.approx(0.05)


# --- over real sockets ------------------------------------------------------------------------

#: 0.4 s heartbeat and 0.2 s grace: 0.6 s of silence closes; the server pings after 0.4 s without
#: hearing from the client, and a pong must come within 0.6 s.
FAST = Settings(websocket=WebSocketSettings(heartbeat=0.4, heartbeat_grace=0.2))


@asynccontextmanager
async def silent_clients(running: RunningBroker, count: int) -> AsyncIterator[list[ProtocolClient]]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            client = await stack.enter_async_context(open_client(running.url(), Encoding.JSON))
            clients.append(client)
        yield clients


async def closed_with(client: ProtocolClient) -> tuple[list[object], int | None]:
    """What the client receives until the server closes, and the close code."""
    received: list[object] = []
    try:
        while True:
            received.append(await client.recv())
    except ConnectionClosed as closed:
        return received, closed.rcvd.code if closed.rcvd else None


async def test_silent_clients_are_closed_with_4009_while_a_pinging_one_stays() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serve_broker(FAST) as running,
        silent_clients(running, 12) as silent,
        open_client(running.url(), Encoding.JSON) as pinger,
    ):
        opened = loop.time()
        stop = asyncio.Event()

        async def keep_pinging() -> None:
            request_id = 0
            while not stop.is_set():
                request_id += 1
                await pinger.send(Ping(id=request_id))
                assert await pinger.expect(Pong) == Pong(id=request_id)
                await asyncio.sleep(0.1)  # the behaviour under test is a client's pace

        pinging = asyncio.create_task(keep_pinging())
        try:
            async with asyncio.timeout(TIMEOUT):
                results = await asyncio.gather(*(closed_with(client) for client in silent))
            closed_at = loop.time()
        finally:
            stop.set()
            await pinging
        for received, code in results:
            assert code == 4009
            assert [type(message) for message in received] == [Disconnect]
            assert isinstance(received[0], Disconnect) and received[0].reconnect
        # Never before heartbeat + grace of silence.
        assert closed_at - opened >= 0.6
        assert running.broker.close_codes.get(4009) == 12
        assert len(running.broker.connections) == 1
        await pinger.send(Ping(id=999))
        assert await pinger.expect(Pong) == Pong(id=999)


def _split_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take one whole server frame (unmasked, under 64 KiB) off ``buffer``, if it holds one."""
    if len(buffer) < 2:
        return None
    length, header = buffer[1] & 0x7F, 2
    assert length < 127  # the tests' frames are under 64 KiB: at most a 16-bit length
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), header = struct.unpack_from("!H", buffer, 2), 4
    if len(buffer) < header + length:
        return None
    frame = buffer[0] & 0x0F, bytes(buffer[header : header + length])
    del buffer[: header + length]
    return frame


async def next_frame(client: RawClient, buffer: bytearray) -> tuple[int, bytes] | None:
    """The next server frame (opcode, payload), or None when the socket closes."""
    loop = asyncio.get_running_loop()
    while (frame := _split_frame(buffer)) is None:
        try:
            chunk = await loop.sock_recv(client.sock, 1 << 16)
        except ConnectionError:
            return None
        if not chunk:
            return None
        buffer += chunk
    return frame


#: Server pings after 0.4 s without hearing from the client; 1.4 s for the pong, and 1.4 s of
#: silence (data frames only) before 4009: room for a client that is pinged and then talks.
PATIENT = Settings(websocket=WebSocketSettings(heartbeat=0.4, heartbeat_grace=1.0))


def app_ping(request_id: int) -> bytes:
    return masked_frame(json.dumps({"type": "ping", "id": request_id}).encode())


async def test_a_client_heard_from_within_the_interval_is_not_pinged() -> None:
    """As the NATS server does: a client that talks is alive; pings are for silent ones."""
    async with serve_broker(FAST) as running:
        client = await open_raw(running.port, "/v1/ws", rcvbuf=1 << 16)
        buffer = bytearray()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(TIMEOUT):
                welcome = await next_frame(client, buffer)
                assert welcome is not None and b'"welcome"' in welcome[1]
                until = loop.time() + 1.5  # nearly four intervals
                request_id = 0
                while loop.time() < until:
                    request_id += 1
                    await client.send(app_ping(request_id))
                    frame = await next_frame(client, buffer)
                    assert frame is not None and frame[0] == 0x1, frame  # a pong, no ping
                    await asyncio.sleep(0.1)  # the behaviour under test is a client's pace
            assert len(running.broker.connections) == 1
        finally:
            client.reset()


async def test_the_server_pings_a_silent_client_and_closes_1011_when_no_pong_comes() -> None:
    async with serve_broker(PATIENT) as running:
        client = await open_raw(running.port, "/v1/ws", rcvbuf=1 << 16)
        loop = asyncio.get_running_loop()
        opened = loop.time()
        buffer = bytearray()
        frames: list[tuple[int, bytes]] = []
        pings_at: list[float] = []
        pinged = asyncio.Event()

        async def keep_talking() -> None:
            # Silent until pinged; then application pings keep the heartbeat (4009) away while
            # the WebSocket ping goes unanswered.
            await pinged.wait()
            request_id = 0
            while True:
                request_id += 1
                await client.send(app_ping(request_id))
                await asyncio.sleep(0.1)  # the behaviour under test is a client's pace

        talking = asyncio.create_task(keep_talking())
        try:
            async with asyncio.timeout(TIMEOUT):
                while (frame := await next_frame(client, buffer)) is not None:
                    frames.append(frame)
                    if frame[0] == 0x9:
                        pings_at.append(loop.time())
                        pinged.set()
                    if frame[0] == 0x8:
                        # Nothing comes after the close frame but the end of the connection.
                        ended = await next_frame(client, buffer)
                        break
        finally:
            talking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await talking
            client.reset()
        opcodes = [opcode for opcode, _ in frames]
        assert opcodes.count(0x9) == 1  # one ping, then no other while its pong is awaited
        assert pings_at[0] - opened >= 0.4
        opcode, payload = frames[-1]
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1011
        assert payload[2:] == b"keepalive ping timeout"
        assert ended is None


async def test_a_client_that_answers_pings_is_pinged_again_and_stays() -> None:
    async with serve_broker(PATIENT) as running:
        client = await open_raw(running.port, "/v1/ws", rcvbuf=1 << 16)
        buffer = bytearray()
        loop = asyncio.get_running_loop()
        pings = 0
        try:
            async with asyncio.timeout(TIMEOUT):
                welcome = await next_frame(client, buffer)
                assert welcome is not None and b'"welcome"' in welcome[1]
                request_id = 0
                talk_at = loop.time() + 0.6
                while pings < 3:
                    # Quiet for 0.6 s at a time: pinged in between, and its pong answered.
                    try:
                        async with asyncio.timeout(max(0.0, talk_at - loop.time())):
                            frame = await next_frame(client, buffer)
                    except TimeoutError:
                        request_id += 1
                        await client.send(app_ping(request_id))
                        talk_at = loop.time() + 0.6
                        continue
                    assert frame is not None and frame[0] in (0x1, 0x9), frame
                    if frame[0] == 0x9:
                        pings += 1
                        await client.send(masked_frame(frame[1], opcode=0xA))
            assert len(running.broker.connections) == 1
            assert running.broker.close_codes == {}
        finally:
            client.reset()


async def test_a_closed_connection_leaves_the_sweep() -> None:
    async with serve_broker(FAST) as running:
        async with silent_clients(running, 5):
            pass
        websocket = FAST.websocket
        # The keepalive's sweep, and the heartbeat's (one and the same from an 8 s heartbeat).
        sweeps = {
            heartbeats.sweep(websocket.heartbeat),
            heartbeats.sweep(websocket.heartbeat + websocket.heartbeat_grace),
        }
        # The server's side ends once it has seen the close: then both entries are gone.
        async with asyncio.timeout(TIMEOUT):
            while running.broker.connections or any(len(s) for s in sweeps):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
