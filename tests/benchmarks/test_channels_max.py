"""The many-channels step-up: a real broker on a free port, the generator's real clients.

A series counts a rate as sustained only when every subscriber got its own channel's
publications in time; the report's ratio is the broker's highest rate over each peer's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import channels_max
from benchmarks.fanout import FanoutSeries


def test_a_small_step_up_sustains_a_rate_a_broker_easily_keeps_up_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = channels_max.main(
        [
            "--targets=broker-v1-json",
            "--channels=20",
            "--per-channel=2",
            "--start=100",
            "--max-rate=100",
            "--refinements=0",
            "--duration=1",
            "--workers=1",
            f"--results={tmp_path}",
        ]
    )
    assert code == 0
    [record] = list(tmp_path.glob("channels-max-*.json"))
    [series] = json.loads(record.read_text())["series"]
    rates = [step["params"]["rate"] for step in series["steps"]]
    assert rates == [100.0]
    # 20 channels x 2 subscribers: every publication reaches the 2 subscribers of its channel.
    assert all(step["lost"] == 0 and step["ok"] for step in series["steps"])
    assert series["stop_reason"] == "every rate up to 100/s passed"
    assert "| broker-v1-json | 100 |" in capsys.readouterr().out


def test_the_ratio_is_the_highest_rate_sustained_over_each_peers() -> None:
    nobody = FanoutSeries("nats", "", [], "stopped")
    assert channels_max.ratio_lines([nobody], "broker-v1-json") == []
    assert channels_max.summary_table([nobody])[-1].startswith("| nats | 0 |")
