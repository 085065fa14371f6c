"""The Lua scripts the Redis backplane runs, and the wire format of its pub/sub messages.

Keys of channel ``C`` under prefix ``P`` (see ``RedisKeys``):

* ``P:m:C``  a hash: ``e`` the epoch, ``o`` the latest offset;
* ``P:s:C``  the stream of retained publications, entry ID ``<offset>-0``, fields ``d`` (data),
  ``c`` (its encoding: ``j`` JSON or ``m`` MessagePack), ``f`` (publisher, empty for the HTTP
  API) and ``t`` (milliseconds since the epoch, for the TTL);
* ``P:p:C``  a sorted set of presence members, scored by expiry time in milliseconds;
* ``P:c:C``  the pub/sub channel of live publications and announcements;
* ``P:i:C#K`` the head (``<offset>|<epoch>``) of the publication made with idempotency key ``K``
  on ``C``, expiring after ``backplane.idempotency_window`` (``#`` is not in the channel alphabet,
  so no two channel and key pairs share a name).

On Redis Cluster (``RedisKeys.tagged``) the channel part is a hash tag, ``{C}``: every key of a
channel lives in one slot, so the script, which touches several of them, runs on one node.

``PUBLISH_SCRIPT`` is the whole publication, atomically: with an idempotency key (``KEYS[4]``) it
first looks the key up and, when the key was used already, returns the head stored with it and
does nothing else; otherwise it creates the stream's epoch when there is none (a new channel, or
one whose keys Redis lost), takes the next offset, appends to the stream with its retention,
publishes, and stores the head under the idempotency key. Every process therefore sees one order
per channel, with no gap and no duplicate, however many processes publish into it.

A live message is ``p|<offset>|<epoch>|<encoding>|<publisher>|<data>``: the fields before the data
never contain ``|`` (digits, URL-safe ids, one letter), so the data is everything after the fifth.
An announcement is ``a|<process>|<JSON join or leave>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.settings import NamespaceSettings
from protocol import CODECS, Encoding

#: The letter that tags a publication's encoding in the stream and in live messages.
ENCODING_TAGS: Final = {Encoding.JSON: b"j", Encoding.MSGPACK: b"m"}
TAG_CODECS: Final = {tag: CODECS[encoding] for encoding, tag in ENCODING_TAGS.items()}
#: How long the head of a channel without history outlives its last publication.
HEAD_KEEP_MS: Final = 24 * 3600 * 1000


def head_keep_ms(options: NamespaceSettings) -> int:
    """How long a channel's head (``P:m:C``) outlives its last publication, in ms (0: for ever)."""
    if options.history_size and options.history_ttl <= 0:
        return 0  # Retained until evicted by size: the head lives as long as the history.
    return max(HEAD_KEEP_MS, int(options.history_ttl * 1000))


PUBLISH_SCRIPT: Final = """
local meta, stream, channel, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local new_epoch, now_ms = ARGV[1], ARGV[5]
local size, ttl_ms, keep_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local encoding, publisher, data, publish = ARGV[6], ARGV[7], ARGV[8], ARGV[10]
if idem then
  local seen = redis.call('GET', idem)
  if seen then
    local bar = string.find(seen, '|', 1, true)
    return {tonumber(string.sub(seen, 1, bar - 1)), string.sub(seen, bar + 1)}
  end
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = new_epoch
  redis.call('HSET', meta, 'e', epoch)
  redis.call('DEL', stream)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0',
             'd', data, 'c', encoding, 'f', publisher, 't', now_ms)
  if ttl_ms > 0 then redis.call('PEXPIRE', stream, ttl_ms) else redis.call('PERSIST', stream) end
end
if keep_ms > 0 then redis.call('PEXPIRE', meta, keep_ms) else redis.call('PERSIST', meta) end
local live = 'p|' .. offset .. '|' .. epoch .. '|' .. encoding .. '|' .. publisher .. '|'
redis.call(publish, channel, live .. data)
if idem then redis.call('SET', idem, offset .. '|' .. epoch, 'PX', ARGV[9]) end
return {offset, epoch}
"""

#: The head of a channel, creating its epoch if it has none, so that every process agrees on it.
HEAD_SCRIPT: Final = """
local meta = KEYS[1]
local new_epoch, keep_ms = ARGV[1], tonumber(ARGV[2])
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = new_epoch
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
  if keep_ms > 0 then redis.call('PEXPIRE', meta, keep_ms) end
end
local offset = redis.call('HGET', meta, 'o') or '0'
return {tonumber(offset), epoch}
"""


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str
    #: Redis Cluster: the channel part of each key is a hash tag, ``{C}``.
    tagged: bool = False

    def _part(self, channel: str) -> str:
        return f"{{{channel}}}" if self.tagged else channel

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:m:{self._part(channel)}"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}:s:{self._part(channel)}"

    def presence(self, channel: str) -> str:
        return f"{self.prefix}:p:{self._part(channel)}"

    def live(self, channel: str) -> str:
        return f"{self.prefix}:c:{self._part(channel)}"

    def live_prefix(self) -> str:
        """What every live pub/sub channel's name starts with."""
        return f"{self.prefix}:c:"

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.prefix}:i:{self._part(channel)}#{key}"

    def channel_of(self, live_key: str) -> str:
        part = live_key[len(self.prefix) + 3 :]
        return part[1:-1] if self.tagged else part

    def bus(self) -> str:
        """The pub/sub channel every process listens to: control requests and answers, and the
        frames of plain-text rooms."""
        return f"{self.prefix}:bus"

    def health(self, process: str) -> str:
        return f"{self.prefix}:health:{process}"
