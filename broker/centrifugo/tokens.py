"""Where Centrifugo connection and subscription tokens are checked: the one place a JWT
verifier plugs in.

The broker has no token verification yet, so every connection is anonymous: a ``connect``
without a token is accepted, and a token it cannot verify is refused (3500 "invalid token")
rather than ignored, so that a client relying on its identity learns at once. Subscription
tokens are refused the same way (error 103). Once the broker verifies JWTs, ``verify_connect``
and ``verify_subscribe`` call it with the claims Centrifugo's SDK users write (``sub``, ``exp``,
``info``, ``channels``, ``subs``; ``channel`` in a subscription token).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.settings import Settings


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: ``user`` None when anonymous; ``expires_at`` unix seconds or None."""

    user: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A token that is not accepted, and why (said to the client and logged)."""

    reason: str


ANONYMOUS = Identity()


def verify_connect(token: str, settings: Settings) -> Identity | Refused:
    """The identity a ``connect`` (or ``refresh``) token proves.

    TOKEN VERIFICATION PLUGS IN HERE: decode and verify the JWT, then return its ``sub`` as
    ``user`` and its ``exp`` as ``expires_at``.
    """
    if not token:
        return ANONYMOUS
    return Refused("this broker does not verify connection tokens yet; connect without one")


def verify_subscribe(
    identity: Identity, channel: str, token: str, settings: Settings
) -> Refused | None:
    """None when ``identity`` may subscribe to ``channel`` with ``token`` ("" for none).

    SUBSCRIPTION TOKEN VERIFICATION PLUGS IN HERE (the token's ``channel`` claim must name
    ``channel``, its ``sub`` the connection's user).
    """
    if not token:
        return None
    return Refused("this broker does not verify subscription tokens yet")
