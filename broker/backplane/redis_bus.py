"""The broker's bus on Redis: one pub/sub channel (``P:bus``) every process listens to.

It carries what is about the whole broker rather than one channel (docs/scaleout.md, "One
broker"): frames of plain-text rooms (the chat of ``/ws/chat``), and the control path's requests
and answers (``broker.backplane.control``). It lives on the first shard; the shard's pub/sub link
subscribes to it with its health channel and hands its messages to ``on_message``. Messages:

* ``m|<process>|<room>|<frame>``: a room frame said on ``<process>`` (which ignores its own);
* ``q|<JSON ControlRequest>``: every process (the sender too) carries it out;
* ``y|<JSON ControlAnswer>``: for the process named in ``to``, which gathers the answers.

A request's sender publishes it and learns from ``PUBLISH`` (``SPUBLISH`` on a cluster) how many
connections received it, one per process: that many answers are awaited, within
``backplane.timeout``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import anyio
import msgspec
from redis.exceptions import RedisError

from broker.backplane.base import BackplaneUnavailable, ControlEvent, Deliver, RoomFrame
from broker.backplane.control import (
    Control,
    ControlAnswer,
    ControlRequest,
    Gathering,
    answer_decoder,
    request_decoder,
    request_encoder,
)
from broker.logs import get_logger
from broker.settings import BackplaneSettings

if TYPE_CHECKING:
    from broker.backplane.redis import RedisShard

log = get_logger("broker.backplane.redis")

# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)


class RedisBus:
    """See the module docstring."""

    def __init__(self, shard: RedisShard, settings: BackplaneSettings, process: str) -> None:
        self.shard = shard
        self.settings = settings
        self.process = process
        self.key = shard.keys.bus()
        self.deliver: Deliver | None = None
        self._gatherings: dict[str, Gathering] = {}
        shard.on_bus = self.on_message

    def room_publish(self, room: str, payload: bytes) -> None:
        body = b"m|" + self.process.encode() + b"|" + room.encode() + b"|" + payload
        self.shard._spawn(self.shard._publish_raw, self.key, body)

    async def control(self, command: Control) -> list[ControlAnswer]:
        shard = self.shard
        if not shard.ready:
            raise BackplaneUnavailable("redis is not reachable")
        request = ControlRequest(id=secrets.token_urlsafe(9), origin=self.process, command=command)
        gathering = self._gatherings[request.id] = Gathering()
        try:
            try:
                with anyio.fail_after(self.settings.timeout):
                    receivers = await shard.publish_raw(
                        self.key, b"q|" + request_encoder.encode(request)
                    )
            except _FAILURES as exc:
                raise BackplaneUnavailable(str(exc) or type(exc).__name__) from None
            # Every process listens on the bus with one connection: that many answers.
            gathering.expect(receivers)
            return await gathering.wait(self.settings.timeout)
        finally:
            del self._gatherings[request.id]

    def answer(self, answer: ControlAnswer) -> None:
        self.shard._spawn(self.shard._publish_raw, self.key, b"y|" + request_encoder.encode(answer))

    async def on_message(self, data: bytes) -> None:
        deliver = self.deliver
        assert deliver is not None
        kind, body = data[:2], data[2:]
        try:
            if kind == b"m|":
                process, room, payload = body.split(b"|", 2)
                if process.decode() != self.process:
                    await deliver(RoomFrame(room.decode(), payload))
            elif kind == b"q|":
                await deliver(ControlEvent(request_decoder.decode(body)))
            elif kind == b"y|":
                answer = answer_decoder.decode(body)
                gathering = self._gatherings.get(answer.id)
                if answer.to == self.process and gathering is not None:
                    gathering.add(answer)
        except (msgspec.DecodeError, ValueError) as exc:
            # Another broker version on the same prefix, say: skip it.
            log.warning("backplane.bus_message_ignored", error=str(exc))
