"""Faithfulness of attribution maps on foolbox's 20 ImageNet photos: deletion/insertion AUC vs a random map.

Usage: ``python scripts/eval_faithfulness.py [--methods gradcam,saliency] [--steps 50] [--json out.json]``.
Prints a Markdown table (mean ± std over the photos; deletion: lower is better, insertion: higher is better)
for each method beside the seeded random-map baseline, computed with batched runner sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CONVLENS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print the Markdown table."""
    import torch

    import accel
    from accel import registry
    from accel.evaluate import deletion_insertion
    from accel.images import foolbox_imagenet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--methods", default="gradcam", help="comma-separated registered attribution methods")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--baseline", default="petsiuk", help="petsiuk (delete to black, insert on blur), black, blur, mean"
    )
    ap.add_argument("--target", default="predicted", choices=("predicted", "label"))
    ap.add_argument("--n-random", type=int, default=1, help="random maps per photo (seeded)")
    ap.add_argument(
        "--random",
        default="matched",
        choices=("matched", "pixel"),
        help="matched: phase-randomised surrogate of each map (same smoothness); pixel: i.i.d. pixels",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write per-photo numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    photos = foolbox_imagenet()
    if not photos:
        print("foolbox photos are not installed (pip install --no-deps foolbox==3.3.4)", file=sys.stderr)
        return 2
    photos = photos[: args.limit] if args.limit else photos
    net = accel.load(args.model)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        registry.get(name)  # fail early on an unknown method

    if args.n_random < 1:
        print("--n-random must be >= 1: the random baseline is the point of the table", file=sys.stderr)
        return 2
    per: dict[str, list[dict[str, float | str]]] = {n: [] for n in names}
    correct = 0
    backend = "?"
    t0 = time.perf_counter()
    for k, (path, label) in enumerate(photos):
        img = accel.open_image(path)
        with torch.no_grad():
            pred = int(net.logits(net.preprocess(img)).argmax(1)[0])
        correct += pred == label
        target = pred if args.target == "predicted" else int(label)
        for name in names:
            res = accel.run(name, net, img, target=target)
            di = deletion_insertion(
                net,
                img,
                res,
                target,
                steps=args.steps,
                baseline=args.baseline,
                backend=args.backend,
                seed=args.seed + 1000 * k,
                n_random=args.n_random,
                random=args.random,
            )
            backend = di["meta"]["backend"]
            per[name].append(
                {
                    "photo": path.name,
                    "deletion": di["deletion"]["auc"],
                    "insertion": di["insertion"]["auc"],
                    "random_deletion": di["random"]["deletion"]["auc"],
                    "random_insertion": di["random"]["insertion"]["auc"],
                }
            )
        print(
            f"[{k + 1}/{len(photos)}] {path.name} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    wall = time.perf_counter() - t0

    kind = "phase-randomised surrogate of each map" if args.random == "matched" else "i.i.d. random pixels"
    lines = [
        f"Faithfulness on foolbox's {len(photos)} ImageNet photos, {args.model} (top-1 {correct}/{len(photos)}), "
        f"{args.target} class, {args.steps} steps, baseline {args.baseline}, {backend}; mean ± std over photos. "
        f"Random baseline: {kind}, {args.n_random} per photo, seeded.",
        "",
        "| map | deletion AUC (lower is better) | random map | insertion AUC (higher is better) | random map "
        "| photos beating random (del / ins) |",
        "|---|---|---|---|---|---|",
    ]

    def ms(a: np.ndarray) -> str:
        return f"{a.mean():.3f} ± {a.std():.3f}"

    for name, rows in per.items():
        d, rd, i, ri = (
            np.array([r[c] for r in rows], dtype=float)
            for c in ("deletion", "random_deletion", "insertion", "random_insertion")
        )
        wins = f"{int((d < rd).sum())}/{len(d)} / {int((i > ri).sum())}/{len(i)}"
        lines.append(f"| {name} | {ms(d)} | {ms(rd)} | {ms(i)} | {ms(ri)} | {wins} |")
    lines.append("")
    lines.append(f"Wall time {wall:.0f} s on {os.cpu_count()} CPU cores.")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "per_photo": per}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
