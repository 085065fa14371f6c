"""What the Python client raises. Every exception is a ``ClientError``::

    ClientError
    ├── RequestError        the server answered a request with ``error`` (``code``, ``message``);
    │                       the connection stays open
    ├── RequestTimeout      no reply within the request timeout (also a ``TimeoutError``)
    ├── ConnectionLost      the connection dropped while the request was in flight: it may or may
    │                       not have taken effect. The client reconnects by itself.
    ├── ResyncNeeded        raised once by a subscription's iterator when recovery failed; the
    │                       subscription goes on from ``(epoch, offset)``
    └── ClientClosed        the client is closed for good; every later call raises it
        ├── ConnectFailed   it could not (re)connect: the first attempt failed, or
        │                   ``max_attempts`` reconnection attempts in a row did
        └── Disconnected    the server closed the connection and said not to come back
                            (``disconnect`` with ``reconnect: false``, or a close code that a
                            retry cannot fix, such as 4001 or 1009)

Nothing here does I/O; the codes are those of docs/protocol.md §1.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every exception the client raises."""


class RequestError(ClientError):
    """An ``error`` reply: ``code`` is one of ``protocol.ErrorCode``'s values."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestTimeout(ClientError, TimeoutError):
    """No reply came within the request timeout."""


class ConnectionLost(ClientError):
    """The connection dropped before the reply came; the request may or may not have been done."""


class ResyncNeeded(ClientError):
    """Recovery of ``channel`` failed: publications were missed and cannot be fetched.

    The subscription is still alive. The next message it yields comes after ``offset`` in the
    stream ``epoch``; whatever came before must be reloaded from the application's own source of
    truth (docs/protocol.md §1, "Channels, offsets, epochs and recovery").
    """

    def __init__(self, channel: str, epoch: str, offset: int) -> None:
        super().__init__(
            f"resync needed on {channel!r}: publications were missed; "
            f"delivery goes on after offset {offset} of epoch {epoch!r}"
        )
        self.channel = channel
        self.epoch = epoch
        self.offset = offset


class ClientClosed(ClientError):
    """The client is closed: it was closed by its owner, or gave up (see the subclasses)."""


class ConnectFailed(ClientClosed):
    """The client could not connect; ``__cause__`` holds the last error."""


class Disconnected(ClientClosed):
    """The server ended the session and told the client not to reconnect."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"disconnected by the server: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
