"""Resource caps: the knobs that keep a shared 2-core machine responsive, each settable by an environment variable.

The caps are declared with every other variable in accel.settings (`settings.CAPS`); this module checks them.

A request over a cap raises `ResourceLimit` whose message names the variable to change, so an administrator can
raise a limit deliberately instead of discovering it by a frozen server.
"""

from __future__ import annotations

from collections.abc import Callable

from . import settings
from .errors import ResourceLimit
from .settings import CAPS, Cap

# Declared parameter names that are capped, by kind (a method may also name its cap with param(limit=...)).
PARAM_CAPS: dict[str, str] = {
    "steps": "steps",
    "epochs": "steps",
    "gatys_steps": "steps",
    "iterations": "steps",
    "batch_size": "batch",
    "batch": "batch",
    "internal_batch": "batch",
    "samples": "passes",
    "size": "side",
    "exemplar_size": "side",
    "limit": "dataset",
}


def cap(kind: str) -> int:
    """The current value of cap `kind`: its environment variable (a positive whole number) if set, else the default.

    A malformed value raises `settings.SettingError` naming the variable."""
    return int(settings.get(CAPS[kind].env))


def cap_float(kind: str) -> float:
    """Cap `kind` as a float (the MiB caps may be fractional)."""
    return float(settings.get(CAPS[kind].env))


def check(kind: str, value: float, where: str, refusal: Callable[[float, Cap], str] | None = None) -> None:
    """Raise ResourceLimit if `value` exceeds cap `kind`, naming the environment variable that raises it.

    `refusal(limit, cap)` words the message where the caller knows more (the checkpoint budgets); `where` then
    goes unused."""
    limit = cap_float(kind)
    if value > limit:
        c = CAPS[kind]
        raise ResourceLimit(
            refusal(limit, c)
            if refusal is not None
            else f"{where} = {value:g} is over the configured cap of {limit:g} ({c.what}); lower it, or raise "
            f"the cap with the environment variable {c.env} (e.g. {c.env}={int(value)})"
        )


def table() -> list[dict[str, object]]:
    """Every cap with its variable, default and current value (for the README, `convlens limits` and the UI)."""
    return [
        {"kind": c.kind, "env": c.env, "default": c.default, "current": cap(c.kind), "what": c.what}
        for c in CAPS.values()
    ]
