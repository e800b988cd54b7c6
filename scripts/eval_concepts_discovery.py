"""Does concept discovery find the planted concept? Measured on `fashion_planted` (every training Shirt stamped).

Usage: ``python scripts/eval_concepts_discovery.py [--model fashion_planted] [--k 8] [--figures docs/screenshots]
[--memory]``.

1. Discovery set: the first `--images` test-split images of the planted class, each stamped (accel.methods.concepts
   .sets) at a seeded random position, written to a temporary folder; `discover` runs on it (select=all).
2. Among the top-3 concepts by importance: the share of each one's top-20 crops that contain the stamp, from the
   crop boxes (Result.extras top_boxes/top_ids) and the known stamp boxes: "whole" = the 6x6 stamp lies entirely
   inside the crop, "half" = at least half of its area does.
3. For the best of those concepts: `concept_map` (presence, and gradient-weighted for the planted class) on the next
   `--held-out` stamped test images of the class (never seen by discovery): is the map's peak pixel inside the stamp?
4. `--figures DIR`: the discovered concepts' crops and a concept-map overlay strip, as PNGs for the README.
5. `--memory`: peak RSS of discovery streaming 10,000 Fashion-MNIST training images (ru_maxrss before/after).
Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CONVLENS_OFFLINE", "1")


def stamped_class_images(n: int, skip: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Test-split images of the planted class [skip, skip+n), stamped; (images (n,28,28) uint8, stamp boxes (n,4))."""
    from accel.fashion_mnist import load_fashion_mnist
    from accel.methods.concepts.sets import PLANTED_CLASS, STAMP_SIDE, stamp_images, stamp_positions

    x, y = load_fashion_mnist("test")
    imgs = x[y == PLANTED_CLASS][skip : skip + n]
    pos = stamp_positions(np.random.default_rng(seed), len(imgs))
    boxes = np.concatenate([pos, pos + STAMP_SIDE], axis=1)  # top, left, bottom, right (exclusive)
    return stamp_images(imgs, pos), boxes


def overlap(crop: np.ndarray, stamp: np.ndarray) -> float:
    """Share of the stamp's area inside the crop box."""
    h = max(0, min(crop[2], stamp[2]) - max(crop[0], stamp[0]))
    w = max(0, min(crop[3], stamp[3]) - max(crop[1], stamp[1]))
    return h * w / float((stamp[2] - stamp[0]) * (stamp[3] - stamp[1]))


def crop_hits(res, boxes: dict[str, np.ndarray], rank: int) -> dict[str, float]:
    """Whole / half containment of the stamp in concept `rank`'s top crops."""
    shares = [
        overlap(b, boxes[Path(i).name])
        for i, b in zip(res.extras["top_ids"][rank], res.extras["top_boxes"][rank])
    ]
    return {
        "whole": float(np.mean([s >= 1.0 for s in shares])),
        "half": float(np.mean([s >= 0.5 for s in shares])),
    }


def peak_hits(net, basis_file: str, layer: str, index: int, imgs: np.ndarray, boxes: np.ndarray, target: int):
    """For presence and gradient weighting: the share of images whose map peak lies inside the stamp, and maps."""
    import accel

    out: dict[str, float] = {}
    maps: dict[str, list[np.ndarray]] = {}
    for weighting in ("presence", "gradient"):
        hits = []
        maps[weighting] = []
        for im, b in zip(imgs, boxes):
            r = accel.run(
                "concept_map",
                net,
                Image.fromarray(im),
                target=target,
                concepts=basis_file,
                layer=layer,
                index=index,
                weighting=weighting,
            )
            py, px = np.unravel_index(int(np.argmax(r.data)), r.data.shape)
            hits.append(b[0] <= py < b[2] and b[1] <= px < b[3])
            maps[weighting].append(r)
        out[weighting] = float(np.mean(hits))
    return out, maps


def map_strip(results, boxes: np.ndarray, n: int, zoom: int = 6) -> Image.Image:
    """n pairs (stamped image with the stamp outlined, concept-map overlay), side by side."""
    side = 28 * zoom
    pad = 6
    strip = Image.new("RGB", (n * (2 * side + pad) + pad, side + 2 * pad), (255, 255, 255))
    for k in range(n):
        r = results[k]
        img = r.image.convert("RGB").resize((side, side), Image.Resampling.NEAREST)
        ov = r.overlay(alpha=0.5).resize((side, side), Image.Resampling.NEAREST)
        t, left, b, rgt = (int(v) * zoom for v in boxes[k])
        for im in (img, ov):
            ImageDraw.Draw(im).rectangle((left, t, rgt - 1, b - 1), outline=(0, 255, 0), width=2)
        x0 = pad + k * (2 * side + pad)
        strip.paste(img, (x0, pad))
        strip.paste(ov, (x0 + side, pad))
    return strip


def memory_run(net, target: int, k: int) -> dict[str, float]:
    """Peak RSS (MiB) before and after discovery streams 10,000 Fashion-MNIST training images."""
    import accel

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    r = accel.run(
        "discover",
        net,
        None,
        target=target,
        dataset="fashion_mnist:train",
        limit=10_000,
        k=k,
        importance="occlusion",
        batch_size=256,
    )
    return {
        "images_streamed": r.meta["images_seen"],
        "crops": r.meta["crops"],
        "peak_rss_before_mib": round(before, 1),
        "peak_rss_after_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fashion_planted")
    ap.add_argument("--layer", default="")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--crop", type=float, default=0.5)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--held-out", type=int, default=50)
    ap.add_argument("--importance", default="sobol")
    ap.add_argument("--crop-mode", default="cells")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", default="")
    ap.add_argument("--memory", action="store_true")
    a = ap.parse_args(argv)

    import accel
    from accel.methods.concepts.sets import PLANTED_CLASS

    net = accel.load(a.model)
    imgs, boxes = stamped_class_images(a.images, 0, seed=123)
    held, held_boxes = stamped_class_images(a.held_out, a.images, seed=456)
    report: dict = {
        "model": a.model,
        "planted_class": PLANTED_CLASS,
        "discovery_images": len(imgs),
        "held_out": len(held),
    }
    with tempfile.TemporaryDirectory() as tmp:
        names = {}
        for i, (im, b) in enumerate(zip(imgs, boxes)):
            name = f"shirt_{i:04d}.png"
            Image.fromarray(im).save(Path(tmp) / name)
            names[name] = b
        t0 = time.perf_counter()
        res = accel.run(
            "discover",
            net,
            None,
            target=PLANTED_CLASS,
            dataset=tmp,
            select="all",
            k=a.k,
            crops=a.crops,
            crop=a.crop,
            crop_mode=a.crop_mode,
            top=20,
            importance=a.importance,
            seed=a.seed,
            layer=a.layer,
        )
        report["discover_s"] = round(time.perf_counter() - t0, 1)
        report["layer"] = res.meta["layer"]
        report["importance"] = [round(float(v), 4) for v in res.extras["importance"]]
        report["top3_crops_with_stamp"] = [crop_hits(res, names, r) for r in range(min(3, a.k))]
        best = int(np.argmax([h["whole"] + h["half"] for h in report["top3_crops_with_stamp"]]))
        report["stamp_concept_rank"] = best
        basis_file = str(Path(tmp) / "basis.npz")
        np.savez(basis_file, basis=res.extras["basis"], layer=np.array(res.meta["layer"]))
        peaks, maps = peak_hits(net, basis_file, res.meta["layer"], best, held, held_boxes, PLANTED_CLASS)
        report["map_peak_inside_stamp"] = peaks
    if a.figures:
        out = Path(a.figures)
        out.mkdir(parents=True, exist_ok=True)
        res.extras["image"].save(out / "concepts_discover.png")
        map_strip(maps["presence"], held_boxes, min(6, len(held))).save(out / "concept_map.png")
        report["figures"] = [str(out / "concepts_discover.png"), str(out / "concept_map.png")]
    if a.memory:
        report["memory"] = memory_run(net, PLANTED_CLASS, a.k)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
