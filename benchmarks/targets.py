"""The targets a benchmark can run against: a server to launch plus an endpoint and protocol.

- ``naive``: the tutorial's chat server (``benchmarks.peers.tutorial_chat``) on ``/ws/chat``.
- ``node-ws``: the same chat on Node.js ``ws`` (``benchmarks/peers/node_ws``), when ``node``
  is installed; ``peers.node_ws.ensure_installed`` installs its ``ws`` package with npm.
- ``broker-chat``: the broker's tutorial-compatible ``/ws/chat``.
- ``broker-v1``: the broker's typed protocol on ``/v1/ws`` (``broker.v1.json``);
  ``broker-v1-json`` is the same under the suite's name.
- ``broker-v1-msgpack``: ``/v1/ws`` with ``broker.v1.msgpack`` (binary MessagePack frames).
- ``nats``: a private NATS server over WebSocket (``benchmarks.peers.nats``), speaking the NATS
  protocol; a channel is a subject. For the many-channels scenario.
- ``socketio``: Node.js socket.io 4 with one room per channel (``benchmarks/peers/node_socketio``);
  ``peers.node.ensure_socketio_installed`` installs its pinned ``socket.io`` with npm.

The broker is started as ``broker serve --host 127.0.0.1 --port P`` (the venv's console script,
or ``python -m broker.cli`` when the script is missing), with ``BROKER_LOG__LEVEL=warning`` and
any extra ``BROKER_*`` overrides the caller gives.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks.peerwire import SOCKETIO_PATH
from benchmarks.server import ServerCommand
from benchmarks.wire import Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to measure."""

    name: str
    command: ServerCommand
    path: str
    protocol: Protocol
    description: str


def naive_command() -> ServerCommand:
    return ServerCommand(
        argv=[sys.executable, "-m", "benchmarks.peers.tutorial_chat", "--port", "{port}"],
        cwd=REPO_ROOT,
    )


def broker_command(env: Mapping[str, str] | None = None) -> ServerCommand:
    script = Path(sys.executable).with_name("broker")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "broker.cli"]
    return ServerCommand(
        argv=[*launcher, "serve", "--host", "127.0.0.1", "--port", "{port}"],
        env={"BROKER_LOG__LEVEL": "warning", **(env or {})},
        cwd=REPO_ROOT,
    )


def node_ws_command() -> ServerCommand:
    """The Node.js ``ws`` chat peer (needs ``node`` and its installed ``node_modules``)."""
    server = REPO_ROOT / "benchmarks" / "peers" / "node_ws" / "server.js"
    return ServerCommand(argv=["node", str(server), "--port", "{port}"], cwd=server.parent)


def nats_command() -> ServerCommand:
    """A private ``nats-server`` with its WebSocket listener on the port (``peers.nats``)."""
    return ServerCommand(
        argv=[sys.executable, "-m", "benchmarks.peers.nats", "--port", "{port}"], cwd=REPO_ROOT
    )


def socketio_command() -> ServerCommand:
    """The Node.js socket.io peer (needs ``node`` and its installed ``node_modules``)."""
    server = REPO_ROOT / "benchmarks" / "peers" / "node_socketio" / "server.js"
    return ServerCommand(argv=["node", str(server), "--port", "{port}"], cwd=server.parent)


def broker_available() -> bool:
    """Whether the broker's command line exists yet (it is being written alongside)."""
    return (REPO_ROOT / "broker" / "cli.py").exists()


def build_targets(broker_env: Mapping[str, str] | None = None) -> dict[str, Target]:
    """Every known target, by name."""
    broker = broker_command(broker_env)
    return {
        "naive": Target(
            "naive",
            naive_command(),
            "/ws/chat",
            Protocol.CHAT,
            "tutorial ConnectionManager, awaits each send_text in turn",
        ),
        "broker-chat": Target(
            "broker-chat", broker, "/ws/chat", Protocol.CHAT, "broker, tutorial-compatible /ws/chat"
        ),
        "broker-v1": Target(
            "broker-v1", broker, "/v1/ws", Protocol.V1, "broker, typed /v1/ws (broker.v1.json)"
        ),
        "node-ws": Target(
            "node-ws",
            node_ws_command(),
            "/ws/chat",
            Protocol.CHAT,
            "Node.js ws broadcast server, the same /ws/chat frames",
        ),
        "broker-v1-json": Target(
            "broker-v1-json",
            broker,
            "/v1/ws",
            Protocol.V1,
            "broker, typed /v1/ws (broker.v1.json)",
        ),
        "broker-v1-msgpack": Target(
            "broker-v1-msgpack",
            broker,
            "/v1/ws",
            Protocol.V1_MSGPACK,
            "broker, typed /v1/ws (broker.v1.msgpack)",
        ),
        "nats": Target(
            "nats",
            nats_command(),
            "/",
            Protocol.NATS,
            "NATS server (Go) over WebSocket, its own protocol, one subject per channel",
        ),
        "socketio": Target(
            "socketio",
            socketio_command(),
            SOCKETIO_PATH,
            Protocol.SOCKETIO,
            "Node.js socket.io 4, one room per channel",
        ),
    }


def with_broker_env(target: Target, env: Mapping[str, str]) -> Target:
    """``target`` with extra ``BROKER_*`` environment when it is a broker target, else as is."""
    if not target.name.startswith("broker"):
        return target
    command = dataclasses.replace(target.command, env={**target.command.env, **env})
    return dataclasses.replace(target, command=command)


def is_peer(name: str) -> bool:
    """Whether a target is one of the peers the broker is compared with."""
    return name in PEERS


#: The peers, in the order reports show them.
PEERS = ("naive", "node-ws", "nats", "socketio")
#: The peers with channels of their own: the many-channels scenario runs them too.
CHANNEL_PEERS = ("nats", "socketio")


def baseline_target(target: Target, tree: Path) -> Target:
    """``target`` run from another revision's ``broker`` and ``protocol`` packages in ``tree``
    (``PYTHONPATH``), named ``<target>@baseline``."""
    moved = with_broker_env(target, {"PYTHONPATH": str(tree)})
    return dataclasses.replace(moved, name=f"{target.name}@baseline")


def interpreter_target(target: Target, label: str, python: Path) -> Target:
    """``target`` (a broker target) served by another Python interpreter, ``python`` (one with
    the project's dependencies installed, as a venv of it is), running this checkout's packages,
    named ``<target>@<label>``: the same code on two builds of CPython, side by side."""
    command = target.command
    argv = [str(python), "-m", "broker.cli", *command.argv[command.argv.index("serve") :]]
    env = {**command.env, "PYTHONPATH": str(REPO_ROOT)}
    moved = dataclasses.replace(command, argv=argv, env=env)
    return dataclasses.replace(target, name=f"{target.name}@{label}", command=moved)


def peer_unavailable(name: str) -> str | None:
    """Why target ``name`` cannot run here (a peer not installed), or None; the Node.js peers
    are installed from their lock files on first use."""
    from benchmarks.peers import nats, node

    if name == "socketio":
        return node.ensure_socketio_installed()
    if name == "node-ws":
        return node.ensure_installed()
    if name == "nats" and nats.nats_server() is None:
        return "nats-server is not installed"
    return None


def chosen_targets(
    names: str,
    known: Mapping[str, Target],
    baseline: Path | None,
    say: Callable[[str], None],
    interpreters: Mapping[str, Path] | None = None,
) -> list[Target]:
    """The targets named in ``names`` (comma-separated), leaving out, and saying so, a peer that
    is not installed; each broker target followed by its ``@baseline`` twin when ``baseline``,
    and by one twin per entry of ``interpreters`` (label: Python executable)."""
    chosen: list[Target] = []
    for name in [part.strip() for part in names.split(",") if part.strip()]:
        why = peer_unavailable(name)
        if why is not None:
            say(f"{name} skipped: {why}")
            continue
        chosen.append(known[name])
        if baseline is not None and name.startswith("broker"):
            chosen.append(baseline_target(known[name], baseline))
        if name.startswith("broker"):
            for label, python in (interpreters or {}).items():
                chosen.append(interpreter_target(known[name], label, python))
    return chosen
