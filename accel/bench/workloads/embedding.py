"""Embedding throughput: images/s of torch eager vs ONNX Runtime, and the GFLOP/s it means against the peak."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..harness import compare, count_macs, photos


def bench_embedding(models: list[str], batches: list[int], repeats: int, peak: float) -> list[dict[str, Any]]:
    """(a) images/s, torch eager vs ONNX Runtime (the runners the methods use), and achieved GFLOP/s as a
    fraction of `peak` GFLOP/s."""
    from ...runtime.runner import runner
    from ...zoo import load

    rows: list[dict[str, Any]] = []
    for name in models:
        net = load(name)
        macs = count_macs(net)
        for bs in batches:
            x = photos(net, bs)
            tr = runner(net, ["embedding"], backend="torch", batch_size=bs)
            orr = runner(net, ["embedding"], backend="onnxruntime", batch_size=bs)
            res = compare(
                {"torch": partial(tr.run, x), "onnxruntime": partial(orr.run, x)},
                repeats,
                warmup=2,  # ONNX Runtime's arena reaches its steady state on the second or third batch
            )
            for eng, st in res.items():
                ips = bs / st["median_s"]
                gflops = 2 * macs * ips / 1e9
                rows.append(
                    {
                        "workload": "embedding",
                        "model": name,
                        "batch": bs,
                        "engine": eng,
                        "images_per_s": ips,
                        "gflops": gflops,
                        "fraction_of_peak": gflops / peak,
                        **st,
                    }
                )
            rows[-1]["speedup_vs_torch"] = res["torch"]["median_s"] / res["onnxruntime"]["median_s"]
    return rows
