"""Logging what clients do wrong, without letting clients flood the log.

A client that sends a bad handshake, stays silent, sends invalid UTF-8 or cuts a request short is
not a fault of the broker: it gets one line, at ``info`` (or ``warning`` for what looks like
abuse), without a traceback, at most once per connection (callers log at the point that ends
the connection). Across all clients the lines are rate-limited (``log.client_faults_per_second``,
a token bucket with a burst of the same size): past it they are only counted, and the next line
that gets through carries ``suppressed``, the number left out since the last one.
"""

from __future__ import annotations

import time
from typing import Any

from broker.logs import get_logger

log = get_logger("broker.client_faults")


class ClientFaultLog:
    """A token bucket in front of ``log``: ``rate`` lines per second, bursts of ``rate``."""

    __slots__ = ("_rate", "_suppressed", "_tokens", "_updated")

    def __init__(self, rate: float = 10.0) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = time.monotonic()
        self._suppressed = 0

    def configure(self, rate: float) -> None:
        self._rate = self._tokens = rate
        self._updated = time.monotonic()

    @property
    def suppressed(self) -> int:
        """Lines left out since the last one logged."""
        return self._suppressed

    def _take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self._suppressed += 1
        return False

    def info(self, event: str, **fields: Any) -> None:
        if self._take():
            log.info(event, **self._with_count(fields))

    def warning(self, event: str, **fields: Any) -> None:
        if self._take():
            log.warning(event, **self._with_count(fields))

    def _with_count(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed = 0
        return fields


#: The process's one budget, shared by the HTTP and WebSocket protocols and the endpoints.
client_faults = ClientFaultLog()


def peer(client: tuple[str, int] | None) -> str | None:
    """``host:port`` of a transport's peer, as ``connection.opened`` writes ``remote``."""
    return None if client is None else f"{client[0]}:{client[1]}"
