"""Trust checks for the Compare page, from `accel.evaluate` when it is installed: deletion/insertion
AUC beside a random-map baseline, and the cascading model-randomisation sanity check. Skipped gracefully (None)
when the metrics module is absent or lacks a function."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np


def metrics_module() -> Any:
    """The attribution metrics module, or None when it has not landed (or fails to import)."""
    try:
        return importlib.import_module("accel.evaluate")
    except Exception:  # noqa: BLE001 - a broken or missing module only hides the scores
        return None


def available() -> dict[str, bool]:
    """Which checks can be shown: {"auc": deletion/insertion, "sanity": model randomisation}."""
    m = metrics_module()
    return {
        "auc": m is not None and callable(getattr(m, "deletion_insertion", None)),
        "sanity": m is not None and callable(getattr(m, "sanity_check", None)),
    }


def auc_scores(
    net: Any,
    img: Any,
    saliency: np.ndarray,
    target: int | None,
    backend: str,
    progress: Any = None,
    steps: int = 50,
) -> dict[str, Any] | None:
    """{"deletion", "insertion", "random_deletion", "random_insertion", "fractions", "curves"} for one map."""
    out = auc_scores_many(net, img, [saliency], [target], backend, progress, steps)
    return None if out is None else out[0]


def auc_scores_many(
    net: Any,
    img: Any,
    maps: list[np.ndarray],
    targets: list[int | None],
    backend: str,
    progress: Any = None,
    steps: int = 50,
) -> list[dict[str, Any]] | None:
    """`auc_scores` for several maps of one image in one batched sweep (None when the metrics are absent)."""
    m = metrics_module()
    if m is None:
        return None
    many = getattr(m, "deletion_insertion_many", None)
    if callable(many):
        outs = many(net, img, maps, targets, steps=int(steps), backend=backend, progress=progress)
    elif callable(getattr(m, "deletion_insertion", None)):
        outs = [
            m.deletion_insertion(net, img, s, target=t, backend=backend, progress=progress, steps=int(steps))
            for s, t in zip(maps, targets, strict=True)
        ]
    else:
        return None
    return [_scores(out) for out in outs]


def _scores(out: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "deletion": float(out["deletion"]["auc"]),
        "insertion": float(out["insertion"]["auc"]),
        "fractions": np.asarray(out.get("fractions", []), dtype=np.float64),
        "curves": {k: np.asarray(out[k]["curve"], dtype=np.float64) for k in ("deletion", "insertion")},
        "backend": out.get("meta", {}).get("backend"),
    }
    rnd = out.get("random")
    if rnd:
        res["random_deletion"] = float(rnd["deletion"]["auc"])
        res["random_insertion"] = float(rnd["insertion"]["auc"])
    return res


def sanity(
    net: Any, img: Any, method: str, params: dict[str, Any], target: int | None, progress: Any = None
) -> dict[str, Any] | None:
    """The cascading randomisation check of one method: {"layers", "spearman", "ssim", "verdict", "passes"}."""
    m = metrics_module()
    if m is None or not callable(getattr(m, "sanity_check", None)):
        return None
    kw = {k: v for k, v in params.items() if k != "target"}
    out = m.sanity_check(net, method, img, target=target, progress=progress, keep_maps=False, **kw)
    rows = out["rows"]
    return {
        "layers": [r["layer"] for r in rows],
        "spearman": np.asarray([r["spearman"] for r in rows], dtype=np.float64),
        "ssim": np.asarray([r["ssim"] for r in rows], dtype=np.float64),
        "verdict": str(out.get("verdict", "")),
        "passes": bool(out.get("passes", False)),
    }
