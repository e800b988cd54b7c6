"""The README figure of the modern CAM family and Gradient x Input on efficientnet_lite0 and chelsea (issue 19).

Usage: ``python scripts/figure_cam_modern.py [--out docs/figures/cam_modern.jpg]``. Each map is `accel.run` at the
method's defaults for the predicted class (tiger cat); Eigen-CAM and Grad-CAM are also shown for another class
(Granny Smith): Grad-CAM's map changes, Eigen-CAM's is the same (it is class-insensitive by construction). Each
map is scaled to its own range for display (maps are not normalised by the methods); Gradient x Input as |map| up to its 99th percentile.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIGER_CAT, GRANNY_SMITH = 282, 948  # ImageNet indices; tiger cat is efficientnet_lite0's top-1 on chelsea


def main(argv: list[str] | None = None) -> int:
    """Compute the maps, print their identity check, write the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    import accel
    from accel.images import sample_image
    from accel.images.render import overlay

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "cam_modern.jpg")
    a = ap.parse_args(argv)
    net = accel.load("efficientnet_lite0")
    img = sample_image("chelsea")
    panels: list[tuple[str, str, dict]] = [
        ("gradcam", "Grad-CAM (reference)", {"target": TIGER_CAT}),
        ("hirescam", "HiResCAM", {"target": TIGER_CAT}),
        ("xgradcam", "XGrad-CAM", {"target": TIGER_CAT}),
        (
            "layercam",
            "LayerCAM, _blocks.4 + _act_head fused",
            {"target": TIGER_CAT, "layers": "_blocks.4,_act_head"},
        ),
        ("ablationcam", "Ablation-CAM", {"target": TIGER_CAT}),
        ("input_x_gradient", "Gradient x Input (|map|)", {"target": TIGER_CAT}),
        ("eigencam", "Eigen-CAM, tiger cat", {"target": TIGER_CAT, "backend": "torch"}),
        ("eigencam", "Eigen-CAM, Granny Smith: same map", {"target": GRANNY_SMITH, "backend": "torch"}),
        ("gradcam", "Grad-CAM, Granny Smith: changes", {"target": GRANNY_SMITH}),
    ]
    results = [(title, accel.run(name, net, img, **kw)) for name, title, kw in panels]
    eig = [r.data for t, r in results if t.startswith("Eigen-CAM")]
    print("Eigen-CAM maps for the two classes identical:", bool(np.array_equal(eig[0], eig[1])))
    photo = results[0][1].image
    assert photo is not None
    fig, axes = plt.subplots(2, 5, figsize=(15, 6.6))

    def shown(title: str, data: np.ndarray) -> object:
        if "Gradient x Input" in title:  # pixel-sharp and heavy-tailed: |map| up to its 99th percentile
            heat = np.abs(data)
            return overlay(photo, heat, alpha=0.6, vmax=float(np.percentile(heat, 99)))
        return overlay(photo, data, alpha=0.5)

    tiles = [("chelsea (efficientnet_lite0: tiger cat)", photo)] + [(t, shown(t, r.data)) for t, r in results]
    for ax, (title, tile) in zip(axes.ravel(), tiles):
        ax.imshow(tile)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    buf.seek(0)
    # photos under overlays: JPEG keeps the repository light (a fraction of the PNG, no palette banding)
    Image.open(buf).convert("RGB").save(a.out, quality=85, optimize=True)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
