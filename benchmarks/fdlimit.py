"""The open-file limit: 10,000 connections need more descriptors than many shells allow.

``raise_nofile`` lifts this process's soft ``RLIMIT_NOFILE`` to the hard limit (or to what is
asked, if lower). Processes started afterwards inherit it: the servers the harness launches and
the generator's worker processes.
"""

from __future__ import annotations

import dataclasses
import resource


@dataclasses.dataclass(frozen=True)
class FileLimit:
    """The soft and hard ``RLIMIT_NOFILE`` before and after raising it."""

    soft_before: int
    hard: int
    soft: int


def _finite(value: int) -> int:
    return 1 << 20 if value == resource.RLIM_INFINITY else value


def raise_nofile(wanted: int | None = None) -> FileLimit:
    """Raise the soft open-file limit towards the hard one; never lowers it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard) if wanted is None else min(wanted, _finite(hard))
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    else:
        target = soft
    return FileLimit(soft_before=soft, hard=_finite(hard), soft=target)
