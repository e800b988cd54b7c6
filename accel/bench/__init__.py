"""`convlens bench`: torch eager vs ONNX Runtime (and Captum) on the workloads convlens accelerates.

Rooms: `harness` (timing, alternating A/B medians, machine facts), `peak` (the machine's fp32 FMA peak),
`workloads/` (one module per workload family; occlusion runs the registered method and the runtime engines it
uses), `report` (Markdown + JSON). Reports give medians, best-of and spread, and every GFLOP/s row as a fraction
of the measured peak, which no row exceeds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .harness import Progress, compare, count_macs, machine_info, peak_rss_mb
from .peak import fma_peak, measure_peak, settle_peak, sgemm_peak
from .report import to_markdown, write_report
from .workloads.allocator import ALLOC_WORKLOADS, bench_allocator
from .workloads.dashboard import bench_dashboard
from .workloads.embedding import bench_embedding
from .workloads.gpu import bench_gpu
from .workloads.inspect import bench_inspect
from .workloads.jobs import bench_job_throughput
from .workloads.metrics import bench_metrics
from .workloads.occlusion import bench_occlusion, sweep_peak_rss_mb
from .workloads.patch_scan import bench_patch_scan
from .workloads.rise import bench_rise
from .workloads.rise import peak_rss as rise_peak_rss

__all__ = [
    "ALLOC_WORKLOADS",
    "Progress",
    "bench_allocator",
    "bench_dashboard",
    "bench_embedding",
    "bench_gpu",
    "bench_inspect",
    "bench_job_throughput",
    "bench_metrics",
    "bench_occlusion",
    "bench_patch_scan",
    "bench_rise",
    "compare",
    "count_macs",
    "fma_peak",
    "machine_info",
    "measure_peak",
    "peak_rss_mb",
    "run_bench",
    "settle_peak",
    "sgemm_peak",
    "sweep_peak_rss_mb",
    "to_markdown",
]


def machine_report(quick: bool) -> dict[str, Any]:
    """The report's head: whether it is quick, the machine and the C heap the torch rows ran with."""
    from ..runtime.alloc import allocator_state

    report: dict[str, Any] = {"quick": quick, "machine": machine_info()}
    report["machine"]["heap"] = allocator_state() or {
        "applied": False,
        "reason": "default glibc heap: torch rows measure eager PyTorch as a user's own code runs it",
    }
    return report


def run_bench(
    quick: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    store: bool = True,
    int8: bool | None = None,
    progress: Progress | None = None,
    dashboard: bool | None = None,
) -> dict[str, Any]:
    """Run the benchmark suite; write JSON + Markdown to `out_dir` and the run store; return the report."""
    from ..runtime.session import default_threads

    torch.set_num_threads(default_threads())
    say = progress or (lambda f, m: None)
    rep = 1 if quick else 3
    dashboard = (not quick) if dashboard is None else dashboard
    models = ["efficientnet_lite0", "vgg16"] if quick else ["efficientnet_lite0", "alexnet", "vgg16"]
    batches = [32] if quick else [1, 32, 64]
    out = Path(out_dir or Path("artifacts") / "bench")
    report = machine_report(quick)
    say(0.02, "measuring the fp32 peak")
    peak = measure_peak(out)
    say(0.05, "embedding throughput")
    report["embedding"] = bench_embedding(models, batches, rep, peak["gflops"])
    report["peak"] = settle_peak(peak, report["embedding"], out)
    report["sgemm_peak_gflops"] = report["peak"]["sgemm_gflops"]
    say(0.4, "occlusion sweep")
    report["occlusion"] = bench_occlusion(
        stride=16 if quick else 8,
        repeats=rep,
        int8=(not quick) if int8 is None else int8,
        captum_default=True,
    )
    if not quick:
        say(0.8, "sweep memory")
        report["occlusion"]["peak_rss_mb"] = sweep_peak_rss_mb(8)
    say(0.81, "RISE (ORT vs torch vs by hand)")
    report["rise"] = bench_rise(masks=1000 if quick else 4000, hand_masks=100 if quick else 400)
    if not quick:
        report["rise"]["peak_rss_mb"] = rise_peak_rss((1000, 8000))
    say(0.83, "torch eager: default heap vs tuned")
    report["allocator"] = bench_allocator(rep)
    say(0.85, "patch scan")
    report["patch_scan"] = bench_patch_scan(32 if quick else 128, rep)
    if not quick:
        say(0.9, "dataset-scale inspect (max patches, t-SNE)")
        report["inspect"] = bench_inspect()
    say(0.91, "dataset jobs (embed: local engine" + (")" if quick else " vs Ray)"))
    report["jobs"] = bench_job_throughput(quick, out)
    say(0.92, "explanation metrics: Quantus vs accel.evaluate")
    report["metrics"] = (
        bench_metrics(2, [10, 50, 90], ["pixel_flipping", "road_morf"], 1, 16) if quick else bench_metrics(20)
    )
    if torch.cuda.is_available():
        say(0.93, "GPU: torch eager vs ONNX Runtime CUDA / TensorRT")
        report["gpu"] = bench_gpu(models, batches, rep)
    if dashboard:
        say(0.95, "dashboard (page switch, Compare, reopen)")
        report["dashboard"] = bench_dashboard(1 if quick else 3)
    report["markdown"] = to_markdown(report)
    write_report(report, out, store)
    say(1.0, "done")
    return report
