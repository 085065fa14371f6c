"""Centrifugo connection and subscription tokens, checked by the broker's own authentication
(broker/auth): the same JWTs, claims (``sub``, ``exp``, ``info``, ``channels``, ``subs``;
``channel`` in a subscription token) and settings as ``/v1/ws``.
"""

from __future__ import annotations

from broker.auth import Auth, Identity, Refused


async def verify_connect(auth: Auth, token: str) -> Identity:
    """The identity a ``connect`` token proves (none: anonymous where allowed). Raises
    ``Refused``."""
    return await auth.identity_from_connect(token or None)


async def verify_refresh(auth: Auth, token: str, current: Identity) -> Identity:
    """The identity a ``refresh`` token proves, for the same user. Raises ``Refused``."""
    if auth.verifier is None:
        raise Refused("this broker does not use tokens")
    identity = await auth.verifier.identity(token)
    if identity.user != current.user:
        raise Refused("refresh token of another user")
    return identity


async def verify_sub_refresh(
    auth: Auth, identity: Identity, channel: str, token: str
) -> float | None:
    """When a subscription token for ``channel`` expires (None: never). Raises ``Refused``."""
    if auth.verifier is None:
        raise Refused("this broker does not use tokens")
    granted, expires_at = await auth.verifier.subscription(token, identity.user)
    if granted != channel:
        raise Refused(f"subscription token for another channel than {channel!r}")
    return expires_at or None
