"""Where verification keys come from: HMAC secrets, PEM public keys and a JWKS document.

``KeySet.keys_for(alg, kid)`` gives the keys a token signed with ``alg`` (and naming ``kid``)
may be checked with. The families never mix: an HMAC algorithm gets the configured secrets only,
never a public key (so a token signed with a public key as HMAC secret fails), and an asymmetric
algorithm gets public keys only.

A JWKS document is read from a file or fetched over HTTPS (plain ``http://`` only from a loopback
host, for tests and sidecars) in a worker thread, never on the event loop. It is cached for its
``Cache-Control: max-age`` (else ``auth.jwks_cache_ttl``); a stale copy is kept and used while the
source is down. A ``kid`` not in the document triggers one refresh, at most one per
``auth.jwks_min_refresh_interval``; concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.auth.identity import Refused
from broker.logs import get_logger, redact_text
from broker.settings import AuthSettings

log = get_logger("broker.auth.keys")

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: Largest JWKS document read, in bytes.
_MAX_JWKS_BYTES: Final = 1024 * 1024
_MAX_AGE_RE: Final = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Fetched:
    keys: dict[str | None, list[Any]]
    max_age: float | None


class JwksSource:
    """A JWKS document from a file or a URL, cached and refreshed off the event loop."""

    def __init__(self, location: str, settings: AuthSettings) -> None:
        self.location = location
        self.is_url = location.startswith(("https://", "http://"))
        self._settings = settings
        #: Keys by ``kid`` (None for keys without one).
        self._keys: dict[str | None, list[Any]] = {}
        self._loaded = False
        self._expires = 0.0
        self._last_attempt = -1e9
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0

    async def keys(self, kid: str | None) -> list[Any]:
        """The keys for ``kid`` (all keys when None); refreshes when stale or ``kid`` is new.

        Raises ``Refused`` (with ``reconnect``) when no document could ever be loaded."""
        now = time.monotonic()
        known = kid is None or kid in self._keys
        stale = not self._loaded or now >= self._expires or not known
        if stale and (
            self._inflight is not None
            or now - self._last_attempt >= self._settings.jwks_min_refresh_interval
        ):
            await self.refresh()
        if not self._loaded:
            raise Refused("the signing keys cannot be loaded", reconnect=True)
        if kid is None:
            return [key for keys in self._keys.values() for key in keys]
        return list(self._keys.get(kid, ()))

    async def refresh(self) -> None:
        """Load the document again (one fetch for every concurrent caller); never raises."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        self._last_attempt = time.monotonic()
        try:
            self.fetches += 1
            fetched = await anyio.to_thread.run_sync(self._fetch)
        except Exception as exc:
            log.warning(
                "auth.jwks_unavailable",
                source=redact_text(self.location),
                error=str(exc)[:200],
                stale_keys=self._loaded,
            )
        else:
            self._keys = fetched.keys
            self._loaded = True
            ttl = self._settings.jwks_cache_ttl if fetched.max_age is None else fetched.max_age
            self._expires = time.monotonic() + ttl
            log.info("auth.jwks_loaded", source=redact_text(self.location), keys=len(fetched.keys))
        finally:
            inflight, self._inflight = self._inflight, None
            inflight.set_result(None)

    def _fetch(self) -> _Fetched:
        """Read and parse the document (in a worker thread)."""
        max_age: float | None = None
        if self.is_url:
            request = urllib.request.Request(self.location, headers={"Accept": "application/json"})
            timeout = self._settings.jwks_timeout
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read(_MAX_JWKS_BYTES + 1)
                if match := _MAX_AGE_RE.search(response.headers.get("Cache-Control", "")):
                    max_age = float(match.group(1))
        else:
            with open(self.location, "rb") as file:
                body = file.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS document larger than {_MAX_JWKS_BYTES} bytes")
        document = json.loads(body)
        keys: dict[str | None, list[Any]] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                jwk = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError, TypeError):
                continue  # a key of a type this broker cannot use
            if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # encryption keys, and secrets that must not sit in a public document
            kid = entry.get("kid")
            keys.setdefault(kid if isinstance(kid, str) else None, []).append(jwk.key)
        return _Fetched(keys, max_age)


class KeySet:
    """Every verification key of the ``[auth]`` settings."""

    def __init__(self, settings: AuthSettings) -> None:
        self.hmac: list[bytes] = [secret.encode() for secret in settings.hmac_secrets]
        pems = [pem.encode() for pem in settings.public_keys]
        pems += [Path(path).read_bytes() for path in settings.public_key_files]
        self.public: list[Any] = [load_pem_public_key(pem) for pem in pems]
        self.jwks = JwksSource(settings.jwks, settings) if settings.jwks else None

    async def keys_for(self, alg: str, kid: str | None) -> list[Any]:
        """Keys a token signed with ``alg`` naming ``kid`` is checked with; none if none fits.

        Raises ``Refused`` when the JWKS document is needed and cannot be loaded."""
        if alg in HMAC_ALGORITHMS:
            return list(self.hmac)
        if alg not in ASYMMETRIC_ALGORITHMS:
            return []
        keys = list(self.public)
        if self.jwks is not None:
            keys += await self.jwks.keys(kid)
        return keys


def check_key_material(settings: AuthSettings) -> list[tuple[tuple[str | int, ...], str, str]]:
    """Problems with the configured keys, as (key path, value, expectation), for config errors."""
    problems: list[tuple[tuple[str | int, ...], str, str]] = []
    for index, secret in enumerate(settings.hmac_secrets):
        if "-----BEGIN" in secret:
            problems.append(
                (
                    ("auth", "hmac_secrets", index),
                    secret,
                    "expected an HMAC secret, not a PEM key (public keys go in auth.public_keys)",
                )
            )
        elif len(secret.encode()) < 32:
            problems.append(
                (("auth", "hmac_secrets", index), secret, "expected a secret of 32 bytes or more")
            )
    for index, pem in enumerate(settings.public_keys):
        try:
            load_pem_public_key(pem.encode())
        except (ValueError, TypeError) as exc:
            problems.append(
                (("auth", "public_keys", index), pem, f"expected a PEM public key ({exc})")
            )
    for index, path in enumerate(settings.public_key_files):
        try:
            load_pem_public_key(Path(path).read_bytes())
        except OSError as exc:
            problems.append(
                (("auth", "public_key_files", index), path, f"cannot read it: {exc.strerror}")
            )
        except (ValueError, TypeError) as exc:
            problems.append(
                (("auth", "public_key_files", index), path, f"expected a PEM public key ({exc})")
            )
    jwks = settings.jwks
    if jwks.startswith("http://") and not _is_loopback_url(jwks):
        problems.append(
            (("auth", "jwks"), jwks, "expected an https:// URL (http:// only for a loopback host)")
        )
    return problems
