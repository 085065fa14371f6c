"""A Redis shard's reads: a channel's head, and its retained publications (part of the shard).

``ShardHistory`` is a mixin of ``broker.backplane.redis.RedisShard``. The head (``P:m:C``: epoch
and latest offset) is read with ``HEAD_SCRIPT``, which creates the epoch of a channel that has
none, so that every process agrees on it. A page of history is the head first, then the stream's
entries after an offset (``read``) or the latest ones (``latest``), skipping entries past their
TTL that Redis has not trimmed yet. A read the shard cannot make raises ``BackplaneUnavailable``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from broker.backplane.base import BackplaneUnavailable, Head, Page
from broker.backplane.redis_scripts import HEAD_KEEP_MS, TAG_CODECS, RedisKeys, head_keep_ms
from broker.settings import NamespaceSettings
from protocol import PublicationFrames

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

    from broker.monitor.histogram import Histogram

# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)


class ShardHistory:
    """A shard's head and history reads. See the module docstring."""

    if TYPE_CHECKING:
        keys: RedisKeys
        redis: aioredis.Redis
        read_seconds: Histogram
        _head_script: AsyncScript

    async def head(self, channel: str, options: NamespaceSettings | None = None) -> Head:
        keep = HEAD_KEEP_MS if options is None else head_keep_ms(options)
        keys = [self.keys.meta(channel), self.keys.stream(channel)]
        try:
            offset, epoch = await self._head_script(
                keys=keys, args=[secrets.token_urlsafe(6), keep]
            )
        except _FAILURES as exc:
            raise BackplaneUnavailable(str(exc)) from None
        return Head(epoch.decode(), int(offset))

    async def read(
        self, channel: str, after: int, limit: int | None, options: NamespaceSettings
    ) -> Page:
        started = time.monotonic()
        head = await self.head(channel, options)
        key = self.keys.stream(channel)
        publications: list[PublicationFrames] = []
        batch = limit
        try:
            # Entries past their TTL that Redis has not trimmed yet are skipped, and ``limit``
            # counts retained publications only: read on past the expired ones.
            while limit is None or len(publications) < limit:
                entries: Any = await self.redis.xrange(key, min=f"({after}-0", max="+", count=batch)
                if not entries:
                    break
                publications += self._publications(channel, head, entries, options)
                if limit is None or batch is None or len(entries) < batch:
                    break
                after = int(entries[-1][0].split(b"-", 1)[0])
                batch = max(limit - len(publications), 2 * batch)
        except _FAILURES as exc:
            raise BackplaneUnavailable(str(exc)) from None
        finally:
            self.read_seconds.observe(time.monotonic() - started)
        return Page(head, publications if limit is None else publications[:limit])

    async def latest(self, channel: str, limit: int | None, options: NamespaceSettings) -> Page:
        started = time.monotonic()
        head = await self.head(channel, options)
        if limit == 0:
            return Page(head, [])
        try:
            entries: Any = await self.redis.xrevrange(
                self.keys.stream(channel), max="+", min="-", count=limit
            )
        except _FAILURES as exc:
            raise BackplaneUnavailable(str(exc)) from None
        finally:
            self.read_seconds.observe(time.monotonic() - started)
        return Page(head, self._publications(channel, head, list(reversed(entries or [])), options))

    def _publications(
        self,
        channel: str,
        head: Head,
        entries: Sequence[tuple[bytes, dict[bytes, bytes]]],
        options: NamespaceSettings,
    ) -> list[PublicationFrames]:
        oldest = time.time() * 1000 - options.history_ttl * 1000 if options.history_ttl > 0 else 0
        publications = []
        for entry_id, fields in entries:
            if int(fields[b"t"]) < oldest:
                continue  # Past its TTL: no longer retained, though Redis has not trimmed it.
            publications.append(
                PublicationFrames(
                    channel=channel,
                    offset=int(entry_id.split(b"-", 1)[0]),
                    epoch=head.epoch,
                    publisher=fields[b"f"].decode() or None,
                    data=msgspec.Raw(fields[b"d"]),
                    source=TAG_CODECS[fields[b"c"]],
                )
            )
        return publications
