"""Running the broker app under uvicorn with the settings' limits applied.

uvicorn's own defaults suit a web app, not a broker (../shared/FINDINGS.md): permessage-deflate on
and 16 MiB messages. Here the HTTP protocol is ``BrokerHttpProtocol`` (every socket counted from
accept, a deadline and a size bound on each request), the WebSocket protocol
``BrokerWebSocketProtocol`` (the fast write path and socket reset, bounded replies and fragments),
messages are capped at ``websocket.max_message_bytes`` at the frame parser, compression follows
config, and SIGTERM/SIGINT drain connections within ``server.shutdown_grace``.
"""

from __future__ import annotations

import os
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from broker.app import create_app
from broker.config import CONFIG_PATH_ENV, load_settings
from broker.http_protocol import BrokerHttpProtocol
from broker.logs import configure_logging, get_logger
from broker.settings import Settings
from broker.sockets import configure as configure_sockets
from broker.transport import BrokerWebSocketProtocol

log = get_logger("broker.server")


def uvicorn_config(
    settings: Settings, *, app: FastAPI | str | None = None, workers: int = 1
) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` (the broker for ``settings`` when None) with the
    settings' limits applied."""
    websocket = settings.websocket
    configure_sockets(settings)
    trusted_proxies = settings.server.trusted_proxies
    return uvicorn.Config(
        create_app(settings) if app is None else app,
        factory=isinstance(app, str),
        workers=workers,
        host=settings.server.host,
        port=settings.server.port,
        # Every socket starts in BrokerHttpProtocol (deadline, head size, counted from accept).
        http=BrokerHttpProtocol,
        ws=BrokerWebSocketProtocol,
        ws_max_size=websocket.max_message_bytes,
        ws_per_message_deflate=websocket.per_message_deflate,
        # Server pings find vanished peers; the client heartbeat finds silent ones (4009).
        ws_ping_interval=websocket.heartbeat,
        ws_ping_timeout=websocket.heartbeat + websocket.heartbeat_grace,
        timeout_graceful_shutdown=max(1, round(settings.server.shutdown_grace)),
        lifespan="on",
        # Logging is configured by broker.logs; uvicorn's loggers go through the same renderer.
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For is believed from server.trusted_proxies only (uvicorn's default
        # trusts 127.0.0.1).
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),
    )


def app_from_environment() -> FastAPI:
    """The app of one worker process (``broker serve --workers N``).

    Each worker loads the settings itself, from ``BROKER_CONFIG`` and the ``BROKER_*`` variables
    it inherits, exactly as the parent checked them before starting it.
    """
    settings = load_settings(os.environ.get(CONFIG_PATH_ENV), os.environ)
    configure_logging(settings.log)
    configure_sockets(settings)
    return create_app(settings)


def serve_workers(settings: Settings, workers: int, config_path: str | None) -> None:
    """Run ``workers`` processes on one port, each a whole broker on the shared backplane."""
    if config_path is not None:
        os.environ[CONFIG_PATH_ENV] = config_path
    # The command line's --host and --port reach the workers as overrides.
    os.environ["BROKER_SERVER__HOST"] = settings.server.host
    os.environ["BROKER_SERVER__PORT"] = str(settings.server.port)
    config = uvicorn_config(settings, app="broker.server:app_from_environment", workers=workers)
    log.info(
        "broker.starting",
        host=settings.server.host,
        port=settings.server.port,
        workers=workers,
        backplane=settings.backplane.kind.value,
    )
    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()
    log.info("broker.stopped")


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
