"""Running the broker app under uvicorn with the settings' limits applied.

uvicorn's own defaults suit a web app, not a broker (docs/stack-findings.md): permessage-deflate on
and 16 MiB messages. Here the HTTP protocol is ``BrokerHttpProtocol`` (every socket counted from
accept, a deadline and a size bound on each request), the WebSocket protocol
``BrokerWebSocketProtocol`` (the fast write path and socket reset, bounded replies and fragments),
messages are capped at ``websocket.max_message_bytes`` at the frame parser, compression follows
config, and SIGTERM/SIGINT drain connections within ``server.shutdown_grace``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp
from uvicorn.supervisors import Multiprocess

from broker.app import create_app
from broker.config import CONFIG_PATH_ENV, load_settings
from broker.gc_tuning import tune_collector
from broker.http_protocol import BrokerHttpProtocol
from broker.logs import configure_logging, get_logger
from broker.monitor.workers import METRICS_DIR_ENV
from broker.runtime import Broker
from broker.settings import Settings
from broker.sockets import configure as configure_sockets
from broker.transport import BrokerWebSocketProtocol

log = get_logger("broker.server")


def uvicorn_config(
    settings: Settings, *, app: ASGIApp | str | None = None, workers: int = 1
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
        timeout_worker_healthcheck=settings.server.worker_healthcheck_timeout,
        # TLS when server.tls_certfile is set (checked by broker.config before this runs).
        ssl_certfile=settings.server.tls_certfile or None,
        ssl_keyfile=settings.server.tls_keyfile or None,
        ssl_keyfile_password=settings.server.tls_keyfile_password or None,
        ssl_ca_certs=settings.server.tls_ca_certs or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.server.tls_ca_certs else ssl.CERT_NONE,
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
    # A worker whose broker failed stops; the supervisor starts a new one in its place.
    Broker.failure_hooks.append(_stop_on_failure)
    configure_sockets(settings)
    app = create_app(settings)
    app.state.metrics_workers_dir = os.environ.get(METRICS_DIR_ENV)
    # Built: what is alive now lives as long as the worker (``broker.gc_tuning``).
    tune_collector()
    return app


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
        tls=bool(settings.server.tls_certfile),
    )
    sock = listen(settings.server.host, settings.server.port)
    # Where the workers share their figures, so that /metrics answers for all of them.
    metrics_dir = tempfile.mkdtemp(prefix="broker-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("broker.stopped")


class StartupError(Exception):
    """The broker cannot start (its port is taken, say): one line for the operator."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``StartupError`` saying why not.

    Bound here rather than by uvicorn, which logs a traceback-shaped error line after "startup
    complete" when the port is taken, and exits 1.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"server.host = {host!r}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(is another broker or program using this port? set server.port or --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


class _StopOnFailure:
    """Ends this process when its broker fails (``Broker.fail``): a SIGTERM to itself drains the
    clients (``disconnect`` with ``reconnect`` true, then 1001) and stops the server, and the
    process exits 1, so that systemd, Kubernetes or the ``--workers`` supervisor starts a new one.
    """

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, broker: Broker) -> None:
        self.failed = True
        os.kill(os.getpid(), signal.SIGTERM)


_stop_on_failure = _StopOnFailure()


class BrokerServer(uvicorn.Server):
    """uvicorn's server, except that a drained shutdown exits 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process dies of SIGTERM
    (exit -15). A broker that drained every client within its grace period has done exactly what
    it was asked: it returns normally, logs ``broker.stopped`` and exits 0.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(
    settings: Settings, *, sock: socket.socket | None = None, app: ASGIApp | None = None
) -> int:
    """Run until SIGTERM or SIGINT, then drain and return 0; 1 when the broker failed.

    ``app`` is the app to serve: the broker's own for ``settings`` when None, or a host app with
    the broker mounted in it, which then gets everything ``broker serve`` gives (the write path,
    the drain on SIGTERM, the limits, the logs). Raises ``StartupError`` when the port is taken.
    """
    config = uvicorn_config(settings, app=app)
    server = BrokerServer(config)
    if sock is None:
        sock = listen(settings.server.host, settings.server.port)
    log.info(
        "broker.starting",
        host=settings.server.host,
        port=sock.getsockname()[1],
        backplane=settings.backplane.kind.value,
        workers=1,
        tls=bool(settings.server.tls_certfile),
    )
    Broker.failure_hooks.append(_stop_on_failure)
    # The app is built: what is alive now lives as long as the process (``broker.gc_tuning``).
    tune_collector()
    try:
        server.run(sockets=[sock])
    finally:
        Broker.failure_hooks.remove(_stop_on_failure)
    if _stop_on_failure.failed:
        log.error("broker.stopped", exit_code=1)
        return 1
    log.info("broker.stopped", exit_code=0)
    return 0


def run(app: ASGIApp, settings: Settings | None = None) -> None:
    """Serve a host app that mounts the broker, as ``broker serve`` serves the broker alone:
    logging configured from ``settings.log``, the broker's uvicorn settings, the drain on
    SIGTERM, and the process's exit code (1 if the broker failed, 2 if it could not start)::

        if __name__ == "__main__":
            run(app, settings)
    """
    settings = settings or Settings()
    configure_logging(settings.log)
    try:
        code = serve(settings, app=app)
    except StartupError as exc:
        print(f"broker: {exc}", file=sys.stderr)  # noqa: T201 - the one line an operator reads
        code = 2
    sys.exit(code)
