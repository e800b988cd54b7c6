"""Every CONVLENS_* environment variable in one place: name, type, default and meaning, parsed with clear errors.

Nothing else in convlens reads or writes these variables: code asks `settings.get(NAME)` (typed, validated) and
`convlens config` prints `table()`. A malformed value raises `SettingError` (a `BadInput`) naming the variable,
what it holds and what it should hold, so a typo in a deployment gives one clear line instead of a traceback.
Values are read from the environment at call time (cheap), so tests and `CONVLENS_*=... convlens` both work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput


class SettingError(BadInput):
    """A CONVLENS_* environment variable holds a value convlens cannot use; the message names it."""


@dataclass(frozen=True)
class Var:
    """One environment variable: its type (int, float, bool, path, paths, str), default and meaning."""

    name: str
    kind: str
    default: Any
    meaning: str
    minimum: float | None = None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(var: Var, raw: str) -> Any:
    text = raw.strip()
    what = f"{var.name}={raw!r}"
    if var.kind in ("int", "float"):
        try:
            num = float(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise SettingError(f"{what} is not a number; set it to {_expect(var)} ({var.meaning})") from None
        if num != num or num in (float("inf"), float("-inf")):
            raise SettingError(f"{what} is not a finite number; set it to {_expect(var)}")
        if var.kind == "int":
            if num != int(num):
                raise SettingError(f"{what} is not a whole number; set it to {_expect(var)}")
            num = int(num)
        if var.minimum is not None and num < var.minimum:
            raise SettingError(f"{what} is below {var.minimum:g}; set it to {_expect(var)} ({var.meaning})")
        return num
    if var.kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingError(f"{what} is not a yes/no value; use 1 or 0 ({var.meaning})")
    if var.kind == "path":
        if "\x00" in text:
            raise SettingError(f"{var.name} holds a NUL character; set it to a folder path")
        return Path(text).expanduser() if text else None
    if var.kind == "paths":
        parts = [p for p in text.split(os.pathsep) if p.strip()]
        if any("\x00" in p for p in parts):
            raise SettingError(f"{var.name} holds a NUL character; set it to folder paths joined by ':'")
        return [Path(p.strip()).expanduser() for p in parts]
    return text


def _expect(var: Var) -> str:
    kind = "a whole number" if var.kind == "int" else "a number"
    return f"{kind} >= {var.minimum:g}" if var.minimum is not None else kind


VARS: dict[str, Var] = {}


def declare(name: str, kind: str, default: Any, meaning: str, minimum: float | None = None) -> Var:
    """Add a variable to the table; called here at import time only, so the table is whole wherever settings is
    imported."""
    if not name.startswith("CONVLENS_"):
        raise ValueError(f"setting names start with CONVLENS_, got {name!r}")
    var = Var(name, kind, default, meaning, minimum)
    VARS[name] = var
    return var


# Paths and environment
declare(
    "CONVLENS_CACHE", "path", None, "cache folder for ONNX exports and engines (default: the user cache dir)"
)
declare("CONVLENS_STORE", "path", None, "run store folder (default: the user data dir's convlens/store)")
declare(
    "CONVLENS_MODELS_DIR", "path", None, "folder of model cards and project checkpoints (default: models/)"
)
declare(
    "CONVLENS_TEAM_MODELS",
    "path",
    None,
    "a TOML file listing the team's own models (name, architecture or factory, weights, preprocessing, labels)",
)
declare("CONVLENS_FASHION_MNIST", "path", None, "folder with the four Fashion-MNIST idx files")
declare("CONVLENS_OFFLINE", "bool", False, "never try to download torchvision weights")
# Execution
declare("CONVLENS_THREADS", "int", None, "intra-op threads per session (default: the usable cores)", 1)
declare("CONVLENS_MEMORY_BUDGET_MB", "float", None, "memory the automatic batch size plans for", 1)
declare("CONVLENS_ORT_SPIN", "bool", False, "let ONNX Runtime threads busy-wait between ops")
declare("CONVLENS_FORCE_GPU_PROBE", "bool", False, "try GPU providers even without a visible NVIDIA driver")
declare("CONVLENS_TUNE_MALLOC", "bool", True, "raise glibc's mmap/trim thresholds in convlens processes")
declare("CONVLENS_TSNE_JOBS", "int", None, "threads for openTSNE (default: cores - 1)", 1)
# Untrusted ONNX graphs run in sandbox processes (accel.runtime.sandbox)
declare(
    "CONVLENS_ONNX_TIMEOUT_S",
    "float",
    60.0,
    "cap: seconds one request (session start or one batch) of an uploaded ONNX graph may run before its sandbox "
    "process is killed",
    0.01,
)
declare(
    "CONVLENS_ONNX_MAX_MB",
    "float",
    4096.0,
    "cap: address space in MiB of each sandbox process that runs uploaded ONNX graphs",
    256,
)
declare(
    "CONVLENS_MAX_WINDOWS",
    "int",
    20_000,
    "cap: occluded windows one occlusion request evaluates (window 1, stride 1 on 224 px is 50,176 passes)",
    1,
)
# The shared dashboard
declare(
    "CONVLENS_AUTH",
    "str",
    "off",
    "dashboard sign-in: off (one local user) or required (st.login with the OIDC provider in .streamlit/secrets.toml)",
)
declare(
    "CONVLENS_ADMINS",
    "str",
    "",
    "comma-separated e-mails of signed-in users who may run the quick bench from the dashboard (when sign-in is "
    "required)",
)
declare(
    "CONVLENS_DATA_ROOTS",
    "paths",
    [],
    "folders whose datasets, style images, masks and checkpoints dashboard users may pick (':'-separated; none by "
    "default)",
)
declare(
    "CONVLENS_HEAVY_PER_USER",
    "int",
    1,
    "heavy dashboard runs (synthesis, dataset passes, the bench) one user may run at once; more wait in line",
    1,
)
declare(
    "CONVLENS_HEAVY_SERVER",
    "int",
    2,
    "heavy dashboard runs the whole server runs at once; more wait in line",
    1,
)


@dataclass(frozen=True)
class Cap:
    """One configurable limit: what it bounds, its environment variable and its default."""

    kind: str
    env: str
    default: int
    what: str


# Resource caps (accel.limits checks them), declared here like every other variable.
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
        declare(_c.env, "float", _c.default, f"cap: {_c.what}", 1e-6)
    else:
        declare(_c.env, "int", _c.default, f"cap: {_c.what}", 1)


def get(name: str) -> Any:
    """The typed value of variable `name`: parsed from the environment if set (non-empty), else its default."""
    var = VARS.get(name)
    if var is None:
        raise KeyError(f"{name} is not a declared convlens setting")
    raw = os.environ.get(name)
    if raw is None or (raw.strip() == "" and var.kind != "bool"):
        return var.default
    return _parse(var, raw)


def is_set(name: str) -> bool:
    """Whether the environment sets `name` to a non-empty value."""
    return bool(os.environ.get(name, "").strip())


def environment() -> dict[str, str]:
    """The declared CONVLENS_* variables this process was given, to hand to child processes and Ray workers (they
    must see the same settings); the one place that lists them from the environment."""
    return {k: v for k, v in os.environ.items() if k in VARS}


def check_all() -> list[str]:
    """Parse every declared variable now; the messages of those that are malformed (empty list: all fine)."""
    bad = []
    for name in VARS:
        try:
            get(name)
        except SettingError as e:
            bad.append(str(e))
    return bad


def table() -> list[dict[str, Any]]:
    """Every variable with its kind, default, current value (or the error it gives) and meaning."""
    rows = []
    for var in sorted(VARS.values(), key=lambda v: v.name):
        try:
            current: Any = get(var.name)
        except SettingError as e:
            current = f"INVALID: {e}"
        rows.append(
            {
                "name": var.name,
                "kind": var.kind,
                "default": var.default,
                "current": str(current) if isinstance(current, Path) else current,
                "set": is_set(var.name),
                "meaning": var.meaning,
            }
        )
    return rows


def markdown_table() -> str:
    """The settings as the README's Markdown table (defaults, not this environment's values); a test keeps the README
    equal to it, `convlens config --markdown` prints it."""

    def fmt(v: Any) -> str:
        if v is None or v == [] or v == "":
            return "(unset)"
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return f"{v:,}" if isinstance(v, int) else str(v)

    rows = ["| variable | default | meaning |", "|---|---:|---|"]
    for var in sorted(VARS.values(), key=lambda v: v.name):
        rows.append(f"| `{var.name}` | {fmt(var.default)} | {var.meaning} |")
    return "\n".join(rows)


def lazy(name: str) -> Callable[[], Any]:
    """A zero-argument reader of `name`, for defaults evaluated at use time."""
    return lambda: get(name)
