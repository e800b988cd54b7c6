"""Every attribution method x every metric on foolbox's 20 ImageNet photos (the README's evaluation table).

Usage: ``python scripts/eval_table.py [--photos 20] [--methods a,b] [--metrics a,b] [--out docs/eval_table]``.
Runs `accel.evaluate.suite.evaluate` on efficientnet_lite0 (targets: the network's predicted class), prints
progress and the Markdown table (mean ± sd over the photos, a random-map baseline row), and writes
``<out>.json`` (the whole result) and ``<out>.md`` (caption, table, what was skipped and why).

Resumable: each method's scores are kept in ``artifacts/eval_parts/<method>.json`` as soon as it is done (with the
options it ran under); a rerun with the same options reuses them and scores only the rest (``--fresh`` ignores
them). The table is the merge of the parts.

Cheap options (fewer steps, runs, samples and layers; the caption lists them) keep a table of the fast methods
within about 40 minutes on two shared cores, and passing
``--full`` uses every method's and metric's defaults instead (hours on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CONVLENS_OFFLINE", "1")

# methods that need an input the table cannot give them: the reason shown under the table
NEEDS_INPUT = {
    "scouter": "needs a trained SCOUTER checkpoint for the backbone (checkpoint=...)",
    "contrastive_gradcam": "explains the target against a foil class (a second class per photo)",
    "saliency_grabcut": "a segmentation refined from a seed map (GrabCut), scored against ground-truth masks",
}
# cheaper than the defaults: maps of 20 photos, recomputed many times by the randomisation and robustness metrics
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "rise": {"masks": 500},
    "occlusion": {"window": 32, "stride": 32},
    "scorecam": {"max_channels": 64},
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 10},
}
METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 8},
    "insertion": {"steps": 8},
    "pixel_flipping": {"pixels_per_step": 224 * 224 // 8},
    "region_perturbation": {"patch_size": 28, "regions": 8},
    "road_morf": {"percentages": [20, 50, 80]},
    "road_lerf": {"percentages": [20, 50, 80]},
    "faithfulness_correlation": {"runs": 16},
    "mprt": {"max_layers": 2},
    "smooth_mprt": {"samples": 2, "max_layers": 2},
    "max_sensitivity": {"samples": 2},
    "avg_sensitivity": {"samples": 2},
}
LOCALISATION_NOTE = "localisation metrics skipped: foolbox's photos come without boxes or masks"


def printer() -> Any:
    """An Observer that prints progress lines with the elapsed time (built here: accel is imported late)."""
    from accel.registry import Observer

    class Printer(Observer):
        """Prints at most one line per 2% of progress or per new message."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.last = (-1.0, "")

        def progress(self, frac: float, msg: str = "") -> None:
            """Print `frac` and `msg` when either moved enough."""
            head = msg.split(":")[0]
            if frac - self.last[0] >= 0.02 or head != self.last[1]:
                print(f"[{time.perf_counter() - self.t0:7.0f} s] {100 * frac:5.1f}%  {msg}", flush=True)
                self.last = (frac, head)

    return Printer()


def attribution_methods() -> list[str]:
    """Registered attribution methods that make a map from the photo and a target alone."""
    import accel

    return [s.name for s in accel.list_methods() if s.family == "attribute" and s.name not in NEEDS_INPUT]


def caption(res: dict[str, Any], full: bool) -> str:
    """What the table shows, how it was made, and with which options."""
    lines = [
        f"Every attribution method x every metric on foolbox's {res['n_images']} ImageNet photos with "
        f"{res['model']} (targets: the predicted class; mean ± sd over the photos; ↑/↓: higher/lower is better; "
        f"*random map*: the same metric on phase-randomised surrogates of each method's maps, averaged over the "
        f"methods). Wall time {res['wall_s'] / 60:.0f} min on this machine.",
    ]
    if not full:
        opts = "; ".join(f"{k} {v}" for k, v in METRIC_OPTIONS.items())
        meth = "; ".join(f"{k} {v}" for k, v in METHOD_PARAMS.items())
        lines.append(f"Cheap options (not the defaults): metrics: {opts}. Methods: {meth}.")
    return "\n\n".join(lines)


def notes(res: dict[str, Any], skipped_methods: dict[str, str]) -> list[str]:
    """Bullets: methods left out, metric skips and errors."""
    out = [f"- {LOCALISATION_NOTE}"]
    out += [f"- {m} not scored: {why}" for m, why in skipped_methods.items()]
    loc = {"pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"}
    out += [f"- {k}: {v}" for k, v in res["skipped"].items() if k.split("/")[-1] not in loc]
    out += [f"- error {k}: {v}" for k, v in res["errors"].items()]
    return out


PARTS = ROOT / "artifacts" / "eval_parts"


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from per-method results of the same photos, model, metrics and seed (their wall times add)."""
    from accel.evaluate.suite import tidy_table

    first = parts[0]
    for p in parts[1:]:
        same = ("model", "image_ids", "targets", "seed", "n_random")
        if any(p[k] != first[k] for k in same) or [m["name"] for m in p["metrics"]] != [
            m["name"] for m in first["metrics"]
        ]:
            raise ValueError(f"part {p['methods']} was scored on other photos, targets or metrics")
    out = {k: first[k] for k in ("model", "n_images", "image_ids", "targets", "seed", "n_random", "metrics")}
    out["methods"] = [m for p in parts for m in p["methods"]]
    for k in ("method_params", "scores", "random", "skipped", "errors", "timings"):
        out[k] = {kk: vv for p in parts for kk, vv in p[k].items()}
    out["stopped"] = any(p["stopped"] for p in parts)
    out["wall_s"] = sum(p["wall_s"] for p in parts)
    out["table"] = tidy_table(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation, print the table and write JSON + Markdown."""
    import torch

    import accel
    from accel.evaluate import list_metrics
    from accel.evaluate.suite import evaluate, markdown
    from accel.images import foolbox_imagenet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--methods", default="", help="comma-separated (default: every attribution method)")
    ap.add_argument("--metrics", default="", help="comma-separated (default: every non-localisation metric)")
    ap.add_argument("--n-random", type=int, default=1, help="random maps per photo for the baseline row")
    ap.add_argument("--full", action="store_true", help="every method's and metric's default options")
    ap.add_argument("--out", default=str(ROOT / "docs" / "eval_table"), help="writes OUT.json and OUT.md")
    ap.add_argument("--fresh", action="store_true", help="score every method again (ignore kept parts)")
    a = ap.parse_args(argv)

    items = foolbox_imagenet()[: a.photos]
    if not items:
        print("foolbox's photos are not installed (pip install --no-deps foolbox)", file=sys.stderr)
        return 1
    net = accel.load(a.model)
    photos = [(accel.open_image(p), lab, p.stem) for p, lab in items]
    methods = [m for m in a.methods.split(",") if m] or attribution_methods()
    metrics = [m for m in a.metrics.split(",") if m] or [
        m.name for m in list_metrics() if m.family != "localisation"
    ]
    print(
        f"{a.model}: {len(photos)} photos, {len(methods)} methods x {len(metrics)} metrics, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    parts = []
    for i, m in enumerate(methods):
        mp = {} if a.full or m not in METHOD_PARAMS else {m: METHOD_PARAMS[m]}
        options = {
            "model": a.model,
            "photos": len(photos),
            "metrics": metrics,
            "method_params": mp,
            "metric_options": {} if a.full else METRIC_OPTIONS,
            "n_random": a.n_random,
        }
        part_path = PARTS / f"{m}.json"
        if not a.fresh and part_path.is_file():
            kept = json.loads(part_path.read_text())
            if kept.get("options") == options and not kept["stopped"]:
                print(f"[{i + 1}/{len(methods)}] {m}: kept from {part_path}", flush=True)
                parts.append(kept)
                continue
        print(f"[{i + 1}/{len(methods)}] {m}", flush=True)
        part = evaluate(
            net,
            photos,
            [m],
            metrics,
            targets="predicted",
            method_params=mp,
            metric_options=options["metric_options"],
            n_random=a.n_random,
            seed=0,
            observer=printer(),
        )
        part["options"] = options
        PARTS.mkdir(parents=True, exist_ok=True)
        part_path.write_text(json.dumps(part, default=float) + "\n")
        parts.append(part)
    res = merge(parts)
    left_out = {m: why for m, why in NEEDS_INPUT.items() if not a.methods}
    table = markdown(res)
    text = "\n".join([caption(res, a.full), "", table, *notes(res, left_out)]) + "\n"
    res["caption"] = caption(res, a.full)
    res["left_out"] = left_out
    res["options"] = {
        "methods": {} if a.full else METHOD_PARAMS,
        "metrics": {} if a.full else METRIC_OPTIONS,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    per = {m: sum(v for k, v in t.items() if k != "maps_s") + t["maps_s"] for m, t in res["timings"].items()}
    print("seconds per method:", {m: round(float(v)) for m, v in sorted(per.items(), key=lambda kv: -kv[1])})
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}; wall {res['wall_s']:.0f} s")
    return 2 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
