"""Dataset-scale inspect workloads on Fashion-MNIST: the max_patches method over 10,000 images and t-SNE."""

from __future__ import annotations

import time
from typing import Any

from ..harness import in_child, peak_rss_mb


def inspect_child(n: int, q: Any) -> None:
    """In a fresh process: `accel.run("max_patches")` over `n` Fashion-MNIST images; wall time and peak RSS."""
    from ...registry import run
    from ...zoo import load

    net = load("fashion_cnn")
    t0 = time.perf_counter()
    res = run(
        "max_patches",
        net,
        None,
        dataset=f"fashion_mnist:test:{n}",
        layer="features.9",
        limit=n,
        top_channels=8,
    )
    wall = time.perf_counter() - t0
    q.put({"images": n, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "backend": res.meta.get("backend")})


def bench_inspect(n: int = 10_000, tsne: bool = True) -> dict[str, Any]:
    """A max-patch scan (time, peak RSS of its own process) and t-SNE of fashion_cnn embeddings, openTSNE (FFT)
    vs scikit-learn's TSNE, with trustworthiness."""
    from ...fashion_mnist import find_fashion_mnist

    if find_fashion_mnist() is None:
        return {"skipped": "Fashion-MNIST is not installed (Debian dataset-fashion-mnist)"}
    got = in_child(inspect_child, (n,), timeout=1800)
    out: dict[str, Any] = {
        "max_patches": got if got is not None else {"error": "the max_patches process failed"}
    }
    if tsne:
        from ...methods.inspect.embedding import bench_tsne
        from ...zoo import load

        out["tsne"] = bench_tsne(load("fashion_cnn"), f"fashion_mnist:test:{n}")
    return out
