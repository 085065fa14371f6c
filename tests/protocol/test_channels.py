"""Channel names and namespaces (docs/protocol.md §1, "Channels, offsets, epochs and recovery")."""

from __future__ import annotations

import string

import msgspec
import pytest

from protocol import Channel, is_valid_channel, namespace_of
from protocol.channels import MAX_CHANNEL_BYTES

ALPHABET = string.ascii_letters + string.digits + "_-:.@/"


@pytest.mark.parametrize(
    ("channel", "namespace"),
    [
        ("chat:room-1", "chat"),
        ("chat:room:1", "chat"),  # only the first ':' separates
        ("news", ""),  # no ':': the default namespace
        ("user@example.com/inbox", ""),
        ("a.b:c", "a.b"),
        ("x:", "x"),
        (":x", ""),  # an empty namespace is the default one
        (":", ""),
        ("::", ""),
        ("", ""),
    ],
)
def test_namespace_of(channel: str, namespace: str) -> None:
    assert namespace_of(channel) == namespace


VALID = [
    "a",
    "0",
    "chat:room-1",
    "user@example.com/inbox",
    "a.b_c-d:e@f/g",
    "::",
    "/",
    "x" * MAX_CHANNEL_BYTES,
    ALPHABET,
    # User-limited channels: the allowed users after '#', comma-separated.
    "news#1",
    "dialog#42,43",
    "chat:dm#alice@example.com,bob",
]

INVALID = [
    "",
    "x" * (MAX_CHANNEL_BYTES + 1),
    "a b",
    " news",
    "news ",
    "café",
    "é",
    "news\n",
    "\nnews",
    "news\r",
    "a\tb",
    "a\x00b",
    "#chat",  # '#' first: the chat room's name, out of every client's reach
    "a#b#c",
    "a#b c",
    "news?x=1",
    "a,b",
    "a*",
    "a+b",
    "\uff41",  # fullwidth 'a'
    "\u0661",  # Arabic-Indic digit one: a Unicode digit, not 0-9
    "\u212a",  # Kelvin sign: folds to 'k' only under IGNORECASE
]


@pytest.mark.parametrize("channel", VALID)
def test_valid_channel(channel: str) -> None:
    assert is_valid_channel(channel)


@pytest.mark.parametrize("channel", INVALID)
def test_invalid_channel(channel: str) -> None:
    assert not is_valid_channel(channel)


def test_every_character_of_the_alphabet_and_no_other_ascii() -> None:
    for code in range(128):
        char = chr(code)
        assert is_valid_channel(char) is (char in ALPHABET), repr(char)


@pytest.mark.parametrize("channel", VALID + INVALID)
def test_channel_type_validates_like_is_valid_channel(channel: str) -> None:
    frame = msgspec.json.encode(channel)
    if is_valid_channel(channel):
        assert msgspec.json.decode(frame, type=Channel) == channel
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(frame, type=Channel)
