"""Checks of the user's text and number parameters that several synthesis techniques share.

Layer and style lists arrive as comma-separated text (the CLI and the dashboard fields); each helper refuses a
bad value with a BadInput naming the parameter.
"""

from __future__ import annotations

import math

from ....errors import BadInput


def parse_names(text: str, what: str) -> list[str]:
    """A comma-separated list of names (layers, styles) -> list, refusing an empty list."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BadInput(f"{what}: give at least one name (comma-separated), got {text!r}")
    return items


def parse_weights(text: str, n: int, what: str) -> list[float]:
    """Comma-separated non-negative weights, exactly `n` of them (empty: all 1)."""
    if not str(text).strip():
        return [1.0] * n
    try:
        ws = [float(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise BadInput(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if len(ws) != n:
        raise BadInput(f"{what}: expected {n} weights (one per item), got {len(ws)} in {text!r}")
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise BadInput(f"{what}: weights must be finite and >= 0, got {ws}")
    if sum(ws) <= 0:
        raise BadInput(f"{what}: at least one weight must be positive, got {ws}")
    return ws


def non_negative(value: float, what: str) -> float:
    """BadInput unless `value` is a finite number >= 0 (loss weights)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise BadInput(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)
