"""RISE on efficientnet_lite0: the registered method on ONNX Runtime and torch eager against what a user writes by
hand (a plain torch loop, one masked copy per pass as Captum's perturbation methods default to, and the paper's
reference code: every mask built up front, batches of 100); seed agreement; deletion AUC against random maps on
foolbox's photos; the peak RSS of fresh processes at two mask counts.

One workload: `python -m accel.bench.workloads.rise [--quick]` prints its JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..harness import compare, in_child, peak_rss_mb

MODEL = "efficientnet_lite0"
PHOTO = "chelsea"
MASKS = 4000  # the paper's N for ResNet-50
REFERENCE_BATCH = 100  # the paper's reference code forwards masked copies 100 at a time


def _setup() -> tuple[Any, Any, np.ndarray, int]:
    """efficientnet_lite0, the chelsea photo, its preprocessed input and predicted class."""
    from ...images import sample_image
    from ...zoo import load

    net = load(MODEL)
    img = sample_image(PHOTO)
    x = net.preprocess(img).numpy()
    with torch.no_grad():
        target = int(net.require_module("the rise bench")(torch.from_numpy(x)).argmax())
    return net, img, x, target


def by_hand(net: Any, x: np.ndarray, target: int, n: int, batch: int) -> np.ndarray:
    """What a user writes with torch alone: all `n` masks built up front (the reference code's memory: n*H*W
    floats), masked copies forwarded `batch` at a time, softmax score, S = scores @ masks / (n p).

    The masks are convlens's (MaskStream, seed 0, s=7, p=0.5), so the map equals the method's with estimator="paper" at the same n."""
    from ...methods.attribute.rise import MaskStream

    _, h, w = net.input_shape
    masks = torch.from_numpy(MaskStream(h, w, 7, 0.5, 0).masks(0, n))  # (n, H, W)
    module, xt = net.require_module("the rise bench"), torch.from_numpy(x)
    scores = []
    with torch.no_grad():
        for i in range(0, n, batch):
            m = masks[i : i + batch, None]
            scores.append(torch.softmax(module(xt * m), 1)[:, target])
    sal = torch.cat(scores).double() @ masks.reshape(n, -1).double() / (n * 0.5)
    return sal.reshape(h, w).float().numpy()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Linear correlation of two maps."""
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def bench_rise(
    masks: int = MASKS, repeats: int = 1, hand_masks: int = 200, seeds: bool = True
) -> dict[str, Any]:
    """Seconds for an N-mask RISE map per engine; the hand-written rows run `hand_masks` masks (a subsample when
    fewer than N) and are extrapolated linearly to N (said in the row). With `seeds`, also the correlation of the
    seed-0 and seed-1 maps at N (one more N-mask run)."""
    from ...registry import run

    net, img, x, target = _setup()
    maps: dict[str, np.ndarray] = {}
    metas: dict[str, dict[str, Any]] = {}

    def method(backend: str, n: int, key: str, estimator: str = "centred") -> Callable[[], None]:
        def go() -> None:
            res = run("rise", net, img, target=target, masks=n, backend=backend, seed=0, estimator=estimator)
            maps[key], metas[key] = res.data, res.meta

        return go

    def hand(batch: int, key: str) -> Callable[[], None]:
        return lambda: maps.__setitem__(key, by_hand(net, x, target, hand_masks, batch))

    fns = {
        "ort": method("onnxruntime", masks, "ort"),
        "torch": method("torch", masks, "torch"),
        "torch_by_hand_batch1": hand(1, "hand1"),
        "torch_by_hand_reference_batch100": hand(REFERENCE_BATCH, "hand100"),
    }
    res = compare(fns, repeats, warmup=0)
    scale = masks / hand_masks
    for k in ("torch_by_hand_batch1", "torch_by_hand_reference_batch100"):
        res[k] = res[k] | {
            "measured_masks": hand_masks,
            "median_s_measured": res[k]["median_s"],
            "median_s": res[k]["median_s"] * scale,
            "best_s": res[k]["best_s"] * scale,
            "extrapolated": hand_masks != masks,
        }
    method("onnxruntime", hand_masks, "ort_small", "paper")()  # the by-hand code's estimator
    seed1 = (
        run("rise", net, img, target=target, masks=masks, backend="onnxruntime", seed=1).data
        if seeds
        else None
    )
    ort_s = res["ort"]["median_s"]
    return {
        "model": MODEL,
        "photo": PHOTO,
        "masks": masks,
        "target": target,
        "engines": res,
        "speedups_of_ort": {k: v["median_s"] / ort_s for k, v in res.items()},
        "ort_vs_torch_max_abs_diff": float(np.abs(maps["ort"] - maps["torch"]).max()),
        "by_hand_vs_method_max_abs_diff": float(np.abs(maps["hand100"] - maps["ort_small"]).max()),
        "seed_correlation": pearson(maps["ort"], seed1) if seed1 is not None else None,
        "reference_masks_mib": masks * int(np.prod(net.input_shape[1:])) * 4 / 2**20,
        "batch_size": metas["ort"]["runner"]["batch_size"],
    }


def faithfulness(masks: int = 1000, photos: int = 20, steps: int = 50) -> dict[str, Any]:
    """Deletion/insertion AUC of RISE maps (`masks` masks, ONNX Runtime) against phase-randomised random maps on
    foolbox's ImageNet photos (each explained for its own label), via accel.evaluate.deletion_insertion_many."""
    from ...evaluate.faithfulness import deletion_insertion_many
    from ...images import foolbox_imagenet, open_image
    from ...registry import run
    from ...zoo import load

    net = load(MODEL)
    rows = []
    t0 = time.perf_counter()
    for path, label in foolbox_imagenet()[:photos]:
        img = open_image(path)
        m = run("rise", net, img, target=label, masks=masks, backend="onnxruntime").data
        d = deletion_insertion_many(net, img, [m], [label], steps=steps, n_random=3)[0]
        rows.append(
            {
                "photo": path.name,
                "deletion": d["deletion"]["auc"],
                "random_deletion": d["random"]["deletion"]["auc"],
                "insertion": d["insertion"]["auc"],
                "random_insertion": d["random"]["insertion"]["auc"],
            }
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "photo"}
    return {
        "masks": masks,
        "photos": len(rows),
        "mean": mean,
        "deletion_beats_random_on": sum(r["deletion"] < r["random_deletion"] for r in rows),
        "insertion_beats_random_on": sum(r["insertion"] > r["random_insertion"] for r in rows),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }


def rss_child(masks: int, q: Any) -> None:
    """In a fresh process: load efficientnet_lite0, run an N-mask RISE map on ONNX Runtime, report peak RSS."""
    from ...images import sample_image
    from ...registry import run
    from ...zoo import load

    net = load(MODEL)
    run("rise", net, sample_image(PHOTO), masks=masks, backend="onnxruntime")
    q.put(peak_rss_mb())


def peak_rss(counts: tuple[int, ...] = (1000, 8000)) -> dict[str, float]:
    """Peak RSS (MiB) of fresh processes running RISE with each mask count (flat in N: masks come per chunk)."""
    out = {}
    for n in counts:
        got = in_child(rss_child, (n,), timeout=1800)
        out[str(n)] = float(got) if got is not None else float("nan")
    return out


def rise_table(r: dict[str, Any] | None) -> list[str]:
    """Markdown: seconds per engine for the N-mask map, agreement, and (when measured) memory and faithfulness."""
    if not r:
        return []
    lines = [
        "",
        f"RISE, {r['model']}, {r['photo']}, {r['masks']} masks (s=7, p=0.5), batch {r['batch_size']}:",
        "",
        "| engine | median s | ORT speed-up | note |",
        "|---|---:|---:|---|",
    ]
    for k, v in r["engines"].items():
        note = (
            f"{v['measured_masks']} masks measured ({v['median_s_measured']:.1f} s), extrapolated x"
            f"{r['masks'] / v['measured_masks']:g}"
            if v.get("extrapolated")
            else ""
        )
        lines.append(f"| {k} | {v['median_s']:.1f} | {r['speedups_of_ort'][k]:.2f}x | {note} |")
    lines += [
        "",
        f"- ORT vs torch map max abs diff {r['ort_vs_torch_max_abs_diff']:.1e}; by-hand loop vs the method on "
        f"the same masks {r['by_hand_vs_method_max_abs_diff']:.1e}; "
        + (f"seeds 0 and 1 correlate {r['seed_correlation']:.3f}; " if r.get("seed_correlation") else "")
        + f"the reference code holds {r['reference_masks_mib']:.0f} MiB of masks, "
        "convlens one chunk.",
    ]
    if "peak_rss_mb" in r:
        lines.append(
            "- Peak RSS of a fresh process: "
            + ", ".join(f"{k} masks {v:.0f} MiB" for k, v in r["peak_rss_mb"].items())
            + "."
        )
    if "faithfulness" in r:
        f = r["faithfulness"]
        lines.append(
            f"- Deletion AUC on {f['photos']} foolbox photos ({f['masks']} masks): RISE {f['mean']['deletion']:.3f} "
            f"vs random {f['mean']['random_deletion']:.3f} (beats it on {f['deletion_beats_random_on']}); "
            f"insertion {f['mean']['insertion']:.3f} vs {f['mean']['random_insertion']:.3f}."
        )
    return lines


def main() -> None:
    """Run the RISE workload alone and print JSON and Markdown."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="engine rows only, hand-written rows on 200 masks")
    ap.add_argument("--masks", type=int, default=MASKS)
    ap.add_argument("--hand-masks", type=int, default=200)
    ap.add_argument("--faithfulness-masks", type=int, default=1000)
    ap.add_argument("--photos", type=int, default=20)
    a = ap.parse_args()
    from ...runtime.session import default_threads

    torch.set_num_threads(default_threads())
    r = bench_rise(a.masks, 1, a.hand_masks)
    if not a.quick:
        r["peak_rss_mb"] = peak_rss()
        r["faithfulness"] = faithfulness(a.faithfulness_masks, a.photos)
    print(json.dumps(r, indent=1, default=float))
    print("\n".join(rise_table(r)))


if __name__ == "__main__":
    main()
