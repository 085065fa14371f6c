"""config/broker.service agrees with the broker's settings (docs/deployment.md)."""

from __future__ import annotations

import configparser
from pathlib import Path

from broker.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_systemd_unit_waits_longer_than_the_drain_and_allows_100k_descriptors() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "config" / "broker.service")
    service = unit["Service"]
    shipped = load_settings(str(ROOT / "config" / "broker.toml"), {})
    # systemd must not SIGKILL a drain that is still within its grace period.
    assert float(service["TimeoutStopSec"]) > shipped.server.shutdown_grace
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert int(service["LimitNOFILE"]) >= 100_000 + 100
    assert service["ExecStart"].split()[1:] == ["serve"]
