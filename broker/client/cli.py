"""``broker subscribe`` and ``broker publish``: the Python client on the command line.

``broker subscribe CHANNEL`` writes one JSON line per publication to stdout::

    {"channel":"chat:lobby","offset":7,"epoch":"mEmKBwNy","data":{"text":"hi"},"from":"6wIJSeW4JuOa"}

When recovery fails (``ResyncNeeded``) it writes ``{"type":"resync","channel":...,"epoch":...,
"offset":...}`` on **stdout**, in stream order between the messages: a script that reads the
stream needs to know where it broke, and only stdout keeps that order. The line has a ``type``
key, which message lines never have. Once subscribed it writes
``{"type":"subscribed","channel":...,"epoch":...,"offset":...,"client":...}`` on **stderr**, a
status line that a script may wait for before publishing. Errors go to stderr as one line
starting with ``broker:``.

``broker publish CHANNEL DATA`` publishes DATA, a JSON text, and writes the reply as
``{"channel":...,"offset":...,"epoch":...}`` (the shape of the HTTP API's ``POST /v1/publish``).

Exit codes: 0 on success, on Ctrl-C or SIGTERM, or after ``--count`` messages; 1 when the broker
cannot be reached, refuses a request or ends the session; 2 for a usage error (DATA that is not
JSON, ``--since-offset`` without ``--epoch``).

The URL comes from ``--url`` only: ``BROKER_*`` environment variables are config overrides for
``broker serve``, where an unknown one is an error (broker/config.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import msgspec

from broker.client.errors import ClientError, RequestError, ResyncNeeded
from broker.client.session import DEFAULT_URL, connect
from protocol import Encoding, StreamPosition

#: The subcommands this module adds to ``broker``.
CLIENT_COMMANDS: Final = frozenset({"subscribe", "publish"})

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_ENCODINGS: Final = {"json": Encoding.JSON, "msgpack": Encoding.MSGPACK}


def _fallback(value: Any) -> Any:
    # MessagePack can carry what JSON cannot (extension types): show it rather than fail.
    return repr(value)


_json = msgspec.json.Encoder(enc_hook=_fallback)


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``subscribe`` and ``publish`` to the ``broker`` command's subparsers."""
    subscribe = commands.add_parser(
        "subscribe", help="print a channel's messages as JSON lines (Ctrl-C to stop)"
    )
    subscribe.add_argument("channel", metavar="CHANNEL")
    _add_connection_options(subscribe)
    subscribe.add_argument(
        "--since-offset",
        type=int,
        metavar="N",
        help="recover what came after offset N of --epoch first",
    )
    subscribe.add_argument("--epoch", metavar="E", help="the epoch of --since-offset")
    subscribe.add_argument(
        "--count", type=int, metavar="N", help="exit after N messages (default: never)"
    )

    publish = commands.add_parser("publish", help="publish one message and print the reply")
    publish.add_argument("channel", metavar="CHANNEL")
    publish.add_argument("data", metavar="DATA", help="the message, as JSON text")
    _add_connection_options(publish)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"broker URL (default: {DEFAULT_URL})")
    parser.add_argument(
        "--encoding", choices=sorted(_ENCODINGS), default="json", help="wire encoding"
    )


def run_client_command(args: argparse.Namespace) -> int:
    """Run ``broker subscribe`` or ``broker publish``; the exit code."""
    if args.command == "publish":
        try:
            data = msgspec.json.decode(args.data)
        except (msgspec.DecodeError, RecursionError) as exc:
            return _usage("publish", f"DATA is not valid JSON: {exc}")
        return _run(lambda: _publish(args, data))
    if (args.since_offset is None) != (args.epoch is None):
        return _usage("subscribe", "--since-offset and --epoch go together")
    if args.since_offset is not None and args.since_offset < 0:
        return _usage("subscribe", "--since-offset must be 0 or more")
    if args.count is not None and args.count < 1:
        return _usage("subscribe", "--count must be 1 or more")
    return _run(lambda: _subscribe(args))


def _run(command: Callable[[], Awaitable[int]]) -> int:
    async def main() -> int:
        code = EXIT_OK
        async with anyio.create_task_group() as tasks:

            async def run_command() -> None:
                nonlocal code
                try:
                    code = await command()
                except ClientError as exc:
                    _error(str(exc))
                    code = EXIT_FAILED
                except BrokenPipeError:
                    # The reader went away (``| head``): stop quietly, and keep the interpreter
                    # from complaining when it flushes stdout at exit.
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                tasks.cancel_scope.cancel()

            tasks.start_soon(_stop_on_signal, tasks.cancel_scope)
            tasks.start_soon(run_command)
        return code

    try:
        return anyio.run(main, backend="asyncio")
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was in place
        return EXIT_OK


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _subscribe(args: argparse.Namespace) -> int:
    since = (
        None if args.epoch is None else StreamPosition(offset=args.since_offset, epoch=args.epoch)
    )
    async with connect(args.url, encoding=_ENCODINGS[args.encoding]) as client:
        try:
            sub = await client.subscribe(args.channel, since=since)
        except RequestError as exc:
            _error(f"cannot subscribe to {args.channel!r}: {exc}")
            return EXIT_FAILED
        position = sub.position
        _status(
            {
                "type": "subscribed",
                "channel": args.channel,
                "epoch": None if position is None else position.epoch,
                "offset": None if position is None else position.offset,
                "client": client.client_id,
            }
        )
        printed = 0
        while True:
            try:
                async for message in sub:
                    _print(
                        {
                            "channel": message.channel,
                            "offset": message.offset,
                            "epoch": message.epoch,
                            "data": message.data,
                            "from": message.publisher,
                        }
                    )
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return EXIT_OK
                return EXIT_OK
            except ResyncNeeded as resync:
                _print(
                    {
                        "type": "resync",
                        "channel": resync.channel,
                        "epoch": resync.epoch,
                        "offset": resync.offset,
                    }
                )


async def _publish(args: argparse.Namespace, data: Any) -> int:
    async with connect(args.url, encoding=_ENCODINGS[args.encoding], max_attempts=0) as client:
        try:
            reply = await client.publish(args.channel, data)
        except RequestError as exc:
            _error(f"cannot publish to {args.channel!r}: {exc}")
            return EXIT_FAILED
    _print({"channel": reply.channel, "offset": reply.offset, "epoch": reply.epoch})
    return EXIT_OK


def _print(value: dict[str, Any]) -> None:
    sys.stdout.buffer.write(_json.encode(value) + b"\n")
    sys.stdout.buffer.flush()


def _status(value: dict[str, Any]) -> None:
    sys.stderr.buffer.write(_json.encode(value) + b"\n")
    sys.stderr.buffer.flush()


def _error(text: str) -> None:
    sys.stderr.write(f"broker: {text}\n")
    sys.stderr.flush()


def _usage(command: str, text: str) -> int:
    _error(f"{command}: {text}")
    return EXIT_USAGE
