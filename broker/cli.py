"""The ``broker`` command: ``serve``, ``check-config`` and ``token``; ``subscribe`` and
``publish``, the Python client's commands, are in broker/client/cli.py; ``status`` is in
broker/status.py.

``check-config`` prints the effective settings as JSON with every secret shown as ``***``;
``token`` prints a token signed with the configured HMAC secret (tests and local use).

A config error stops the command before any port opens, with one line on stderr naming the key,
the value and what was expected, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import msgspec

from broker.auth.tokens import CannotIssue, issue_token
from broker.client.cli import CLIENT_COMMANDS, add_client_commands, run_client_command
from broker.config import ConfigError, load_settings, redacted_settings, validate
from broker.settings import BackplaneKind, Settings
from broker.status import add_status_command, run_status

EXIT_CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="A real-time WebSocket broker.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument(
        "--config",
        default=os.environ.get("BROKER_CONFIG"),
        help="TOML config file (default: $BROKER_CONFIG, else built-in defaults)",
    )
    serve.add_argument("--host", help="interface to listen on (overrides server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes on one port (needs the redis backplane)"
    )

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", help="TOML config file")

    token = commands.add_parser("token", help="print a token signed with auth.hmac_secrets")
    token.add_argument(
        "--config",
        default=os.environ.get("BROKER_CONFIG"),
        help="TOML config file (default: $BROKER_CONFIG, else built-in defaults)",
    )
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds it is valid")
    token.add_argument("--channels", nargs="+", default=[], help="patterns it may subscribe to")
    token.add_argument("--publish", nargs="+", default=[], help="patterns it may publish to")
    token.add_argument("--subs", nargs="+", default=[], help="server-side subscriptions")
    token.add_argument("--info", help="a JSON object shown in presence")
    token.add_argument("--channel", help="make a subscription token for this channel instead")

    add_client_commands(commands)
    add_status_command(commands)
    return parser


def _load(path: str | None, host: str | None = None, port: int | None = None) -> Settings:
    settings = load_settings(path, os.environ)
    if host is not None or port is not None:
        server = msgspec.structs.replace(
            settings.server,
            host=settings.server.host if host is None else host,
            port=settings.server.port if port is None else port,
        )
        settings = msgspec.structs.replace(settings, server=server)
    return settings


def _token(args: argparse.Namespace, settings: Settings) -> int:
    info = None
    if args.info is not None:
        try:
            info = msgspec.json.decode(args.info, type=dict[str, object])
        except msgspec.DecodeError as exc:
            raise ConfigError(f"--info = {args.info!r}: expected a JSON object ({exc})") from None
    if args.ttl <= 0:
        raise ConfigError(f"--ttl = {args.ttl}: expected seconds > 0")
    try:
        token = issue_token(
            settings.auth,
            sub=args.sub,
            ttl=args.ttl,
            channels=args.channels,
            publish=args.publish,
            subs=args.subs,
            info=info,
            channel=args.channel,
        )
    except CannotIssue as exc:
        raise ConfigError(str(exc)) from None
    print(token)  # noqa: T201 - the command's answer
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        # Clients of a broker: they read no config and no BROKER_* variable.
        return run_client_command(args)
    if args.command == "status":
        # Reads a running broker's /metrics: no config, like the client commands.
        return run_status(args)
    try:
        if args.command == "check-config":
            settings = _load(args.file)
            print(f"{args.file}: ok")  # noqa: T201 - the command's answer
            shown = msgspec.json.format(msgspec.json.encode(redacted_settings(settings)))
            print(shown.decode())  # noqa: T201
            return 0
        if args.command == "token":
            return _token(args, _load(args.config))
        if args.port is not None and not 0 <= args.port <= 65535:
            raise ConfigError(f"--port = {args.port}: expected a port number from 0 to 65535")
        settings = _load(args.config, args.host, args.port)
        validate(settings)  # --host may make it a host other machines reach
        if args.workers < 1:
            raise ConfigError(f"--workers = {args.workers}: expected 1 or more")
        if args.workers > 1 and settings.backplane.kind is BackplaneKind.MEMORY:
            raise ConfigError(
                f'--workers = {args.workers}: several processes need backplane.kind = "redis"; '
                "with the in-memory backplane each process would be a separate broker"
            )
    except ConfigError as exc:
        print(f"broker: config error: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG_ERROR

    from broker.logs import configure_logging
    from broker.server import StartupError, serve, serve_workers

    configure_logging(settings.log)
    try:
        if args.workers > 1:
            serve_workers(settings, args.workers, args.config)
            return 0
        return serve(settings)
    except StartupError as exc:
        print(f"broker: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
