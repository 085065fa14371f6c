"""User and system CPU per delivery of each server a benchmark runs, apart: where a target's CPU
goes (the kernel's sends, or its own code) when the totals of two targets are close.

``record`` samples, every half second until interrupted, the user and system CPU time of every
``broker serve`` process (tagged ``baseline`` when its ``PYTHONPATH`` is a ``/tmp/baseline``
tree, as ``--baseline`` runs it; ``broker@PYTHON`` when another interpreter runs it, as
``--interpreter`` does) and every private ``nats-server -c`` (the benchmarks' own, not
the system's), with the CPU each last ran on. ``summary`` takes, for each process, the seconds
it ran at 30-70% of a core (a steady measured load such as ``benchmarks.moderate``'s 1,000 x 10
at 2,000/s, not the connecting before or the closing after; ``--steady LOW,HIGH`` moves the
window, for a server that needs less than 30% of a core at that rate) and prints the medians per
delivery at ``--rate`` deliveries a second:

    .venv/bin/python -m benchmarks.cpu_split record /tmp/samples.txt &
    .venv/bin/python -m benchmarks.moderate --loads channels \\
        --channels-targets broker-v1-json,nats --rounds 6 --baseline /tmp/baseline
    kill %1
    .venv/bin/python -m benchmarks.cpu_split summary /tmp/samples.txt --rate 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Samples kept as steady load: the process's CPU over a second, as a share of one core.
STEADY = (0.30, 0.70)


@dataclass(frozen=True)
class Split:
    pid: str
    tag: str
    user_us: float
    system_us: float
    samples: int
    cpus: list[tuple[int, int]]

    @property
    def total_us(self) -> float:
        return self.user_us + self.system_us


def _tag(pid: str) -> str | None:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    if b"nats-server -c" in command:
        return "nats"
    if b"-m broker.cli serve" in command:
        # Another interpreter's broker (``benchmarks.moderate --interpreter``): tagged by it.
        return "broker@" + command.split(b" ", 1)[0].decode()
    if b"broker serve" not in command:
        return None
    environment = Path(f"/proc/{pid}/environ").read_bytes()
    return "baseline" if b"PYTHONPATH=/tmp/baseline" in environment else "broker"


def record(path: Path, interval: float = 0.5) -> None:
    """Append ``time pid tag user system cpu`` lines to ``path`` until interrupted."""
    tick = os.sysconf("SC_CLK_TCK")
    with path.open("w") as out:
        while True:
            now = time.time()
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    tag = _tag(pid)
                    if tag is None:
                        continue
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # gone meanwhile
                user, system, cpu = int(fields[11]), int(fields[12]), int(fields[36])
                out.write(f"{now:.2f} {pid} {tag} {user / tick:.2f} {system / tick:.2f} {cpu}\n")
            out.flush()
            time.sleep(interval)


def summary(lines: Sequence[str], rate: float, steady: tuple[float, float] = STEADY) -> list[Split]:
    """Each process's median user and system CPU per delivery over its steady seconds (using
    between ``steady`` shares of a core), in the order the processes started; processes with
    fewer than five steady samples are left out."""
    rows: dict[tuple[str, str], list[tuple[float, float, float, int]]] = defaultdict(list)
    for line in lines:
        when, pid, tag, user, system, cpu = line.split()
        rows[(pid, tag)].append((float(when), float(user), float(system), int(cpu)))
    splits = []
    for (pid, tag), samples in sorted(rows.items(), key=lambda item: item[1][0][0]):
        users: list[float] = []
        systems: list[float] = []
        cpus: list[int] = []
        # A second apart (two samples), so that the clock tick's 10 ms is 1% of it.
        for (t0, u0, s0, _), (t1, u1, s1, ran_on) in zip(samples, samples[2:], strict=False):
            span = t1 - t0
            if span <= 0:
                continue
            share = (u1 - u0 + s1 - s0) / span
            if steady[0] <= share <= steady[1]:
                users.append((u1 - u0) / span)
                systems.append((s1 - s0) / span)
                cpus.append(ran_on)
        if len(users) < 5:
            continue
        splits.append(
            Split(
                pid,
                tag,
                statistics.median(users) * 1e6 / rate,
                statistics.median(systems) * 1e6 / rate,
                len(users),
                Counter(cpus).most_common(),
            )
        )
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_split", description=(__doc__ or "").splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record", help="sample until interrupted")
    recording.add_argument("path", type=Path)
    summing = commands.add_parser("summary", help="medians per delivery, per process")
    summing.add_argument("path", type=Path)
    summing.add_argument("--rate", type=float, default=20_000, help="deliveries/s measured")
    summing.add_argument(
        "--steady",
        default=f"{STEADY[0]},{STEADY[1]}",
        metavar="LOW,HIGH",
        help=(
            "shares of a core a second counts as steady load in; lower LOW for a server that"
            " needs less than 30%% of a core at the measured rate"
        ),
    )
    args = parser.parse_args(argv)
    if args.command == "record":
        try:
            record(args.path)
        except KeyboardInterrupt:
            pass
        return 0
    low, high = (float(part) for part in args.steady.split(","))
    for split in summary(args.path.read_text().splitlines(), args.rate, (low, high)):
        sys.stdout.write(
            f"{split.tag:9s} pid {split.pid:>7s}: user {split.user_us:5.1f}"
            f" system {split.system_us:5.1f} total {split.total_us:5.1f} µs per delivery"
            f" ({split.samples} steady samples; CPUs {split.cpus})\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
