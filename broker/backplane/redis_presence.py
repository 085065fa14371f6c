"""A Redis shard's presence and join/leave announcements (part of the shard).

``ShardPresence`` is a mixin of ``broker.backplane.redis.RedisShard``. Presence members are kept
in a sorted set per channel (``P:p:C``) scored by expiry; each process renews its own members
every third of ``presence_ttl``, so the members of a process that died vanish within that time.
Writes run in the shard's tasks; a presence read, or a join/leave announcement, of a channel
waits for this process's pending presence writes of that channel (for at most
``backplane.timeout``), so that whoever saw ``subscribed`` or a ``join`` finds the member.
Announcements travel on the channel's pub/sub channel as ``a|<process>|<JSON>``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from redis.exceptions import RedisError

from broker.backplane.base import BackplaneUnavailable
from broker.backplane.redis_scripts import RedisKeys
from broker.logs import get_logger
from broker.settings import BackplaneSettings
from protocol import ClientInfo, Join, Leave

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from anyio.abc import TaskGroup

log = get_logger("broker.backplane.redis")

_member_encoder = msgspec.json.Encoder()
_member_decoder = msgspec.json.Decoder(ClientInfo)
# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)


class ShardPresence:
    """A shard's presence and announcements. See the module docstring."""

    if TYPE_CHECKING:
        settings: BackplaneSettings
        process: str
        keys: RedisKeys
        redis: aioredis.Redis
        _tasks: TaskGroup | None
        _presence: dict[str, dict[str, ClientInfo]]
        _presence_pending: dict[str, int]
        _presence_waiters: dict[str, anyio.Event]

        async def publish_raw(self, channel: str, body: bytes) -> int: ...
        def _spawn(self, task: Any, *args: Any) -> None: ...

    def presence_add(self, channel: str, member: ClientInfo) -> None:
        self._presence.setdefault(channel, {})[member.client] = member
        self._presence_change(channel, [member], [])

    def presence_remove(self, channel: str, member: ClientInfo) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(member.client, None)
            if not members:
                del self._presence[channel]
        self._presence_change(channel, [], [member])

    def _presence_change(
        self, channel: str, added: list[ClientInfo], removed: list[ClientInfo]
    ) -> None:
        if self._tasks is None:
            return
        self._presence_pending[channel] = self._presence_pending.get(channel, 0) + 1
        self._tasks.start_soon(self._presence_write_pending, channel, added, removed)

    async def _presence_write_pending(
        self, channel: str, added: list[ClientInfo], removed: list[ClientInfo]
    ) -> None:
        try:
            await self._presence_write(channel, added, removed)
        finally:
            left = self._presence_pending[channel] - 1
            if left:
                self._presence_pending[channel] = left
            else:
                del self._presence_pending[channel]
                waiter = self._presence_waiters.pop(channel, None)
                if waiter is not None:
                    waiter.set()

    async def _presence_settled(self, channel: str) -> None:
        """Wait until this process's presence writes of ``channel`` are done (or failed), for at
        most ``backplane.timeout``."""
        if channel not in self._presence_pending:
            return
        waiter = self._presence_waiters.setdefault(channel, anyio.Event())
        with anyio.move_on_after(self.settings.timeout):
            await waiter.wait()

    async def _presence_write(
        self, channel: str, added: list[ClientInfo], removed: list[ClientInfo]
    ) -> None:
        key = self.keys.presence(channel)
        expires = (time.time() + self.settings.presence_ttl) * 1000
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if added:
                    pipe.zadd(key, {_member_encoder.encode(m): expires for m in added})
                if removed:
                    pipe.zrem(key, *(_member_encoder.encode(m) for m in removed))
                pipe.pexpire(key, int(self.settings.presence_ttl * 1000))
                await pipe.execute()
        except _FAILURES as exc:
            # Renewal writes it again within a third of the TTL.
            log.info("backplane.presence_write_failed", channel=channel, error=str(exc))

    async def _renew_presence(self) -> None:
        while True:
            await anyio.sleep(self.settings.presence_ttl / 3)
            await self._write_all_presence()

    async def _write_all_presence(self) -> None:
        for channel, members in list(self._presence.items()):
            await self._presence_write(channel, list(members.values()), [])

    async def presence(self, channel: str) -> list[ClientInfo]:
        key = self.keys.presence(channel)
        await self._presence_settled(channel)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", time.time() * 1000)
                pipe.zrange(key, 0, -1)
                _, members = await pipe.execute()
        except _FAILURES as exc:
            raise BackplaneUnavailable(str(exc)) from None
        return [_member_decoder.decode(member) for member in members]

    def announce(self, channel: str, message: Join | Leave) -> None:
        body = b"a|" + self.process.encode() + b"|" + _member_encoder.encode(message)
        self._spawn(self._announce, channel, body)

    async def _announce(self, channel: str, body: bytes) -> None:
        # After the presence write it tells of: a join seen elsewhere is in presence there.
        await self._presence_settled(channel)
        await self._publish_raw(self.keys.live(channel), body)

    async def _publish_raw(self, key: str, body: bytes) -> None:
        try:
            await self.publish_raw(key, body)
        except _FAILURES as exc:
            log.info("backplane.announce_failed", error=str(exc))
