"""The Node.js peers: is ``node`` here, and are a peer's npm packages installed?

``ensure_installed`` runs ``npm install --prefix benchmarks/peers/<peer>`` once when the peer's
package is missing from ``node_modules`` (its ``package.json`` pins it), and returns why the peer
cannot run, or None when it can. Peers: ``node_ws`` (package ``ws``) and ``node_socketio``
(package ``socket.io``).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

NODE_WS_DIR = Path(__file__).resolve().parent / "node_ws"
NODE_SOCKETIO_DIR = Path(__file__).resolve().parent / "node_socketio"


def node_version() -> str | None:
    """``node --version``, or None when node is not installed or does not answer."""
    if shutil.which("node") is None:
        return None
    try:
        done = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def ws_version() -> str | None:
    """The installed ``ws`` package's version, if any."""
    return package_version(NODE_WS_DIR, "ws")


def socketio_version() -> str | None:
    """The socket.io peer's installed ``socket.io`` package's version, if any."""
    return package_version(NODE_SOCKETIO_DIR, "socket.io")


def package_version(directory: Path, package: str) -> str | None:
    """The version of ``package`` installed under ``directory/node_modules``, if any."""
    manifest = directory / "node_modules" / package / "package.json"
    try:
        version = json.loads(manifest.read_text()).get("version")
    except (OSError, ValueError):
        return None
    return str(version) if version else None


def ensure_installed(
    timeout: float = 180.0,
    *,
    directory: Path = NODE_WS_DIR,
    package: str = "ws",
    name: str = "Node.js ws",
) -> str | None:
    """Install a peer's packages if needed; None when ready, else the reason it cannot run."""
    if node_version() is None:
        return f"node is not installed: the {name} peer is skipped"
    if package_version(directory, package) is not None:
        return None
    npm = shutil.which("npm")
    if npm is None:
        return f"npm is not installed: the {name} peer is skipped"
    # One process at a time (parallel test workers may both need the peer).
    with (directory / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if package_version(directory, package) is not None:
            return None  # installed meanwhile
        return _npm_install(npm, directory, package, name, timeout)


def _npm_install(npm: str, directory: Path, package: str, name: str, timeout: float) -> str | None:
    try:
        subprocess.run(
            [npm, "install", "--prefix", str(directory), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:]
        return f"npm install failed ({tail}): the {name} peer is skipped"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"npm install failed ({exc}): the {name} peer is skipped"
    if package_version(directory, package) is None:
        return f"npm install left no {package} package: the {name} peer is skipped"
    return None


def ensure_socketio_installed(timeout: float = 180.0) -> str | None:
    """``ensure_installed`` for the socket.io peer."""
    return ensure_installed(
        timeout, directory=NODE_SOCKETIO_DIR, package="socket.io", name="Node.js socket.io"
    )
