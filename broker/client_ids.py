"""Client ids: 72 random bits from the operating system's generator, URL-safe, 12 characters.

``secrets.token_urlsafe(9)`` asks the kernel for 9 bytes each time (a ``getrandom(2)`` per
connection). Here the bytes of 512 ids are drawn at once and handed out in turn: the same
generator and the same entropy per id, one system call per 512 connections. A forked child
draws its own (``os.register_at_fork``), so that no two processes hand out the same ids.
"""

from __future__ import annotations

import base64
import os

#: Random bytes per id: 72 bits, 12 characters of URL-safe base64 without padding.
ID_BYTES = 9
#: Ids drawn per system call.
BATCH = 512

_pool = b""
_at = 0


def new_client_id() -> str:
    """A fresh client id (see the module docstring)."""
    global _pool, _at
    at = _at
    if at >= len(_pool):
        _pool, at = os.urandom(ID_BYTES * BATCH), 0
    _at = at + ID_BYTES
    return base64.urlsafe_b64encode(_pool[at : at + ID_BYTES]).decode()


def _forget_pool() -> None:
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
