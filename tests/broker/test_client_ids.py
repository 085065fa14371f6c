"""Client ids drawn in batches: unique, 12 URL-safe characters, and never shared with a fork."""

from __future__ import annotations

import os
import re

import pytest

from broker import client_ids

URL_SAFE_12 = re.compile(r"[A-Za-z0-9_-]{12}")


def test_ids_are_twelve_url_safe_characters_and_unique_across_batches() -> None:
    ids = [client_ids.new_client_id() for _ in range(3 * client_ids.BATCH + 7)]
    assert all(URL_SAFE_12.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_does_not_hand_out_the_parents_next_ids() -> None:
    client_ids.new_client_id()  # the pool is filled, with ids still to come
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running any of pytest's teardown
        os.write(write, client_ids.new_client_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert URL_SAFE_12.fullmatch(child)
    assert child != client_ids.new_client_id()
