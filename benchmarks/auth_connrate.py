"""Connection rate with JWT authentication off and on: what verifying tokens costs.

Three runs of ``benchmarks.connrate`` against fresh ``broker serve`` processes on /v1/ws:

- ``off``: ``auth.mode = "none"`` (the default on loopback);
- ``jwt``: ``auth.mode = "jwt"``, every client presenting the same HS256 token in the ``token``
  query parameter, as reconnecting clients of one user do: verified once, then from the cache;
- ``jwt-uncached``: the same with ``auth.verified_cache_size = 0``: a signature check per
  connection, the worst case.

Prints connections per second and server CPU per 1,000 connections for each, and the rate of
each JWT run relative to ``off``. Usage: ``python -m benchmarks.auth_connrate [--duration S]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.connrate import connection_rate
from benchmarks.targets import Target, broker_command
from benchmarks.wire import Protocol
from broker.auth.tokens import issue_token
from broker.settings import AuthSettings

SECRET = "benchmark-secret-0123456789-abcdefghij"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=20, help="open/close loops in all")
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    args = parser.parse_args(argv)
    token = issue_token(AuthSettings(hmac_secrets=[SECRET]), sub="bench", ttl=3600)
    jwt_env = {"BROKER_AUTH__MODE": "jwt", "BROKER_AUTH__HMAC_SECRETS": json.dumps([SECRET])}
    runs = {
        "off": ({}, "/v1/ws"),
        "jwt": (jwt_env, f"/v1/ws?token={token}"),
        "jwt-uncached": (
            {**jwt_env, "BROKER_AUTH__VERIFIED_CACHE_SIZE": "0"},
            f"/v1/ws?token={token}",
        ),
    }
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as logs:
        for name, (env, path) in runs.items():
            target = Target(name, broker_command(env), path, Protocol.V1, name)
            result = connection_rate(
                target,
                concurrency=args.concurrency,
                duration=args.duration,
                workers=args.workers,
                log_dir=Path(logs),
            )
            if not result.ok:
                print(f"{name}: failed: {result.error}", file=sys.stderr)  # noqa: T201
                return 1
            rates[name] = result.per_second
            cpu = result.server_cpu_ms_per_1k
            print(  # noqa: T201
                f"{name:13} {result.per_second:8.0f} connections/s  "
                f"server CPU {cpu or 0:6.0f} ms per 1,000  failures {sum(result.failures.values())}"
            )
    for name in ("jwt", "jwt-uncached"):
        print(f"{name}: {rates[name] / rates['off']:.0%} of the rate without auth")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
