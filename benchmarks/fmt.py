"""How every benchmark report writes its figures: milliseconds and ratios."""

from __future__ import annotations


def fmt_ms(value: float | None) -> str:
    """Milliseconds: one decimal below 100, none above; ``-`` when not measured."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_ratio(value: float | None, missing: str = "-") -> str:
    """A ratio as ``1.23x``; ``missing`` when not measured."""
    return missing if value is None else f"{value:.2f}x"
