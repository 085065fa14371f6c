"""The NATS server peer, over WebSocket: a private ``nats-server`` with its own config and ports.

``python -m benchmarks.peers.nats --port P`` writes a config file (in the temporary directory,
named after the port) that enables the WebSocket listener on 127.0.0.1:P without TLS and puts
the plain NATS client listener on a random port (``port: -1``), never the standard 4222 of a
system NATS server, then replaces itself with ``nats-server -c <config>``, so that the process
the suite measures is the server itself. Clients speak the NATS text protocol inside WebSocket
frames (``CONNECT``, ``SUB``, ``PUB``; the server sends ``INFO``, ``MSG``, ``PING``/``PONG``).

``nats_server`` finds the binary (Debian's ``nats-server`` package installs
``/usr/sbin/nats-server``, which is not on a normal user's ``PATH``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")


def nats_server() -> str | None:
    """The path of the ``nats-server`` binary, or None when it is not installed."""
    found = shutil.which("nats-server")
    if found is not None:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def nats_version() -> str | None:
    """``nats-server --version`` (e.g. ``nats-server: v2.9.10``), or None."""
    binary = nats_server()
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def config_text(port: int, host: str = "127.0.0.1") -> str:
    """A private server: the WebSocket listener on ``host:port``, no TLS; nothing standard."""
    return (
        f'listen: "{host}:-1"\n'  # the plain client port: random, never 4222
        "http_port: 0\n"  # no monitoring endpoint
        f'server_name: "bench-{port}"\n'
        "websocket {\n"
        f'  host: "{host}"\n'
        f"  port: {port}\n"
        "  no_tls: true\n"
        "  compression: false\n"
        "}\n"
    )


def write_config(port: int, host: str = "127.0.0.1") -> Path:
    path = Path(tempfile.gettempdir()) / f"broker-bench-nats-{port}.conf"
    path.write_text(config_text(port, host))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.nats")
    parser.add_argument("--port", type=int, required=True, help="the WebSocket listener's port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    binary = nats_server()
    if binary is None:
        raise SystemExit("nats-server is not installed (Debian: apt-get install nats-server)")
    config = write_config(args.port, args.host)
    os.execv(binary, [binary, "-c", str(config)])


if __name__ == "__main__":
    main()
