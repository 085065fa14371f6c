"""The publish pipeline on Redis Cluster: ``PublishPipeline``'s queue and batches, sent through
redis-py's cluster pipeline.

A batch's script runs are grouped by the node that owns each channel's slot (every key of a
channel shares its hash tag, so a run touches one slot) and sent as one pipeline per node; the
nodes' pipelines go out concurrently, and the batch takes one round trip (the slowest node's).
Runs for one node keep their order, so a channel's offsets follow the order of the publishes, as
on one server. A run answered ``NOSCRIPT`` (a node restarted, or a replica just promoted that
never loaded the script) is sent again after ``SCRIPT LOAD`` on every primary; as on one
server, a ``NOSCRIPT`` followed by a run that succeeded on the same batch is not sent again but
answered ``unavailable``, so nothing is published out of order. The cluster client follows
``MOVED`` and ``ASK`` redirections (a failover, a slot migration) by itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
from redis.exceptions import NoScriptError, ResponseError

from broker.backplane.base import Head
from broker.backplane.redis_pipeline import PublishPipeline, _Entry, _fail, _settle
from broker.logs import get_logger

log = get_logger("broker.backplane.redis")


class ClusterPublishPipeline(PublishPipeline):
    """See the module docstring."""

    async def _round_trip(self, entries: Sequence[_Entry], *, load: bool) -> list[_Entry]:
        self._round_trips += 1
        cluster: Any = self._redis
        noscript: list[_Entry] = []
        started = time.monotonic()
        try:
            with anyio.fail_after(self._timeout):
                if load:
                    await cluster.script_load(self._script)
                pipe = cluster.pipeline(transaction=False)
                for entry in entries:
                    pipe.evalsha(self._sha, len(entry.keys), *entry.keys, *entry.args)
                self._sent += len(entries)
                results = await pipe.execute(raise_on_error=False)
        finally:
            self.round_trip_seconds.observe(time.monotonic() - started)
        failures: list[ResponseError] = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, NoScriptError):
                noscript.append(entry)
            elif isinstance(result, Exception):
                if isinstance(result, ResponseError):
                    failures.append(result)
                _fail((entry,), str(result) or type(result).__name__)
            else:
                offset, epoch = result
                _settle(entry, Head(epoch.decode(), int(offset)))
        if noscript and len(noscript) != len(entries) and not load:
            # Some runs succeeded beside them; resending could reorder a channel: fail them.
            _fail(noscript, "redis lost the publish script")
            noscript = []
        if failures:
            log.warning("backplane.publish_failed", failed=len(failures), error=str(failures[0]))
        return noscript
