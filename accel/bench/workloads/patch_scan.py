"""A max-activating-patch scan over a folder of JPEGs: decode, preprocess, forward, running top-9 per channel."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..harness import compare, photo_paths

MODEL, LAYER, BATCH = "alexnet", "features.11", 32


def bench_patch_scan(n_images: int, repeats: int) -> list[dict[str, Any]]:
    """(c) the scan of `n_images` JPEGs on torch eager and ONNX Runtime (decode included), images/s."""
    from ...images import open_image
    from ...runtime.runner import runner
    from ...zoo import load

    net = load(MODEL)
    with tempfile.TemporaryDirectory() as d:
        srcs = photo_paths()
        for i in range(n_images):
            open_image(srcs[i % len(srcs)]).save(Path(d) / f"img{i:05d}.jpg", quality=90)
        files = sorted(Path(d).glob("*.jpg"))

        def scan(r: Any) -> Callable[[], None]:
            def go() -> None:
                best = np.full((256, 9), -np.inf)
                for i in range(0, len(files), BATCH):
                    x = net.preprocess_batch([open_image(f) for f in files[i : i + BATCH]]).numpy()
                    a = r.run(x)[LAYER].max(axis=(2, 3))  # (B, C): best unit per channel per image
                    best = np.sort(np.concatenate([best, a.T], axis=1), axis=1)[:, -9:]

            return go

        res = compare(
            {
                "torch": scan(runner(net, [LAYER], backend="torch", batch_size=BATCH)),
                "onnxruntime": scan(runner(net, [LAYER], backend="onnxruntime", batch_size=BATCH)),
            },
            repeats,
        )
    return [
        {
            "workload": "max_patch_scan",
            "model": MODEL,
            "layer": LAYER,
            "engine": k,
            "images": n_images,
            "images_per_s": n_images / v["median_s"],
            **v,
        }
        for k, v in res.items()
    ]
