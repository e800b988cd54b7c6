"""TCAV measured: the planted concept, agreement with Captum, memory on 10,000 images, a texture demo on ImageNet.

Usage: ``python scripts/eval_concepts_tcav.py [planted] [captum] [memory] [demo] [figure] [--figure PATH]`` (no
part named: the first four). Each part prints Markdown; `figure` only draws the README chart (seed 0, mean CAVs).

- planted: first the ground truth, the change of each class's logit when the stamp is pasted on its test items;
  then `tcav` on `fashion_planted` (every training Shirt stamped with a checkerboard), the packaged "stamp" and
  "random" concepts, all 10 classes, the last two conv blocks (features.16, features.19), for seeds 0-2 and both CAV
  kinds: the Shirt's score and Bonferroni p, how many of the other 9 classes come out significant, whether the random
  concept is significant anywhere, and the CAVs' held-out accuracy (also for linear CAVs on 200-image sets).
  `--figure PATH`: seed 0's mean-CAV scores as a bar chart (matplotlib) for the README.
- captum: one stamp set of 200 against 20 random sets of 200 on 10 classes. Captum's `TCAV` trains its CAVs (its default
  SGD classifier); our `tcav_scores` on Captum's own CAVs must equal Captum's sign counts (max |diff|); then our
  CAVs (`fit_cav`, linear and mean) on the same sets: the per-class score averaged over the 20 CAVs, against Captum's,
  as mean |diff| over the classes.
- memory: `tcav` on 1,000 and on 10,000 Fashion-MNIST test images (100 / 1,000 per class, streamed in batches), each
  in a fresh process: peak RSS (ru_maxrss) and time.
- demo: `tcav` on efficientnet_lite0 with packaged textures (scikit-image brick, grass, gravel; procedural stripes,
  dots, checkerboard) for a few ImageNet classes, explained on foolbox's 20 ImageNet photos (every photo for every
  class: only one or two photos per class ship), random counterexamples cropped from the same photos.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CONVLENS_OFFLINE", "1")

PLANTED_LAYERS = ("features.16", "features.19")


def planted_run(seed: int, cav: str, set_size: int = 50) -> Any:
    """The acceptance run: stamp and random concepts, all classes, the last two conv blocks."""
    import accel

    net = accel.load("fashion_planted")
    return accel.run(
        "tcav",
        net,
        None,
        concepts="stamp,random",
        layers=",".join(PLANTED_LAYERS),
        classes="",
        runs=20,
        set_size=set_size,
        per_class=50,
        cav=cav,
        seed=seed,
    )


def stamp_effect() -> None:
    """The ground truth TCAV estimates: what pasting the stamp really does to each class's logit, on 200 test items
    of that class (stamp at a seeded random place): mean and std of the change, and the share that rises."""
    import torch

    import accel
    from accel.fashion_mnist import load_fashion_mnist
    from accel.methods.concepts.sets import gray_to_input, stamp_images, stamp_positions

    net = accel.load("fashion_planted")
    x, y = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    print("## What the stamp does to each logit (fashion_planted, 200 test items per class, stamp pasted)\n")
    print("| class | mean change of its logit | std | share that rises |")
    print("|---|---|---|---|")
    for k in range(10):
        imgs = x[y == k][:200]
        stamped = stamp_images(imgs, stamp_positions(rng, len(imgs)))
        module = net.require_module("the stamp's effect")
        with torch.no_grad():
            z0 = module(torch.from_numpy(gray_to_input(net, imgs)))[:, k].numpy()
            z1 = module(torch.from_numpy(gray_to_input(net, stamped)))[:, k].numpy()
        d = z1 - z0
        name = net.labels[k] if net.labels else str(k)
        print(f"| {name} ({k}) | {d.mean():+.3f} | {d.std():.3f} | {np.mean(d > 0):.2f} |")
    print()


def planted(figure: str | None) -> None:
    """The planted-concept acceptance table (see the module docstring)."""
    from accel.methods.concepts.sets import PLANTED_CLASS

    stamp_effect()

    print("## TCAV on fashion_planted (stamp and random concepts, 10 classes, 50 inputs each, 20 CAVs)\n")
    print(
        "| CAV | set size | seed | layer | Shirt score | Shirt p (Bonferroni) | others significant (class: score) | "
        "random concept significant | CAV accuracy (stamp) | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first = None
    for cav, size in (("mean", 50), ("linear", 50), ("linear", 200)):
        for seed in (0, 1, 2) if size == 50 else (0,):
            t0 = time.perf_counter()
            res = planted_run(seed, cav, size)
            dt = time.perf_counter() - t0
            if first is None:
                first = res
            for layer in PLANTED_LAYERS:
                rows = [r for r in res.extras["table"] if r["layer"] == layer]
                shirt = next(r for r in rows if r["concept"] == "stamp" and r["class"] == PLANTED_CLASS)
                others = [
                    f"{r['class']}: {r['score']:.2f}"
                    for r in rows
                    if r["concept"] == "stamp" and r["class"] != PLANTED_CLASS and r["significant"]
                ]
                rnd = [r["class"] for r in rows if r["concept"] == "random" and r["significant"]]
                print(
                    f"| {cav} | {size} | {seed} | {layer} | {shirt['score']:.3f} ± {shirt['std']:.3f} | "
                    f"{shirt['p_adj']:.1e} | {len(others)}/9 {', '.join(others)} | {len(rnd)}/10 {rnd or ''} | "
                    f"{shirt['acc']:.3f} | {dt:.0f} |"
                )
    if figure and first is not None:
        tcav_figure(first, figure)
        print(f"\nfigure: {figure}")


def tcav_figure(res: Any, path: str) -> None:
    """Bars of TCAV score per class (stamp and random concept) with one-std whiskers over the 20 CAVs, the random
    CAVs' mean as a grey tick, a star over significant bars; one panel per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import accel

    labels = accel.load("fashion_planted").labels or []
    table = res.extras["table"]
    classes = res.extras["classes"]
    fig, axes = plt.subplots(1, len(PLANTED_LAYERS), figsize=(12, 4.0), sharey=True)
    colours = {"stamp": "#d62728", "random": "#7f7f7f"}
    for ax, layer in zip(axes, PLANTED_LAYERS, strict=True):
        for ci, concept in enumerate(("stamp", "random")):
            rows = {r["class"]: r for r in table if r["layer"] == layer and r["concept"] == concept}
            x = np.arange(len(classes)) + (ci - 0.5) * 0.38
            s = [rows[k]["score"] for k in classes]
            e = [rows[k]["std"] for k in classes]
            lo = np.minimum(e, s)  # whiskers clipped to the score's range [0, 1]
            hi = np.minimum(e, 1 - np.asarray(s))
            ax.bar(x, s, 0.36, color=colours[concept], label=f"{concept} concept")
            ax.errorbar(x, s, yerr=[lo, hi], fmt="none", ecolor="#444444", elinewidth=0.8, capsize=2)
            for xi, k in zip(x, classes, strict=True):
                ax.hlines(rows[k]["random"], xi - 0.18, xi + 0.18, colors="black", linewidth=1)
                if rows[k]["significant"]:
                    ax.text(
                        xi, min(1.03, rows[k]["score"] + rows[k]["std"] + 0.02), "*", ha="center", fontsize=14
                    )
        ax.set_xticks(np.arange(len(classes)))
        ax.set_xticklabels(
            [labels[k] if k < len(labels) else str(k) for k in classes], rotation=45, ha="right"
        )
        ax.set_ylim(0, 1.15)
        ax.set_title(f"layer {layer}")
    axes[0].set_ylabel("TCAV score (mean of 20 CAVs)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(
        "TCAV on fashion_planted (a stamp planted on every training Shirt), seed 0: mean of 20 CAVs per bar\n"
        "whisker = std over the CAVs, black tick = random CAVs' mean, * = significant (p < 0.01 after Bonferroni)",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def captum_compare() -> None:
    """Identical CAVs (Captum's) and own CAVs (each tool's) on the same sets and inputs (see the module docstring)."""
    import random

    import torch
    from captum.concept import TCAV, Concept

    import accel
    from accel.fashion_mnist import load_fashion_mnist
    from accel.methods.concepts import tcav as T
    from accel.methods.concepts.sets import concept_set, gray_to_input, random_set

    net = accel.load("fashion_planted")
    n_sets, size, per_class = 20, 200, 50
    conc = concept_set(net, "stamp", size, 0).x
    rands = [random_set(net, "auto", size, 100 + i) for i in range(n_sets)]
    test_x, test_y = load_fashion_mnist("test")
    inputs = {k: gray_to_input(net, test_x[test_y == k][:per_class]) for k in range(10)}

    def concept(i: int, x: np.ndarray) -> Any:
        batches: Any = torch.from_numpy(x)  # a tensor serves as the DataLoader's dataset (rows as items)
        return Concept(i, f"c{i}", torch.utils.data.DataLoader(batches, batch_size=64))

    c0 = concept(0, conc)
    sets = [[c0, concept(i + 1, r)] for i, r in enumerate(rands)]
    print(
        "## TCAV against Captum's `TCAV` (fashion_planted, stamp vs 20 random sets of 200, 50 inputs per class)\n"
    )
    print(
        "| layer | identical CAVs: max abs diff | own CAVs, linear (SGD): mean abs diff over classes | "
        "own CAVs, mean difference: mean abs diff | CAV accuracy ours (linear) / Captum |"
    )
    print("|---|---|---|---|---|")
    for layer in PLANTED_LAYERS:
        random.seed(0)
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            tc = TCAV(net.module, [layer], save_path=d, model_id="planted")
            cavs = tc.compute_cavs(sets)
            keys = [f"0-{i + 1}" for i in range(n_sets)]
            theirs_v, theirs_acc = [], []
            for key in keys:
                st = cavs[key][layer].stats
                row = list(np.asarray(st["classes"]).tolist()).index(0)
                theirs_v.append(st["weights"][row].float().numpy())
                theirs_acc.append(float(st["accs"]))
            theirs_v_arr = np.stack(theirs_v)
            captum_scores, ours_same = np.zeros((10, n_sets)), np.zeros((10, n_sets))
            for k, x in inputs.items():
                out = tc.interpret(torch.from_numpy(x), sets, target=k)
                captum_scores[k] = [float(out[key][layer]["sign_count"][0]) for key in keys]
                ours_same[k] = T.tcav_scores(net, layer, x, k, theirs_v_arr)
        acts = T.flat_activations(net, [layer], np.concatenate([conc, *rands]), "auto")[layer]
        a_c, a_r = acts[:size], [acts[size * (i + 1) : size * (i + 2)] for i in range(n_sets)]
        own: dict[str, np.ndarray] = {}
        acc_lin = []
        for kind in ("linear", "mean"):
            fits = [T.fit_cav(a_c, a_r[i], kind, seed=i) for i in range(n_sets)]
            if kind == "linear":
                acc_lin = [a for _, a in fits]
            v = np.stack([f[0] for f in fits])
            own[kind] = np.stack([T.tcav_scores(net, layer, inputs[k], k, v) for k in range(10)])
        cap_mean = captum_scores.mean(1)
        print(
            f"| {layer} | {np.abs(ours_same - captum_scores).max():.1e} | "
            f"{np.abs(own['linear'].mean(1) - cap_mean).mean():.3f} | "
            f"{np.abs(own['mean'].mean(1) - cap_mean).mean():.3f} | "
            f"{np.mean(acc_lin):.3f} / {np.mean(theirs_acc):.3f} |"
        )
        print(
            "\n  per class (Captum / ours linear / ours mean): "
            + ", ".join(
                f"{k}: {cap_mean[k]:.2f}/{own['linear'][k].mean():.2f}/{own['mean'][k].mean():.2f}"
                for k in range(10)
            )
            + "\n"
        )


def memory_child(per_class: int) -> None:
    """One TCAV run streaming per_class x 10 Fashion-MNIST test images; prints JSON (peak RSS, time, inputs)."""
    import accel

    net = accel.load("fashion_planted")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = accel.run(
        "tcav",
        net,
        None,
        concepts="stamp,random",
        layers=",".join(PLANTED_LAYERS),
        runs=20,
        set_size=50,
        per_class=per_class,
        inputs="fashion_mnist:test",
        cav="mean",
        seed=0,
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shirt = next(
        r
        for r in res.extras["table"]
        if r["concept"] == "stamp" and r["class"] == 6 and r["layer"] == "features.19"
    )
    print(
        json.dumps(
            {
                "inputs": int(sum(res.extras["inputs_per_class"].values())),
                "rss_before_mb": before / 1024,
                "rss_peak_mb": after / 1024,
                "seconds": time.perf_counter() - t0,
                "shirt_score": shirt["score"],
            }
        )
    )


def memory() -> None:
    """Peak RSS of TCAV on 1,000 vs 10,000 streamed images, each in a fresh process."""
    print(
        "## TCAV memory on streamed Fashion-MNIST test images (fashion_planted, 2 layers, 2 concepts, 20 CAVs)\n"
    )
    print(
        "| images scored | peak RSS (MB) | RSS after loading the model (MB) | seconds | Shirt score (features.19) |"
    )
    print("|---|---|---|---|---|")
    for per_class in (100, 1000):
        out = subprocess.run(
            [sys.executable, __file__, "_memory_child", str(per_class)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {r['inputs']:,} | {r['rss_peak_mb']:.0f} | {r['rss_before_mb']:.0f} | {r['seconds']:.0f} | "
            f"{r['shirt_score']:.3f} |"
        )


DEMO_CLASSES = {
    340: "zebra",
    251: "dalmatian",
    853: "thatch",
    741: "prayer rug",
    949: "strawberry",
    281: "tabby cat",
}
DEMO_CONCEPTS = "stripes,dots,checkerboard,brick,grass,gravel"
DEMO_LAYERS = "_blocks.10,_act_head"


def demo() -> None:
    """The efficientnet_lite0 texture demo table."""
    import accel

    net = accel.load("efficientnet_lite0")
    labels = net.labels or []
    t0 = time.perf_counter()
    res = accel.run(
        "tcav",
        net,
        None,
        concepts=DEMO_CONCEPTS,
        layers=DEMO_LAYERS,
        classes=",".join(str(k) for k in DEMO_CLASSES),
        inputs="foolbox:imagenet",
        by_label=False,
        per_class=20,
        random="foolbox:imagenet",
        runs=20,
        set_size=30,
        cav="mean",
        seed=0,
    )
    dt = time.perf_counter() - t0
    table = res.extras["table"]
    concepts = res.extras["concepts"]
    print(
        f"## TCAV on efficientnet_lite0: packaged texture concepts ({len(concepts)} concepts x 20 mean-difference "
        f"CAVs of 30 images each, random crops of the 20 foolbox photos as counterexamples; every class explained on "
        f"the same 20 foolbox photos; {dt:.0f} s on 2 CPU cores)\n"
    )
    print("Score = mean TCAV score over 20 CAVs; * = significant (two-sided t-test against 20 random CAVs, ")
    print(f"p < 0.01 after Bonferroni over {len(concepts)} concepts); random CAVs' mean in brackets.\n")
    for layer in res.extras["layers"]:
        print(f"**layer {layer}**\n")
        print("| class | " + " | ".join(concepts) + " |")
        print("|---" * (len(concepts) + 1) + "|")
        for k in res.extras["classes"]:
            cells = []
            for c in concepts:
                r = next(r for r in table if r["concept"] == c and r["layer"] == layer and r["class"] == k)
                cells.append(f"{r['score']:.2f}{' *' if r['significant'] else ''} ({r['random']:.2f})")
            print(f"| {labels[k] if k < len(labels) else k} ({k}) | " + " | ".join(cells) + " |")
        accs = {
            c: next(r["acc"] for r in table if r["concept"] == c and r["layer"] == layer) for c in concepts
        }
        print("| CAV accuracy | " + " | ".join(f"{accs[c]:.2f}" for c in concepts) + " |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "parts", nargs="*", help="planted, captum, memory, demo, figure (default: the first four)"
    )
    ap.add_argument("--figure", default=None, help="write the planted TCAV bar chart here (PNG)")
    args = ap.parse_args()
    if args.parts[:1] == ["_memory_child"]:
        memory_child(int(args.parts[1]))
        return
    parts = args.parts or ["planted", "captum", "memory", "demo"]
    for part in parts:
        if part == "planted":
            planted(args.figure)
        elif part == "figure":
            tcav_figure(planted_run(0, "mean"), args.figure or str(ROOT / "docs/figures/tcav_planted.png"))
        elif part == "captum":
            captum_compare()
        elif part == "memory":
            memory()
        elif part == "demo":
            demo()
        else:
            ap.error(f"unknown part {part!r}")
        print()


if __name__ == "__main__":
    main()
