"""The benchmark harness runs end to end on tiny settings and reports what it measured (no timing asserts)."""

from __future__ import annotations

import numpy as np
import torch

from accel import bench


def test_compare_alternates_and_summarises():
    calls: list[str] = []
    res = bench.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    for v in res.values():
        assert v["repeats"] == 3 and v["best_s"] <= v["median_s"]


def test_macs_of_alexnet_features_match_the_textbook(tmp_path):
    from tests.conftest import get_net

    macs = bench.count_macs(get_net("alexnet"))
    assert 0.6e9 < macs < 0.7e9  # torchvision AlexNet conv layers: ~0.66 GMAC at 224x224


def test_tiny_bench_report(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_STORE", str(tmp_path / "store"))
    peak = bench.sgemm_peak(256, 2)
    emb = bench.bench_embedding(["alexnet"], [2], 1, peak)
    fma = bench.measure_peak(tmp_path / "out", sgemm_n=256)
    settled = bench.settle_peak(fma, emb, tmp_path / "out")
    assert all(r["fraction_of_peak"] <= 1.0 for r in emb)  # no row above the peak it is compared with
    if settled["source"] == "fma":  # the FMA kernel's figure bounds real model throughput by itself
        assert "raised_to_row" not in settled and all(r["gflops"] <= fma["gflops"] for r in emb)
    assert [r["engine"] for r in emb] == ["torch", "onnxruntime"] and emb[1]["speedup_vs_torch"] > 0
    occ = bench.bench_occlusion(stride=32, repeats=1, int8=False, captum_default=True)
    assert occ["masks"] == 49
    diffs = occ["max_abs_diff_vs_captum_ppe1"]
    assert diffs["onnxruntime"] < 1e-4 and diffs["torch"] < 1e-4  # our per-pixel maps equal Captum's
    assert occ["vgg16_incremental"]["max_abs_diff"] < 1e-4
    scan = bench.bench_patch_scan(4, 1)
    report = {
        "quick": True,
        "machine": bench.machine_info(),
        "peak": settled,
        "embedding": emb,
        "occlusion": occ,
        "patch_scan": scan,
    }
    md = bench.to_markdown(report)
    assert "| alexnet | 2 |" in md and "Occlusion sweep" in md and np.isfinite(peak)
    assert f"{settled['gflops']:.0f} GFLOP/s" in md and settled["label"] in md
    assert "Best exact path: ort_incremental" in md or "Best exact path: ort_sweep" in md
    # GPU rows render (they are only measured where CUDA exists; here the workload says why it skipped)
    if not torch.cuda.is_available():
        assert bench.bench_gpu(["fashion_cnn"], [1], 1) == {"skipped": "no CUDA device on this machine"}
    report["gpu"] = {
        "device": "NVIDIA H100",
        "rows": [
            {
                "model": "vgg16",
                "batch": 32,
                "engine": "ort_cuda_fp16",
                "images_per_s": 2000.0,
                "accuracy_cost": {"top1_agreement": 0.95},
            },
            {
                "model": "vgg16",
                "batch": 32,
                "engine": "ort_trt_fp32",
                "error": "fell back to CPUExecutionProvider",
            },
        ],
    }
    md = bench.to_markdown(report)
    assert "GPU (NVIDIA H100)" in md and "| vgg16 | 32 | ort_cuda_fp16 | 2000.0 | top-1 95% |" in md
    assert "| vgg16 | 32 | ort_trt_fp32 | - | fell back to CPUExecutionProvider |" in md


def test_fma_peak_is_measured_cached_and_bounds_every_row(tmp_path):
    from accel.bench import peak as pk

    got = pk.measure_peak(tmp_path, sgemm_n=256)
    if pk.compiler() is None:  # no C compiler: the sgemm figure, labelled as such
        assert got["source"] == "sgemm" and "sgemm" in got["label"]
        return
    assert got["source"] == "fma" and got["fma"]["isa"] in ("avx512f", "avx2+fma", "vector128")
    assert got["fma"]["threads"] == pk.usable_cores() and got["gflops"] >= got["fma"]["gflops_one_thread"] > 0
    assert "FMA peak" in got["label"]
    cache = pk.read_cache(tmp_path)
    assert cache[pk.machine_key()]["gflops"] == got["measured_gflops"]  # cached per machine in the output
    # a later run keeps the best figure of this machine
    pk.write_cache(tmp_path, pk.machine_key(), {"gflops": 10 * got["gflops"]})
    assert pk.measure_peak(tmp_path, sgemm_n=256)["gflops"] == 10 * got["gflops"]
    # a row above the peak re-measures it, and never reads above 100% of the peak reported
    rows = [{"gflops": 0.5 * got["gflops"]}, {"gflops": 50 * got["gflops"]}]
    settled = pk.settle_peak(dict(got), rows)
    assert max(r["fraction_of_peak"] for r in rows) == 1.0 and settled["raised_to_row"]
    assert "exceeded" in settled["label"]


def test_sgemm_fallback_without_a_compiler(tmp_path, monkeypatch):
    from accel.bench import peak as pk

    monkeypatch.setattr(pk, "compiler", lambda: None)
    got = pk.measure_peak(tmp_path, sgemm_n=256)
    assert (
        got["source"] == "sgemm" and "no C compiler" in got["label"] and got["gflops"] == got["sgemm_gflops"]
    )
    rows = [{"gflops": 2 * got["gflops"]}]
    assert pk.settle_peak(got, rows)["gflops"] == rows[0]["gflops"] and rows[0]["fraction_of_peak"] == 1.0
    assert not pk.read_cache(tmp_path)  # only FMA figures are cached


def test_metric_bench_agrees_with_quantus_and_renders():
    """One photo, cheap settings: Quantus and accel.evaluate give the same pixel-flipping curve (1e-3) and the
    same ROAD accuracy, and the report shows both rows with their ratio (no timing asserted)."""
    from accel.bench.workloads.metrics import metrics_table, untie

    res = bench.bench_metrics(1, [50], ["pixel_flipping", "road_morf"], repeats=1, steps=8)
    assert res["photos"] == 1 and res["pixel_flipping_steps"] == 8
    assert res["pixel_flipping"]["max_abs_diff"] < 1e-3 and res["road_morf"]["max_abs_diff"] == 0.0
    md = "\n".join(metrics_table(res))
    assert "| pixel_flipping |" in md and "| road_morf |" in md and "medians of 1 alternating runs" in md
    # untie: every value distinct, the rank order kept, each value moved by a few float32 steps at most
    m = np.array([[[0.0, 0.0, 1.0, 1.0], [-1.0, -1.0, 0.5, 0.5]]], np.float32)
    u = untie(m)
    assert len(np.unique(u)) == u.size and np.abs(u - m).max() < 1e-6
    assert np.array_equal(np.argsort(m.ravel(), kind="stable"), np.argsort(u.ravel()))
