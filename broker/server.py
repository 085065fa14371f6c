"""Running the broker app under uvicorn with the settings' limits applied.

uvicorn's own defaults suit a web app, not a broker (../shared/FINDINGS.md): permessage-deflate on
and 16 MiB messages. Here the WebSocket protocol is ``BrokerWebSocketProtocol`` (the fast write
path and socket reset), messages are capped at ``websocket.max_message_bytes`` at the frame
parser, compression follows config, and SIGTERM/SIGINT drain connections within
``server.shutdown_grace``.
"""

from __future__ import annotations

import socket
from types import FrameType

import uvicorn

from broker.app import create_app
from broker.logs import get_logger
from broker.settings import Settings
from broker.transport import BrokerWebSocketProtocol, configure_protocol

log = get_logger("broker.server")


def uvicorn_config(settings: Settings, *, fd: int | None = None) -> uvicorn.Config:
    websocket = settings.websocket
    configure_protocol(
        transport_buffer_bytes=websocket.transport_buffer_bytes,
        close_timeout=websocket.close_timeout,
    )
    return uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        fd=fd,
        ws=BrokerWebSocketProtocol,
        ws_max_size=websocket.max_message_bytes,
        ws_per_message_deflate=websocket.per_message_deflate,
        # Server pings find vanished peers; the client heartbeat finds silent ones (4009).
        ws_ping_interval=websocket.heartbeat,
        ws_ping_timeout=websocket.heartbeat + websocket.heartbeat_grace,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace) or 1,
        lifespan="on",
        # Logging is configured by broker.logs; uvicorn's loggers go through the same renderer.
        log_config=None,
        access_log=False,
        server_header=False,
    )


class BrokerServer(uvicorn.Server):
    """uvicorn's server, except that a drained shutdown exits 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process dies of SIGTERM
    (exit -15). A broker that drained every client within its grace period has done exactly what
    it was asked: it returns normally, logs ``broker.stopped`` and exits 0.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(settings: Settings, *, sock: socket.socket | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    config = uvicorn_config(settings)
    server = BrokerServer(config)
    log.info(
        "broker.starting",
        host=settings.server.host,
        port=settings.server.port,
        backplane=settings.backplane.kind.value,
    )
    server.run(sockets=[sock] if sock is not None else None)
    log.info("broker.stopped")
