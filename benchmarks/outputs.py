"""How the comparison benchmarks (``moderate``, ``connrate``, ``channels_max``) leave their
results: ``<name>-<stamp>.md`` (the tables) and ``.json`` (every figure) side by side, and the
tables printed."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_report(
    folder: Path,
    name: str,
    lines: Sequence[str],
    record: dict[str, Any],
    argv: Sequence[str] | None,
) -> Path:
    """Write ``lines`` as ``folder/name.md`` and ``record`` (with the command line) as ``.json``;
    print the tables and where they went."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / f"{name}.md"
    markdown.write_text("\n".join(lines) + "\n")
    record = {"argv": list(argv if argv is not None else sys.argv[1:]), **record}
    markdown.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    say()
    say("\n".join(lines))
    say(f"\nmarkdown: {markdown}")
    return markdown
