"""Newline-delimited JSON framing of Centrifugo's protocol: several commands (or replies) per
WebSocket text frame, one JSON object a line.

``decode_commands`` never raises: a line that is not a valid command comes back as a
``BadCommand`` naming the problem (and the command ``id`` when one could be read).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import msgspec

from protocol.centrifugo.messages import Command, Reply


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A line that is not a valid command; ``id`` is 0 when it could not be read."""

    id: int
    message: str


class _IdProbe(msgspec.Struct):
    id: int = 0


_COMMAND: Final = msgspec.json.Decoder(Command)
_PROBE: Final = msgspec.json.Decoder(_IdProbe)
_ENCODER: Final = msgspec.json.Encoder()
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError)


def decode_commands(frame: bytes) -> list[Command | BadCommand]:
    """The commands of one text frame, in order; blank lines are skipped."""
    commands: list[Command | BadCommand] = []
    for line in frame.split(b"\n"):
        if not line.strip():
            continue
        try:
            commands.append(_COMMAND.decode(line))
        except msgspec.ValidationError as exc:
            commands.append(BadCommand(_probe_id(line), str(exc)))
        except _DECODE_ERRORS as exc:
            if isinstance(exc, RecursionError):
                commands.append(BadCommand(0, "command is nested too deeply"))
            else:
                commands.append(BadCommand(_probe_id(line), f"undecodable command: {exc}"))
    return commands


def _probe_id(line: bytes) -> int:
    try:
        probe: _IdProbe = _PROBE.decode(line)
    except (msgspec.ValidationError, *_DECODE_ERRORS):
        return 0
    return probe.id if 0 <= probe.id < 2**32 else 0


def encode_reply(reply: Reply) -> bytes:
    """One reply (or push, or ping) as one line, without the newline."""
    return _ENCODER.encode(reply)


def encode_command(command: Command) -> bytes:
    """One command as one line (for tests and tools)."""
    return _ENCODER.encode(command)


def join_lines(lines: Iterable[bytes]) -> bytes:
    """Several encoded replies (or commands) as one frame."""
    return b"\n".join(lines)


def decode_replies(frame: bytes) -> list[Reply]:
    """The replies of one server frame (for tests and tools). Raises on bad input."""
    decoder = msgspec.json.Decoder(Reply)
    return [decoder.decode(line) for line in frame.split(b"\n") if line.strip()]
