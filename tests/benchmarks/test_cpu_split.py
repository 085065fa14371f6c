"""``benchmarks.cpu_split``'s summary: the steady seconds only, user and system apart."""

from __future__ import annotations

from benchmarks.cpu_split import summary


def samples(pid: str, tag: str, per_second: list[tuple[float, float]]) -> list[str]:
    """Half-second samples of a process using ``(user, system)`` cores in each second."""
    lines, user, system = [], 0.0, 0.0
    for second, (u, s) in enumerate(per_second):
        for half in (0.0, 0.5):
            lines.append(f"{1000 + second + half:.2f} {pid} {tag} {user:.2f} {system:.2f} 1")
            user += u / 2
            system += s / 2
    return lines


def test_only_the_steady_seconds_count_and_user_and_system_stay_apart() -> None:
    # Connecting (a whole core), then 8 s at 0.2 user + 0.25 system, then closing (idle).
    broker = samples("11", "broker", [(0.9, 0.1)] * 3 + [(0.2, 0.25)] * 8 + [(0.0, 0.0)] * 3)
    nats = samples("12", "nats", [(0.15, 0.3)] * 8)
    (first, second) = summary(broker + nats, rate=20_000)
    assert (first.tag, second.tag) == ("broker", "nats")
    assert round(first.user_us, 1) == 10.0 and round(first.system_us, 1) == 12.5
    assert round(second.user_us, 1) == 7.5 and round(second.system_us, 1) == 15.0
    assert first.samples >= 5


def test_a_process_never_steady_is_left_out() -> None:
    assert summary(samples("13", "baseline", [(0.9, 0.1)] * 10), rate=20_000) == []


def test_a_lighter_server_is_counted_once_the_steady_window_is_lowered() -> None:
    # 8 s at a quarter of a core: under the default window (30-70%), inside 20-70%.
    light = samples("14", "nats", [(0.1, 0.15)] * 8)
    assert summary(light, rate=20_000) == []
    (split,) = summary(light, rate=20_000, steady=(0.2, 0.7))
    assert round(split.user_us, 1) == 5.0 and round(split.system_us, 1) == 7.5
