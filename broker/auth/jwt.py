"""Verifying JWT connection and subscription tokens (PyJWT) into an ``Identity``.

The algorithms accepted are ``auth.algorithms`` and nothing else: the token's ``alg`` header only
picks among them, ``none`` is never accepted, and the keys tried depend on the algorithm's family
(broker/auth/keys.py), so an HMAC token signed with a public key fails. ``exp`` is required;
``nbf`` and ``iat`` are checked when present, ``aud`` and ``iss`` when configured, all with
``auth.leeway`` seconds of tolerance.

Verified connection tokens are cached (up to ``auth.verified_cache_size``, until they expire): a
client that reconnects with the same token costs a dictionary lookup, not a signature check.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from broker.auth.identity import Identity, Refused
from broker.auth.keys import KeySet
from broker.settings import AuthSettings

__all__ = ["TokenVerifier"]


def _strings(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refused(f"claim {name!r} must be a list of strings")
    return tuple(value)


class TokenVerifier:
    """Checks tokens against the ``[auth]`` settings. One per broker."""

    def __init__(self, settings: AuthSettings, keys: KeySet | None = None) -> None:
        self.settings = settings
        self.keys = keys or KeySet(settings)
        self.algorithms = frozenset(settings.algorithms) - {"none"}
        self._cache: dict[str, Identity] = {}
        #: Signature checks made (cache misses), for tests and the benchmark.
        self.verified = 0

    async def identity(self, token: str) -> Identity:
        """The identity a connection token proves; raises ``Refused``."""
        cached = self._cache.get(token)
        if cached is not None:
            expires_at = cached.expires_at
            if expires_at is not None and expires_at + self.settings.leeway > time.time():
                return cached
            del self._cache[token]
        claims = await self.claims(token)
        names = self.settings.claims
        identity = Identity(
            user=self._user(claims),
            channels=_strings(claims, names.channels),
            publish=_strings(claims, names.publish),
            info=self._info(claims),
            subs=_strings(claims, names.subs),
            expires_at=float(claims["exp"]),
        )
        size = self.settings.verified_cache_size
        if size:
            if len(self._cache) >= size:
                # Forget the oldest half: amortised O(1), no per-entry bookkeeping.
                for old in list(self._cache)[: size // 2 + 1]:
                    del self._cache[old]
            self._cache[token] = identity
        return identity

    async def subscription(self, token: str, user: str | None) -> tuple[str, float]:
        """The channel a subscription token grants to ``user`` and its expiry; raises
        ``Refused`` unless it is valid and issued to that user."""
        claims = await self.claims(token)
        names = self.settings.claims
        channel = claims.get(names.channel)
        if not isinstance(channel, str):
            raise Refused(f"subscription token has no {names.channel!r} claim")
        if self._user(claims) != user:
            raise Refused("subscription token issued to another user")
        return channel, float(claims["exp"])

    def _user(self, claims: dict[str, Any]) -> str:
        name = self.settings.claims.sub
        user = claims.get(name)
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str) or not user:
            raise Refused(f"claim {name!r} must be a non-empty string")
        return user

    def _info(self, claims: dict[str, Any]) -> dict[str, Any] | None:
        name = self.settings.claims.info
        info = claims.get(name)
        if info is not None and not isinstance(info, dict):
            raise Refused(f"claim {name!r} must be an object")
        return info

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; raises ``Refused`` saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Refused("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Refused(f"algorithm {str(alg)[:20]!r} not accepted")
        kid = header.get("kid")
        keys = await self.keys.keys_for(alg, kid if isinstance(kid, str) else None)
        if not keys:
            raise Refused("unknown signing key" if kid is not None else "no key for the algorithm")
        settings = self.settings
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=settings.audience or None,
                    issuer=settings.issuer or None,
                    leeway=settings.leeway,
                    options={"require": ["exp"], "verify_aud": bool(settings.audience)},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Refused("token expired") from None
            except jwt.ImmatureSignatureError:
                raise Refused("token not valid yet") from None
            except jwt.InvalidAudienceError:
                raise Refused("wrong audience") from None
            except jwt.InvalidIssuerError:
                raise Refused("wrong issuer") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Refused(f"token without {exc.claim!r} claim") from None
            except jwt.InvalidKeyError:
                continue  # a key of another type than the algorithm needs
            except jwt.PyJWTError as exc:
                raise Refused(f"invalid token: {str(exc)[:100]}") from None
            self.verified += 1
            return claims
        raise Refused("bad signature")
