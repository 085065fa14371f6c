"""API keys of the HTTP API (``[api]``): who may call it, and for what.

Keys come from ``api.keys`` (in the file, or ``BROKER_API__KEYS='["k1","k2"]'`` in the
environment), from ``api.keys_file`` (one per line) and, limited to publishing, from
``api.publish_keys``. Several keys are valid at once, so a key is rotated by adding the new one,
moving the callers, and removing the old one. A request presents its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is compared with every configured key
in constant time (``hmac.compare_digest``), so timing says nothing about how much of it matched.

With no key configured the API is open: allowed only where anonymous clients are (a loopback
``server.host`` or ``auth.insecure_allow_anonymous``), and logged at start-up.
"""

from __future__ import annotations

import enum
import hmac
from pathlib import Path

from broker.settings import ApiSettings


class Scope(enum.Enum):
    #: Every endpoint.
    FULL = "full"
    #: ``/v1/publish`` and ``/v1/broadcast`` only.
    PUBLISH = "publish"


def read_keys_file(path: str) -> list[str]:
    """The keys in ``path``: one per line, blank lines and ``#`` comments skipped."""
    keys = []
    for line in Path(path).read_text().splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys.append(key)
    return keys


class ApiKeys:
    def __init__(self, settings: ApiSettings) -> None:
        full = list(settings.keys)
        if settings.keys_file:
            full += read_keys_file(settings.keys_file)
        self._keys: list[tuple[bytes, Scope]] = [(key.encode(), Scope.FULL) for key in full]
        self._keys += [(key.encode(), Scope.PUBLISH) for key in settings.publish_keys]

    @property
    def required(self) -> bool:
        """Whether a request needs a key (any is configured)."""
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def scope(self, presented: str | None) -> Scope | None:
        """What ``presented`` may do; None when it is no configured key."""
        if not presented:
            return None
        candidate = presented.encode()
        found: Scope | None = None
        for key, scope in self._keys:
            # Every key is compared, whichever matches: the time taken does not depend on it.
            if hmac.compare_digest(key, candidate) and found is None:
                found = scope
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents, from ``Authorization: Bearer`` or ``X-API-Key``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() in ("bearer", "apikey"):
            return credentials.strip()
    return None
