"""The security rules of a configuration, checked before start-up, and what start-up logs.

``problems`` yields what ``broker.config`` turns into config errors: anonymous clients (or an API
without keys) on a host other clients can reach without ``auth.insecure_allow_anonymous``, JWT
mode without keys, algorithms that are unknown or ``none``, keys that cannot be read.
``log_posture`` logs, once at start-up, how the broker is exposed, with every secret redacted,
and a warning for each thing opened up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from broker.auth.keys import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, check_key_material
from broker.logs import get_logger, redact_text
from broker.settings import AuthMode, Settings

log = get_logger("broker.security")

Problem = tuple[tuple[str | int, ...], Any, str]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``server.host``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def problems(settings: Settings) -> Iterator[Problem]:
    auth, api, host = settings.auth, settings.api, settings.server.host
    exposed = not is_loopback(host) and not auth.insecure_allow_anonymous
    if auth.mode is AuthMode.NONE and exposed:
        yield (
            ("auth", "mode"),
            auth.mode.value,
            f'expected "jwt" when server.host ({host!r}) is not a loopback address '
            "(or set auth.insecure_allow_anonymous = true to serve anonymous clients)",
        )
    if not (api.keys or api.keys_file or api.publish_keys) and exposed:
        yield (
            ("api", "keys"),
            None,
            f"expected at least one API key when server.host ({host!r}) is not a loopback "
            "address (or set auth.insecure_allow_anonymous = true for an open HTTP API)",
        )
    for index, algorithm in enumerate(auth.algorithms):
        if algorithm not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
            known = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            yield (("auth", "algorithms", index), algorithm, f"expected one of {known}")
    if auth.mode is AuthMode.JWT:
        if not auth.algorithms:
            yield (("auth", "algorithms"), None, "expected at least one algorithm")
        hmac = [a for a in auth.algorithms if a in HMAC_ALGORITHMS]
        asymmetric = [a for a in auth.algorithms if a in ASYMMETRIC_ALGORITHMS]
        if hmac and not auth.hmac_secrets:
            yield (
                ("auth", "hmac_secrets"),
                None,
                f"expected at least one secret for the algorithms {', '.join(hmac)}",
            )
        if asymmetric and not (auth.public_keys or auth.public_key_files or auth.jwks):
            yield (
                ("auth", "public_keys"),
                None,
                f"expected public keys (public_keys, public_key_files or jwks) for the "
                f"algorithms {', '.join(asymmetric)}",
            )
    yield from check_key_material(auth)
    if api.keys_file:
        try:
            with open(api.keys_file, encoding="utf-8") as file:
                file.read()
        except OSError as exc:
            yield (("api", "keys_file"), api.keys_file, f"cannot read it: {exc.strerror}")


def log_posture(settings: Settings, *, host_authentication: bool = False) -> None:
    """Log how the broker is exposed (secrets redacted); warn about what is opened up."""
    auth, api = settings.auth, settings.api
    mode = "host_app" if host_authentication else auth.mode.value
    log.info(
        "security.posture",
        auth_mode=mode,
        algorithms=auth.algorithms if auth.mode is AuthMode.JWT else [],
        hmac_secrets=["***"] * len(auth.hmac_secrets),
        public_keys=len(auth.public_keys) + len(auth.public_key_files),
        jwks=redact_text(auth.jwks) if auth.jwks else None,
        audience=auth.audience or None,
        issuer=auth.issuer or None,
        api_keys=["***"] * len(api.keys),
        api_keys_file=api.keys_file or None,
        api_publish_keys=["***"] * len(api.publish_keys),
        allowed_origins=settings.server.allowed_origins or "same origin",
    )
    if auth.mode is AuthMode.NONE and not host_authentication:
        if is_loopback(settings.server.host):
            log.info("security.anonymous_clients", reason="auth.mode is none on a loopback host")
        else:
            log.warning(
                "security.anonymous_clients",
                reason="auth.insecure_allow_anonymous: anyone who reaches the port is a client",
            )
    if auth.mode is AuthMode.JWT and auth.anonymous_connect:
        log.warning("security.anonymous_connect", reason="connections without a token accepted")
    if not (api.keys or api.keys_file or api.publish_keys):
        log.warning("security.open_http_api", reason="no API key configured: the API is open")
    if "*" in settings.server.allowed_origins:
        log.warning("security.any_origin", reason='server.allowed_origins is ["*"]')
