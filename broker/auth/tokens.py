"""Issuing HMAC-signed tokens with the broker's own secret (``broker token``), for tests and local
use. Production tokens come from the application's back end, which holds the same secret (or the
private key whose public half the broker has)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt

from broker.auth.keys import HMAC_ALGORITHMS
from broker.settings import AuthSettings


class CannotIssue(Exception):
    """The settings have no HMAC secret or no HMAC algorithm to sign with."""


def issue_token(
    settings: AuthSettings,
    *,
    sub: str,
    ttl: float,
    channels: Sequence[str] = (),
    publish: Sequence[str] = (),
    subs: Sequence[str] = (),
    info: dict[str, Any] | None = None,
    channel: str | None = None,
) -> str:
    """A token for ``sub`` valid ``ttl`` seconds; a subscription token when ``channel`` is set."""
    algorithm = next((a for a in settings.algorithms if a in HMAC_ALGORITHMS), None)
    if algorithm is None or not settings.hmac_secrets:
        raise CannotIssue(
            "auth.hmac_secrets and an HS256/384/512 algorithm in auth.algorithms are needed"
        )
    names = settings.claims
    now = int(time.time())
    claims: dict[str, Any] = {names.sub: sub, "iat": now, "exp": now + int(ttl)}
    if settings.audience:
        claims["aud"] = settings.audience
    if settings.issuer:
        claims["iss"] = settings.issuer
    if channel is not None:
        claims[names.channel] = channel
    else:
        if channels:
            claims[names.channels] = list(channels)
        if publish:
            claims[names.publish] = list(publish)
        if subs:
            claims[names.subs] = list(subs)
        if info is not None:
            claims[names.info] = info
    return jwt.encode(claims, settings.hmac_secrets[0], algorithm=algorithm)
