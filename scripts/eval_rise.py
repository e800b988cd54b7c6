"""RISE's acceptance numbers (issue 19) on efficientnet_lite0: peak memory at two mask counts, seed agreement at
N = 4,000, and deletion AUC against the random-map baseline on foolbox's 20 ImageNet photos.

Usage: ``python scripts/eval_rise.py [--quick] [--json out.json]``. Prints JSON, then Markdown lines.

- Peak RSS: each mask count runs in a fresh spawned process (load the model, one RISE map on ONNX Runtime) that
  reports its own high-water mark (the bench harness's `in_child` / `peak_rss_mb`); flat in N because the masks are
  generated per chunk, never all N at once.
- Seeds: Pearson correlation of the seed-0 and seed-1 maps at N masks on chelsea, for its predicted class.
- Faithfulness: per photo (explained for its own label) the deletion AUC of the RISE map and of seeded
  phase-randomised random maps (`accel.evaluate.faithfulness`), averaged over the photos (lower is better).
The measuring code is the bench workload's (`accel.bench.workloads.rise`); this script runs the parts the issue's
acceptance names, at the issue's sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed_agreement(masks: int, seeds: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Pearson r of two seeds' RISE maps at `masks` masks (chelsea, efficientnet_lite0, ONNX Runtime)."""
    from accel.bench.workloads.rise import _setup, pearson
    from accel.registry import run

    net, img, _, target = _setup()
    t0 = time.perf_counter()
    maps = [
        run("rise", net, img, target=target, masks=masks, seed=s, backend="onnxruntime").data for s in seeds
    ]
    return {
        "photo": "chelsea",
        "target": target,
        "masks": masks,
        "seeds": list(seeds),
        "pearson": pearson(*maps),
        "wall_s": time.perf_counter() - t0,
    }


def markdown(r: dict[str, Any]) -> list[str]:
    """The measured lines, ready for the README."""
    lines = []
    if "peak_rss_mb" in r:
        rss = r["peak_rss_mb"]
        lines.append(
            "- Peak RSS of a fresh process (load efficientnet_lite0, one RISE map on ONNX Runtime): "
            + ", ".join(f"N = {k}: {v:.0f} MiB" for k, v in rss.items())
            + "."
        )
    if "seeds" in r:
        s = r["seeds"]
        lines.append(
            f"- Seeds {s['seeds'][0]} and {s['seeds'][1]} at N = {s['masks']} ({s['photo']}): Pearson "
            f"{s['pearson']:.3f}."
        )
    if "faithfulness" in r:
        f = r["faithfulness"]
        m = f["mean"]
        lines.append(
            f"- Deletion AUC on {f['photos']} foolbox photos (N = {f['masks']}, lower is better): RISE "
            f"{m['deletion']:.3f} vs random maps {m['random_deletion']:.3f} (RISE lower on "
            f"{f['deletion_beats_random_on']}/{f['photos']}); insertion {m['insertion']:.3f} vs "
            f"{m['random_insertion']:.3f} (higher on {f['insertion_beats_random_on']}/{f['photos']})."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    import torch

    from accel.bench.workloads.rise import faithfulness, peak_rss
    from accel.runtime.session import default_threads

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke run, not the acceptance numbers)"
    )
    ap.add_argument("--rss-counts", default="1000,8000", help="mask counts for the peak-RSS processes")
    ap.add_argument("--seed-masks", type=int, default=4000)
    ap.add_argument("--faith-masks", type=int, default=1000, help="masks per photo for the deletion check")
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50, help="deletion/insertion curve steps")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: rss, seeds, faithfulness")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    if a.quick:
        a.rss_counts, a.seed_masks, a.faith_masks, a.photos, a.steps = "100,400", 200, 100, 2, 8
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    torch.set_num_threads(default_threads())
    out: dict[str, Any] = {"model": "efficientnet_lite0"}
    if "rss" not in skip:
        counts = tuple(int(v) for v in a.rss_counts.split(","))
        out["peak_rss_mb"] = peak_rss(counts)
        print("peak RSS:", out["peak_rss_mb"], flush=True)
    if "seeds" not in skip:
        out["seeds"] = seed_agreement(a.seed_masks)
        print("seeds:", out["seeds"], flush=True)
    if "faithfulness" not in skip:
        out["faithfulness"] = faithfulness(a.faith_masks, a.photos, a.steps)
    print(json.dumps(out, indent=1, default=float))
    print("\n".join(markdown(out)))
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
