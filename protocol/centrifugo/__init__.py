"""Centrifugo's client protocol v2 (JSON), spoken beside the broker's own (docs/centrifugo.md).

``messages``: the commands, replies and pushes as msgspec Structs; ``framing``: newline-delimited
frames; ``codes``: Centrifugo's error and disconnect codes and the broker's mapped onto them;
``render``: the broker's server messages as Centrifugo replies and pushes. No I/O.
"""
