"""The Node.js ``ws`` peer: is ``node`` here, and is the peer's ``ws`` package installed?

``ensure_installed`` runs ``npm install --prefix benchmarks/peers/node_ws`` once when
``node_modules`` is missing (``package.json`` pins ``ws``), and returns why the peer cannot run,
or None when it can.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

NODE_WS_DIR = Path(__file__).resolve().parent / "node_ws"


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
    manifest = NODE_WS_DIR / "node_modules" / "ws" / "package.json"
    try:
        version = json.loads(manifest.read_text()).get("version")
    except (OSError, ValueError):
        return None
    return str(version) if version else None


def ensure_installed(timeout: float = 180.0) -> str | None:
    """Install the peer's packages if needed; None when ready, else the reason it cannot run."""
    if node_version() is None:
        return "node is not installed: the Node.js ws peer is skipped"
    if ws_version() is not None:
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed: the Node.js ws peer is skipped"
    try:
        subprocess.run(
            [npm, "install", "--prefix", str(NODE_WS_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:]
        return f"npm install failed ({tail}): the Node.js ws peer is skipped"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"npm install failed ({exc}): the Node.js ws peer is skipped"
    if ws_version() is None:
        return "npm install left no ws package: the Node.js ws peer is skipped"
    return None
