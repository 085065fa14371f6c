"""Channel names (docs/protocol.md §1, "Channels, offsets, epochs and recovery").

A name is 1 to 255 bytes of ``A-Z a-z 0-9 _ - : . @ /``, optionally followed by ``#`` and the
comma-separated ids of the only users allowed in it (a user-limited channel, ``dialog#42,43``).
The part before the first ``:`` is the namespace whose options come from config; a name without
``:`` belongs to the default namespace, named ``""`` here.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, which would admit "news\n".
CHANNEL_PATTERN: Final = r"^[A-Za-z0-9_\-:.@/]+(?:#[A-Za-z0-9_\-:.@/,]*)?\Z"
MAX_CHANNEL_BYTES: Final = 255

#: The channel type used in every message Struct: msgspec validates it while decoding.
Channel = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_CHANNEL_BYTES, pattern=CHANNEL_PATTERN)
]

_CHANNEL_RE: Final = re.compile(CHANNEL_PATTERN)


#: What a channel name is, in words, for error messages (clients and operators read them).
CHANNEL_RULE: Final = (
    "a channel name: 1 to 255 characters, each a letter, a digit or one of _ - : . @ /"
)

_PATTERN_IN_ERRORS: Final = re.compile(r"`str` matching regex '[^']*'")


def explain_channel_errors(message: str) -> str:
    """``message`` (a msgspec validation error) with the channel name pattern said in words."""
    if "regex" not in message:
        return message
    return _PATTERN_IN_ERRORS.sub(CHANNEL_RULE, message)


def is_valid_channel(name: str) -> bool:
    """Whether ``name`` is a channel name a client may use."""
    # The pattern admits only ASCII, so its length in characters is its length in bytes.
    return len(name) <= MAX_CHANNEL_BYTES and _CHANNEL_RE.match(name) is not None


def namespace_of(channel: str) -> str:
    """The namespace of ``channel``: the part before the first ``:``, or ``""`` if none."""
    namespace, sep, _ = channel.partition(":")
    return namespace if sep else ""
