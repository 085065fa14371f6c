"""The frames of one write, as WebSocket messages: what a connection's writers put on the socket.

``take_frames`` empties the outbox (``gap`` messages first, for publications it dropped);
``encode`` packs them into runs of one kind (text or binary), in batch frames on ``/v1/ws``, and
counts them in the connection's statistics and its delivery latency metric. Both writers (the
task of ``broker.asgi_writer`` and the callbacks of ``broker.link_writer``) call them once per
write.
"""

from __future__ import annotations

import time

from broker.connection_state import ConnectionState
from protocol import Frame, Gap


class FrameEncoder(ConnectionState):
    """Turns what the outbox holds into the messages of one write."""

    __slots__ = ()

    def take_frames(self) -> list[Frame]:
        outbox = self.outbox
        frames = outbox.drain()
        if not outbox._skipped:  # nothing dropped (the usual case): no call, no list
            return frames
        skipped = outbox.take_skipped()
        codec = self.codec
        if codec is not None:
            self.hub.instruments.gap_messages += len(skipped)
            # The gaps come first: they stand where the dropped publications stood.
            gaps = [
                Frame(codec.encode(Gap(channel=s.channel, from_offset=s.first, to_offset=s.last)))
                for s in skipped
            ]
            frames = gaps + frames
        return frames

    def observe_latency(self, frames: list[Frame]) -> None:
        """Delivery latency (metrics, unless ``monitor.delivery_latency`` is off), for one write
        in ``monitor.delivery_latency_every``: the age of the oldest publication in it."""
        latency = self._latency
        if latency is not None:
            latency.countdown -= 1
            if latency.countdown <= 0:
                # The first write with a publication from here on is measured (not a reply).
                for frame in frames:
                    if frame.accepted:
                        latency.observe(time.monotonic() - frame.accepted)
                        latency.countdown = latency.every
                        break

    def encode(self, frames: list[Frame]) -> list[tuple[list[Frame], bool]]:
        """WebSocket messages for ``frames``, as runs of one kind (text or binary).

        On ``/v1/ws`` several messages are packed into batch frames of at most
        ``queue.max_batch`` messages and about ``queue.max_batch_bytes`` bytes (a lone larger
        message goes alone; a lone message keeps its shared ``Frame``). On the plain endpoints
        each message is a frame of its own.
        """
        stats = self.stats
        count = len(frames)
        stats.messages_out += count
        # ``observe_latency``, inline: this runs once per write (measuring one in ``every``).
        latency = self._latency
        if latency is not None:
            latency.countdown -= 1
            if latency.countdown <= 0:
                # The first write with a publication from here on is measured (not a reply).
                for frame in frames:
                    if frame.accepted:
                        latency.observe(time.monotonic() - frame.accepted)
                        latency.countdown = latency.every
                        break
        codec = self.codec
        if codec is None:
            runs: list[tuple[list[Frame], bool]] = []
            for frame in frames:
                if runs and runs[-1][1] == (not frame.binary):
                    runs[-1][0].append(frame)
                else:
                    runs.append(([frame], not frame.binary))
                stats.bytes_out += len(frame.data)
            return runs
        if count == 1:
            stats.bytes_out += len(frames[0].data)
            return [(frames, codec.text)]
        queue = self.settings.queue
        batches: list[Frame] = []
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            data = frame.data
            if batch and (
                len(batch) >= queue.max_batch or size + len(data) > queue.max_batch_bytes
            ):
                batches.append(Frame(codec.batch(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        if batch:
            batches.append(Frame(codec.batch(batch)))
        stats.bytes_out += sum(len(frame.data) for frame in batches)
        return [(batches, codec.text)]
