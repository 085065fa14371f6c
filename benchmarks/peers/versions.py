"""The channel peers' versions, as a report's heading names them."""

from __future__ import annotations

from benchmarks.peers import nats, node


def peer_versions() -> str:
    """``nats-server ...; socket.io ...; node ...`` (``-`` for what is not installed)."""
    return (
        f"nats-server {nats.nats_version() or '-'}; socket.io {node.socketio_version() or '-'};"
        f" node {node.node_version() or '-'}"
    )
