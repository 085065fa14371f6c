"""Who a connection is: ``Identity``, and ``Refused``, the reason a credential was not accepted.

An ``Identity`` comes from a verified connection token (broker/auth/jwt.py), from the host app's
``authenticate`` callable (``create_app``), or is ``ANONYMOUS``. It is immutable; a ``refresh``
replaces it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """The user behind a connection and what its credential allows."""

    #: The user id (the token's ``sub``); None for an anonymous connection.
    user: str | None = None
    #: Channel patterns the user may subscribe to (``chat:*``, ``user:{sub}``).
    channels: tuple[str, ...] = ()
    #: Channel patterns the user may publish to.
    publish: tuple[str, ...] = ()
    #: Shown to others in presence.
    info: dict[str, Any] | None = None
    #: Channels the server subscribes the connection to at connect.
    subs: tuple[str, ...] = ()
    #: When the credential expires (unix seconds); None for never.
    expires_at: float | None = None
    #: Whatever the host app's ``authenticate`` returned, for its ``authorize`` hook.
    extra: Any = field(default=None, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Identity()


class Refused(Exception):
    """A credential was not accepted. ``str()`` says why, never containing the token.

    ``reconnect`` is True only when retrying later can help (the key source is unreachable).
    """

    def __init__(self, reason: str, *, reconnect: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reconnect = reconnect
