"""Resource caps: the knobs that keep a shared 2-core machine responsive, each settable by an environment variable.

A request over a cap raises `ResourceLimit` whose message names the variable to change, so an administrator can
raise a limit deliberately instead of discovering it by a frozen server.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import settings
from .errors import ResourceLimit


@dataclass(frozen=True)
class Cap:
    """One configurable limit: what it bounds, its environment variable and its default."""

    kind: str
    env: str
    default: int
    what: str


CAPS: dict[str, Cap] = {
    c.kind: c
    for c in (
        Cap(
            "pixels", "CONVLENS_MAX_PIXELS", 50_000_000, "pixels in an opened image (checked from the header)"
        ),
        Cap("upload_mb", "CONVLENS_MAX_UPLOAD_MB", 1024, "size of an uploaded file in MiB"),
        Cap("side", "CONVLENS_MAX_SIDE", 1024, "side in pixels of an image a method generates or optimises"),
        Cap("steps", "CONVLENS_MAX_STEPS", 2000, "optimisation steps / epochs of one run"),
        Cap("batch", "CONVLENS_MAX_BATCH", 1024, "images in one batch"),
        Cap("passes", "CONVLENS_MAX_PASSES", 1024, "forward/backward passes per image (samples, IG steps)"),
        Cap("dataset", "CONVLENS_MAX_DATASET", 100_000, "images streamed from one dataset"),
        Cap("synth_mb", "CONVLENS_SYNTH_MAX_MB", 8192, "memory in MiB a synthesis run may plan for"),
        Cap("zip_files", "CONVLENS_UPLOAD_ZIP_FILES", 20_000, "images in one uploaded dataset .zip"),
        Cap("zip_mb", "CONVLENS_UPLOAD_ZIP_MB", 512, "uncompressed MiB of one uploaded dataset .zip"),
        Cap(
            "checkpoint_mb",
            "CONVLENS_MAX_CHECKPOINT_MB",
            2048,
            "MiB of tensors in a checkpoint, decompressed",
        ),
        Cap(
            "checkpoint_tensors",
            "CONVLENS_MAX_CHECKPOINT_TENSORS",
            100_000,
            "tensors (zip records) in a checkpoint",
        ),
        Cap(
            "checkpoint_ratio",
            "CONVLENS_MAX_CHECKPOINT_RATIO",
            100,
            "compression ratio of a zipped checkpoint over 64 MiB",
        ),
    )
}
_MIB_CAPS = ("upload_mb", "synth_mb", "checkpoint_mb", "zip_mb")  # sizes in MiB may be fractional
for _c in CAPS.values():
    if _c.kind in _MIB_CAPS:
        settings.declare(_c.env, "float", _c.default, f"cap: {_c.what}", 1e-6)
    else:
        settings.declare(_c.env, "int", _c.default, f"cap: {_c.what}", 1)

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


def check(kind: str, value: float, where: str) -> None:
    """Raise ResourceLimit if `value` exceeds cap `kind`, naming the environment variable that raises it."""
    limit = cap(kind)
    if value > limit:
        c = CAPS[kind]
        raise ResourceLimit(
            f"{where} = {value:g} is over the configured cap of {limit:g} ({c.what}); lower it, or raise "
            f"the cap with the environment variable {c.env} (e.g. {c.env}={int(value)})"
        )


def table() -> list[dict[str, object]]:
    """Every cap with its variable, default and current value (for the README, `convlens limits` and the UI)."""
    return [
        {"kind": c.kind, "env": c.env, "default": c.default, "current": cap(c.kind), "what": c.what}
        for c in CAPS.values()
    ]
