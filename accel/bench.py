"""`convlens bench`: torch eager vs ONNX Runtime (and Captum) on the workloads convlens accelerates.

Protocol: engines are compared in one process, alternating A and B each repeat (A,B then B,A); every iteration
records wall and process CPU time; an iteration where the process got much less CPU than its threads could use
is flagged as contended and measured once more. Reports give medians, best-of and spread, as JSON + Markdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------------------------
# measurement


def _measure(fn: Callable[[], Any], threads: int) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "contended": float(cpu < 0.6 * wall * max(1, threads) and wall > 0.05)}


def compare(fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1, threads: int = 2) -> dict:
    """Alternate the engines `repeats` times; per engine: median/best wall, spread, CPU share, flags."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            m = _measure(fns[n], threads)
            if m["contended"]:
                again = _measure(fns[n], threads)  # retry a contended measurement once
                m = again if again["wall"] < m["wall"] else m
                m["retried"] = 1.0
            samples[n].append(m)
    out = {}
    for n, ss in samples.items():
        walls = [s["wall"] for s in ss]
        out[n] = {
            "median_s": statistics.median(walls),
            "best_s": min(walls),
            "spread": (max(walls) - min(walls)) / statistics.median(walls) if len(walls) > 1 else 0.0,
            "cpu_per_wall": statistics.median([s["cpu"] / s["wall"] for s in ss]),
            "contended": int(sum(s["contended"] for s in ss)),
            "repeats": len(ss),
        }
    return out


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime as ort

    from .runtime.session import default_threads

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in txt)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "threads": default_threads(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def sgemm_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s of this machine right now (the 'peak' that model GFLOP/s is compared with):
    the best of torch's and ONNX Runtime's (MLAS) sgemm, since either may be the faster on a given CPU."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    with contextlib.suppress(Exception):  # ONNX Runtime missing or failing: torch's number stands
        best = min(best, _ort_sgemm_seconds(a.numpy(), b.numpy(), reps))
    return 2 * n**3 / best / 1e9


def _ort_sgemm_seconds(a: np.ndarray, b: np.ndarray, reps: int) -> float:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .runtime.session import default_threads, make_session

    n = a.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sgemm.onnx"
        onnx.save(model, str(path))
        sess, _, _ = make_session(path, ("CPUExecutionProvider",), default_threads())
        sess.run(None, {"a": a})
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            best = min(best, time.perf_counter() - t0)
    return best


def count_macs(net: Any) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    macs = 0
    hooks = []

    def conv_hook(m: torch.nn.Conv2d, _i: Any, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out.numel() * (m.in_channels // m.groups) * kh * kw

    def lin_hook(m: torch.nn.Linear, _i: Any, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * m.in_features

    for m in net.module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        net.module(torch.zeros(1, *net.input_shape))
    for h in hooks:
        h.remove()
    return macs


def _photos(net: Any, n: int) -> np.ndarray:
    from .images import foolbox_imagenet, open_image, sample_images

    paths = [p for p, _ in foolbox_imagenet()] + sorted(sample_images().values())
    x = net.preprocess_batch([open_image(p) for p in paths[: max(1, min(n, len(paths)))]]).numpy()
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n]


# ---------------------------------------------------------------------------------------------------------------
# workloads


def bench_embedding(models: list[str], batches: list[int], repeats: int, peak: float) -> list[dict]:
    """(a) images/s, torch eager vs ONNX Runtime, and achieved GFLOP/s against the measured matmul peak."""
    from .runtime.runner import OrtRunner, TorchRunner
    from .zoo import load

    rows = []
    for name in models:
        net = load(name)
        macs = count_macs(net)
        for bs in batches:
            x = _photos(net, bs)
            tr = TorchRunner(net, ["embedding"], batch_size=bs)
            orr = OrtRunner(net, ["embedding"], batch_size=bs)
            res = compare(
                {"torch": lambda tr=tr, x=x: tr.run(x), "onnxruntime": lambda o=orr, x=x: o.run(x)},
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
            t, o = res["torch"]["median_s"], res["onnxruntime"]["median_s"]
            rows[-1]["speedup_vs_torch"] = t / o
    return rows


def bench_occlusion(stride: int, repeats: int, int8: bool, captum_default: bool) -> dict[str, Any]:
    """(b) the occlusion sweep of efficientnet_lite0 (window 32) across engines, plus vgg16 incremental."""
    from scipy.stats import spearmanr

    from .images import sample_image
    from .runtime.incremental import DRILL_REFINE, IncrementalOcclusion, drill_down
    from .runtime.runner import OrtRunner, TorchRunner
    from .runtime.sweep import Occlusion
    from .zoo import load

    net = load("efficientnet_lite0")
    img = sample_image("chelsea")
    x = net.preprocess(img).numpy()
    s = net.pre.size
    occ = Occlusion(s, s, (32, 32), (stride, stride), baseline=0.0)
    with torch.no_grad():
        p0 = torch.softmax(net.module(torch.from_numpy(x)), 1)[0]
    target = int(p0.argmax())
    base = float(p0[target])
    cov = occ.coverage()

    def to_pixels(drops: np.ndarray) -> np.ndarray:
        m = np.zeros((s, s), np.float64)
        for (r, c), d in zip(occ.positions, drops):
            m[r : r + 32, c : c + 32] += d
        return m / np.maximum(cov, 1)

    def prob(o: dict[str, np.ndarray]) -> np.ndarray:
        z = o["logits"] - o["logits"].max(1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True))[:, target]

    tr = TorchRunner(net, ["logits"])  # the automatic batch, as users get it
    orr = OrtRunner(net, ["logits"])
    maps: dict[str, np.ndarray] = {}

    def full(sweeper: Any, key: str) -> Callable[[], None]:
        def go() -> None:
            maps[key] = to_pixels(base - sweeper.sweep(x, occ, reduce=prob))

        return go

    def run_ort() -> None:
        drops = base - orr.sweep(x, occ, reduce=prob)
        maps["ort_grid"] = drops.reshape(occ.grid)  # the full fine-grid map drill-down is compared with
        maps["onnxruntime"] = to_pixels(drops)

    fns: dict[str, Callable[[], Any]] = {"torch_sweep": full(tr, "torch"), "ort_sweep": run_ort}
    try:
        from captum.attr import Occlusion as CaptumOcclusion

        def fwd(t: torch.Tensor) -> torch.Tensor:
            return torch.softmax(net.module(t), 1)

        cap = CaptumOcclusion(fwd)
        xt = torch.from_numpy(x)

        def captum(ppe: int) -> Callable[[], None]:
            def go() -> None:
                with torch.no_grad():
                    a = cap.attribute(
                        xt,
                        sliding_window_shapes=(3, 32, 32),
                        strides=(3, stride, stride),
                        baselines=0.0,
                        target=target,
                        perturbations_per_eval=ppe,
                    )
                maps[f"captum_ppe{ppe}"] = a[0].sum(0).numpy() / 3.0

            return go

        if captum_default:
            fns["captum_ppe1"] = captum(1)
        fns["captum_ppe64"] = captum(64)
    except ImportError:
        pass
    q = None
    if int8:
        q = OrtRunner(net, ["logits"], precision="int8")

    def drill(sweeper: Any, key: str, refine: float = DRILL_REFINE) -> Callable[[], None]:
        def go() -> None:
            d = drill_down(lambda o: base - sweeper.sweep(x, o, reduce=prob), s, s, 32, stride, refine=refine)
            maps[key] = d["map"]
            maps[key + "_windows"] = np.array([d["windows"], d["full_windows"], d["coarse_stride"]])

        return go

    if q is not None:
        fns["ort_int8_sweep"] = full(q, "int8")
    inc_lite = IncrementalOcclusion(net, ["logits"])  # default batch, as the product runs it
    fns["ort_drill_down"] = drill(orr, "drill")
    fns["ort_drill_down_refine20"] = drill(orr, "drill_20", refine=0.2)
    fns["ort_incremental"] = full(inc_lite, "incremental")
    fns["ort_drill_down_incremental"] = drill(inc_lite, "drill_incremental")
    if int8:
        inc_q = IncrementalOcclusion(net, ["logits"], precision="int8")
        fns["ort_int8_incremental"] = full(inc_q, "int8_incremental")
        fns["ort_int8_drill_down_incremental"] = drill(inc_q, "int8_drill_incremental")
    res = compare(fns, repeats, warmup=0)
    ref_key = (
        "captum_ppe1" if "captum_ppe1" in maps else ("captum_ppe64" if "captum_ppe64" in maps else "torch")
    )
    ref = maps[ref_key]
    out: dict[str, Any] = {"masks": occ.n, "window": 32, "stride": stride, "target": target, "engines": res}
    out["max_abs_diff_vs_" + ref_key] = {
        k: float(np.abs(maps[k] - ref).max())
        for k in ("torch", "onnxruntime", "captum_ppe64", "incremental")
        if k in maps
    }
    fine_grid = maps["ort_grid"]

    def agreement(key: str) -> dict[str, float]:
        """How a drill-down map agrees with the full fine-grid map: rank correlation and top-10 overlap."""
        m = maps[key].ravel()
        top = set(np.argsort(-m)[:10].tolist()) & set(np.argsort(-fine_grid.ravel())[:10].tolist())
        return {
            "windows": int(maps[key + "_windows"][0]),
            "full_windows": int(maps[key + "_windows"][1]),
            "coarse_stride": int(maps[key + "_windows"][2]),
            "spearman_vs_full": float(spearmanr(m, fine_grid.ravel())[0]),
            "top10_overlap": len(top) / 10,
        }

    out["drill_down"] = agreement("drill") | {
        "incremental_max_abs_diff": float(np.abs(maps["drill_incremental"] - maps["drill"]).max())
    }
    out["drill_down"]["refine"] = DRILL_REFINE
    out["drill_down_refine20"] = agreement("drill_20") | {"refine": 0.2}
    if q is not None:
        out["int8"] = {
            "spearman_vs_fp32": float(spearmanr(maps["int8"].ravel(), maps["onnxruntime"].ravel())[0]),
            **q.meta.get("accuracy_cost", {}),
        }
        out["int8_incremental"] = {
            "stages": inc_q.cuts,
            "spearman_vs_fp32": float(
                spearmanr(maps["int8_incremental"].ravel(), maps["onnxruntime"].ravel())[0]
            ),
            "drill_spearman_vs_full_fp32": float(
                spearmanr(maps["int8_drill_incremental"].ravel(), fine_grid.ravel())[0]
            ),
            **inc_q.meta.get("accuracy_cost", {}),
        }
    out["incremental_stages"] = inc_lite.cuts
    # Incremental occlusion: vgg16 (a features/pool backbone), same window and stride, score = one embedding unit.
    vgg = load("vgg16")
    xv = vgg.preprocess(img).numpy()
    ov = OrtRunner(vgg, ["embedding"])  # the automatic batch
    inc = IncrementalOcclusion(vgg, ["embedding"])
    unit = int(np.argmax(ov.run(xv)["embedding"][0]))
    vm: dict[str, np.ndarray] = {}

    def vgg_sweep(sweeper: Any, key: str) -> Callable[[], None]:
        return lambda: vm.__setitem__(key, sweeper.sweep(xv, occ, reduce=lambda o: o["embedding"][:, unit]))

    vfns = {"vgg16_ort_sweep": vgg_sweep(ov, "plain"), "vgg16_incremental": vgg_sweep(inc, "inc")}
    if int8:  # a dense-convolution network: where INT8 (VNNI) pays most
        ovq = OrtRunner(vgg, ["embedding"], precision="int8")
        incq = IncrementalOcclusion(vgg, ["embedding"], precision="int8")
        vfns |= {
            "vgg16_int8_sweep": vgg_sweep(ovq, "int8"),
            "vgg16_int8_incremental": vgg_sweep(incq, "int8_inc"),
        }
    rv = compare(vfns, repeats, warmup=0)
    out["vgg16_incremental"] = {
        "split": inc.split,
        "stages": inc.cuts,
        "engines": rv,
        "speedup": rv["vgg16_ort_sweep"]["median_s"] / rv["vgg16_incremental"]["median_s"],
        "max_abs_diff": float(np.abs(vm["plain"] - vm["inc"]).max()),
    }
    if int8:
        out["vgg16_int8"] = {
            "unit": unit,
            "speedup_sweep": rv["vgg16_ort_sweep"]["median_s"] / rv["vgg16_int8_sweep"]["median_s"],
            "speedup_incremental": rv["vgg16_incremental"]["median_s"]
            / rv["vgg16_int8_incremental"]["median_s"],
            "spearman_vs_fp32": float(
                spearmanr(to_pixels(vm["int8"]).ravel(), to_pixels(vm["plain"]).ravel())[0]
            ),
            "incremental_spearman_vs_fp32": float(
                spearmanr(to_pixels(vm["int8_inc"]).ravel(), to_pixels(vm["plain"]).ravel())[0]
            ),
            **ovq.meta.get("accuracy_cost", {}),
        }
    e = res
    cap_key = "captum_ppe1" if "captum_ppe1" in e else None
    if cap_key:
        out["speedups_vs_captum_default"] = {k: e[cap_key]["median_s"] / v["median_s"] for k, v in e.items()}
    if "captum_ppe64" in e:
        out["speedups_vs_captum_ppe64"] = {
            k: e["captum_ppe64"]["median_s"] / v["median_s"] for k, v in e.items()
        }
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: /proc's VmHWM (per address space, so a spawned child does not inherit the
    parent's peak the way getrusage's ru_maxrss does across fork+exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sweep_rss_child(stride: int, q: Any) -> None:

    from .images import sample_image
    from .runtime.runner import OrtRunner
    from .runtime.sweep import Occlusion
    from .zoo import load

    net = load("efficientnet_lite0")
    x = net.preprocess(sample_image("chelsea")).numpy()
    OrtRunner(net, ["logits"]).sweep(  # the automatic batch size, as users get it
        x, Occlusion(224, 224, (32, 32), (stride, stride)), reduce=lambda o: o["logits"][:, 0]
    )
    q.put(peak_rss_mb())


def sweep_peak_rss_mb(stride: int = 8) -> float:
    """Peak RSS (MiB) of a process that loads efficientnet_lite0 and runs the occlusion sweep on ONNX Runtime."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_sweep_rss_child, args=(stride, q))
    p.start()
    p.join(600)
    return float(q.get(timeout=5)) if p.exitcode == 0 else float("nan")


# (name, batch, with backward): what the heap workload measures
ALLOC_STEPS = (("forward_b1", 1, False), ("forward_b16", 16, False), ("gradient_b8", 8, True))
ALLOC_WORKLOADS = tuple(name for name, _, _ in ALLOC_STEPS)


def _alloc_child(tuned: bool, q: Any) -> None:
    """Torch eager efficientnet_lite0 throughput in a fresh process, with or without the C-heap tuning."""
    from .images import sample_image
    from .runtime.alloc import tune_allocator
    from .runtime.session import default_threads
    from .zoo import load

    state = tune_allocator() if tuned else {"applied": False, "reason": "default glibc heap"}
    torch.set_num_threads(default_threads())
    net = load("efficientnet_lite0")
    x = net.preprocess(sample_image("chelsea"))
    out: dict[str, Any] = {"allocator": state}
    for name, b, grad in ALLOC_STEPS:
        xb = x.repeat(b, 1, 1, 1)

        def step(xb: torch.Tensor = xb, grad: bool = grad) -> None:
            if grad:
                xi = xb.clone().requires_grad_(True)
                net.module(xi)[:, 0].sum().backward()
            else:
                with torch.no_grad():
                    net.module(xb)

        step()
        n, t0, c0 = 0, time.perf_counter(), os.times()
        while n < 96:
            step()
            n += b
        wall, c1 = time.perf_counter() - t0, os.times()
        out[name] = {"img_s": n / wall, "sys_share": (c1.system - c0.system) / max(1e-9, c1.user - c0.user)}
    q.put(out)


def bench_allocator(repeats: int) -> dict[str, Any]:
    """(e) torch eager with glibc's default heap vs convlens's tuning (`accel.runtime.alloc`), each in a fresh
    process, alternated; the other workloads measure torch with the default heap, as a user's own code runs."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for rep in range(max(1, repeats)):
        for mode in ("default", "tuned") if rep % 2 == 0 else ("tuned", "default"):
            q = ctx.Queue()
            p = ctx.Process(target=_alloc_child, args=(mode == "tuned", q))
            p.start()
            p.join(600)
            if p.exitcode == 0:
                runs[mode].append(q.get(timeout=5))
    out: dict[str, Any] = {}
    for mode, rs in runs.items():
        if not rs:
            continue
        out[mode] = {
            k: {
                "img_s": statistics.median(r[k]["img_s"] for r in rs),
                "sys_share": statistics.median(r[k]["sys_share"] for r in rs),
            }
            for k in ALLOC_WORKLOADS
        } | {"allocator": rs[0]["allocator"], "repeats": len(rs)}
    if "default" in out and "tuned" in out:
        out["speedup"] = {k: out["tuned"][k]["img_s"] / out["default"][k]["img_s"] for k in ALLOC_WORKLOADS}
    return out


def bench_patch_scan(n_images: int, repeats: int) -> list[dict]:
    """(c) a max-activating-patch scan over a folder of photos: decode, preprocess, forward, running top-9."""
    from .images import foolbox_imagenet, open_image, sample_images
    from .runtime.runner import OrtRunner, TorchRunner
    from .zoo import load

    net = load("alexnet")
    layer = "features.11"
    with tempfile.TemporaryDirectory() as d:
        srcs = [p for p, _ in foolbox_imagenet()] + sorted(sample_images().values())
        for i in range(n_images):
            open_image(srcs[i % len(srcs)]).save(Path(d) / f"img{i:05d}.jpg", quality=90)
        files = sorted(Path(d).glob("*.jpg"))

        def scan(r: Any) -> Callable[[], None]:
            def go() -> None:
                best = np.full((256, 9), -np.inf)
                for i in range(0, len(files), 32):
                    x = net.preprocess_batch([open_image(f) for f in files[i : i + 32]]).numpy()
                    a = r.run(x)[layer].max(axis=(2, 3))  # (B, C): best unit per channel per image
                    best = np.sort(np.concatenate([best, a.T], axis=1), axis=1)[:, -9:]

            return go

        res = compare(
            {
                "torch": scan(TorchRunner(net, [layer], batch_size=32)),
                "onnxruntime": scan(OrtRunner(net, [layer], batch_size=32)),
            },
            repeats,
        )
    return [
        {
            "workload": "max_patch_scan",
            "model": "alexnet",
            "layer": layer,
            "engine": k,
            "images": n_images,
            "images_per_s": n_images / v["median_s"],
            **v,
        }
        for k, v in res.items()
    ]


def _inspect_child(n: int, q: Any) -> None:

    from .registry import run
    from .zoo import load

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
    q.put(
        {
            "images": n,
            "wall_s": wall,
            "peak_rss_mb": peak_rss_mb(),
            "backend": res.meta.get("backend"),
        }
    )


def bench_inspect(n: int = 10_000, tsne: bool = True) -> dict[str, Any]:
    """Dataset-scale inspect workloads on Fashion-MNIST: a max-patch scan (time, peak RSS of its own process)
    and t-SNE of fashion_cnn embeddings, openTSNE (FFT) vs scikit-learn's TSNE, with trustworthiness."""
    import multiprocessing as mp

    from .fashion_mnist import find_fashion_mnist

    if find_fashion_mnist() is None:
        return {"skipped": "Fashion-MNIST is not installed (Debian dataset-fashion-mnist)"}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_inspect_child, args=(n, q))
    p.start()
    p.join(1800)
    out: dict[str, Any] = {
        "max_patches": q.get(timeout=5) if p.exitcode == 0 else {"error": f"exit {p.exitcode}"}
    }
    if tsne:
        from .methods.inspect.embedding import bench_tsne
        from .zoo import load

        out["tsne"] = bench_tsne(load("fashion_cnn"), f"fashion_mnist:test:{n}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# the report


def bench_dashboard(repeats: int = 3, timeout: float = 1200) -> dict[str, Any]:
    """Dashboard timings (page switch, Compare with 4 gradient methods, reopening a run) from `dashboard.bench`,
    run in a child process so the engine itself never imports streamlit."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    if not (root / "dashboard" / "bench.py").is_file():
        return {"skipped": "the dashboard package is not installed beside the engine"}
    try:
        cp = subprocess.run(
            [sys.executable, "-m", "dashboard.bench", "--repeats", str(repeats)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"the dashboard bench did not finish in {timeout:.0f} s"}
    if cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"the dashboard bench failed: {tail[0][:300]}"}
    return json.loads(cp.stdout.strip().splitlines()[-1])


def bench_gpu(models: list[str], batches: list[int], repeats: int) -> dict[str, Any]:
    """(GPU) images/s of torch eager fp32 and fp16 autocast against ONNX Runtime CUDA (fp32, fp16) and TensorRT
    (fp32, fp16), alternating in one process; reduced-precision rows carry their accuracy cost."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    import onnxruntime as ort

    from .runtime.runner import OrtRunner
    from .zoo import load

    avail = set(ort.get_available_providers())
    rows: list[dict] = []
    for name in models:
        net = load(name)
        import copy

        dev_mod = copy.deepcopy(net.module).to("cuda").eval()  # the CPU module stays for the parity checks
        for bs in batches:
            x = _photos(net, bs)
            xt = torch.from_numpy(x).to("cuda")

            def torch_fp32(xt: torch.Tensor = xt, m: Any = dev_mod) -> None:
                with torch.no_grad():
                    m(xt)
                torch.cuda.synchronize()

            def torch_fp16(xt: torch.Tensor = xt, m: Any = dev_mod) -> None:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                    m(xt)
                torch.cuda.synchronize()

            fns: dict[str, Callable[[], Any]] = {"torch_fp32": torch_fp32, "torch_autocast_fp16": torch_fp16}
            metas: dict[str, dict] = {}
            for prov, label in (
                ("CUDAExecutionProvider", "ort_cuda"),
                ("TensorrtExecutionProvider", "ort_trt"),
            ):
                if prov not in avail:
                    continue
                for prec in ("fp32", "fp16"):
                    try:
                        r = OrtRunner(net, ["embedding"], batch_size=bs, providers=(prov,), precision=prec)
                    except Exception as e:  # noqa: BLE001 - a provider that cannot start is reported, not fatal
                        metas[f"{label}_{prec}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                        continue
                    if r.provider != prov:
                        metas[f"{label}_{prec}"] = {"error": f"fell back to {r.provider}"}
                        continue
                    fns[f"{label}_{prec}"] = lambda r=r, x=x: r.run(x)
                    metas[f"{label}_{prec}"] = {k: r.meta.get(k) for k in ("accuracy_cost", "io_binding")}
            res = compare(fns, repeats, warmup=3)
            for eng, st in res.items():
                rows.append(
                    {"model": name, "batch": bs, "engine": eng, "images_per_s": bs / st["median_s"], **st}
                    | metas.get(eng, {})
                )
            rows.extend(
                {"model": name, "batch": bs, "engine": k, **v} for k, v in metas.items() if "error" in v
            )
        del dev_mod
        torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(0), "rows": rows}


def run_bench(
    quick: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    store: bool = True,
    int8: bool | None = None,
    progress: Progress | None = None,
    dashboard: bool | None = None,
) -> dict[str, Any]:
    """Run the benchmark suite; write JSON + Markdown to `out_dir` and the run store; return the report."""
    from .runtime.alloc import allocator_state
    from .runtime.session import default_threads

    torch.set_num_threads(default_threads())
    say = progress or (lambda f, m: None)
    rep = 1 if quick else 3
    dashboard = (not quick) if dashboard is None else dashboard
    report: dict[str, Any] = {"quick": quick, "machine": machine_info()}
    report["machine"]["heap"] = allocator_state() or {
        "applied": False,
        "reason": "default glibc heap: torch rows measure eager PyTorch as a user's own code runs it",
    }
    say(0.02, "measuring matmul peak")
    peak = sgemm_peak()
    report["sgemm_peak_gflops"] = peak
    say(0.05, "embedding throughput")
    report["embedding"] = bench_embedding(
        ["efficientnet_lite0", "vgg16"] if quick else ["efficientnet_lite0", "alexnet", "vgg16"],
        [32] if quick else [1, 32, 64],
        rep,
        peak,
    )
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
    say(0.83, "torch eager: default heap vs tuned")
    report["allocator"] = bench_allocator(rep)
    say(0.85, "patch scan")
    report["patch_scan"] = bench_patch_scan(32 if quick else 128, rep)
    if not quick:
        say(0.9, "dataset-scale inspect (max patches, t-SNE)")
        report["inspect"] = bench_inspect()
    if torch.cuda.is_available():
        say(0.93, "GPU: torch eager vs ONNX Runtime CUDA / TensorRT")
        report["gpu"] = bench_gpu(
            ["efficientnet_lite0", "vgg16"] if quick else ["efficientnet_lite0", "alexnet", "vgg16"],
            [32] if quick else [1, 32, 64],
            rep,
        )
    if dashboard:
        say(0.95, "dashboard (page switch, Compare, reopen)")
        report["dashboard"] = bench_dashboard(1 if quick else 3)
    report["markdown"] = to_markdown(report)
    out = Path(out_dir or Path("artifacts") / "bench")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2, default=float))
    (out / f"bench-{stamp}.md").write_text(report["markdown"])
    report["files"] = [str(out / f"bench-{stamp}.json"), str(out / f"bench-{stamp}.md")]
    if store:
        try:
            from .store import RunStore

            title = f"bench {'quick ' if quick else ''}{report['machine']['cpu'][:40]} {stamp}"
            report["store_id"] = RunStore().put_record(
                "bench", json.loads(json.dumps(report, default=float)), title
            )
        except Exception as e:  # noqa: BLE001 - the report files are the primary output
            report["store_error"] = str(e)
    say(1.0, "done")
    return report


def to_markdown(r: dict[str, Any]) -> str:
    """The report as Markdown tables (what the README shows)."""
    m = r["machine"]
    lines = [
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['threads']} threads; {m['cpu_flags']}), "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}; measured fp32 matmul peak "
        f"{r['sgemm_peak_gflops']:.0f} GFLOP/s. Medians over alternating repeats"
        f"{' (quick: 1 repeat)' if r['quick'] else ''}.",
        "",
        "| model | batch | torch img/s | ORT img/s | ORT / torch | ORT GFLOP/s | ORT % of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    emb = r["embedding"]
    for i in range(0, len(emb), 2):
        t, o = emb[i], emb[i + 1]
        lines.append(
            f"| {t['model']} | {t['batch']} | {t['images_per_s']:.1f} | {o['images_per_s']:.1f} | "
            f"{o['images_per_s'] / t['images_per_s']:.2f}x | {o['gflops']:.0f} | {100 * o['fraction_of_peak']:.0f}% |"
        )
    oc = r["occlusion"]
    lines += [
        "",
        f"Occlusion sweep, efficientnet_lite0, 224x224, window 32, stride {oc['stride']} ({oc['masks']} masks):",
        "",
        "| engine | median s | best s | vs Captum default | vs Captum ppe=64 |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in oc["engines"].items():
        a = oc.get("speedups_vs_captum_default", {}).get(k)
        b = oc.get("speedups_vs_captum_ppe64", {}).get(k)
        lines.append(
            f"| {k} | {v['median_s']:.2f} | {v['best_s']:.2f} | {'' if a is None else f'{a:.1f}x'} | "
            f"{'' if b is None else f'{b:.1f}x'} |"
        )
    inc = oc["vgg16_incremental"]
    diff_key = next(k for k in oc if k.startswith("max_abs_diff_vs_"))
    diffs, ref_name = oc[diff_key], diff_key.removeprefix("max_abs_diff_vs_")
    lines += [
        "",
        f"- Per-pixel maps vs {ref_name}: max abs diff "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        + ".",
        f"- Incremental occlusion on vgg16 (crop stages cut at {', '.join(inc.get('stages', [inc['split']]))}): "
        f"{inc['speedup']:.2f}x the plain ONNX Runtime sweep, max abs diff {inc['max_abs_diff']:.1e}.",
        f"- Adaptive drill-down (coarse stride {oc['drill_down'].get('coarse_stride', 32)}, then halved strides down "
        f"to {oc['stride']} where the map scores; {oc['drill_down'].get('refine', 0.3):.0%} of the fine windows): "
        f"{oc['drill_down']['windows']} of "
        f"{oc['drill_down']['full_windows']} windows, Spearman vs full map {oc['drill_down']['spearman_vs_full']:.3f}, "
        f"top-10 overlap {oc['drill_down']['top10_overlap']:.0%}; "
        f"{oc['engines']['ort_sweep']['median_s'] / oc['engines']['ort_drill_down']['median_s']:.2f}x the plain "
        "ONNX Runtime sweep at the same finest stride.",
    ]
    if "drill_down_refine20" in oc:
        d20 = oc["drill_down_refine20"]
        lines.append(
            f"- Drill-down at 20%: {d20['windows']} windows, Spearman vs full map "
            f"{d20['spearman_vs_full']:.3f}, top-10 overlap {d20['top10_overlap']:.0%}; "
            f"{oc['engines']['ort_sweep']['median_s'] / oc['engines']['ort_drill_down_refine20']['median_s']:.2f}x "
            "the plain ONNX Runtime sweep."
        )
    if "ort_int8_sweep" in oc["engines"]:
        lines.append(
            f"- INT8 sweep: {oc['engines']['ort_sweep']['median_s'] / oc['engines']['ort_int8_sweep']['median_s']:.2f}x "
            "the fp32 ONNX Runtime sweep."
        )
    if "int8" in oc:
        q = oc["int8"]
        lines.append(
            f"- INT8 (QDQ, opt-in): map Spearman vs fp32 {q['spearman_vs_fp32']:.3f}, top-1 agreement "
            f"{q.get('top1_agreement', float('nan')):.0%} on {q.get('held_out_images', '?')} held-out photos."
        )
    if "int8_incremental" in oc:
        q = oc["int8_incremental"]
        lines.append(
            f"- INT8 incremental (every stage and the tail quantized): map Spearman vs fp32 "
            f"{q['spearman_vs_fp32']:.3f}; with drill-down {q['drill_spearman_vs_full_fp32']:.3f} vs the full fp32 "
            f"map; top-1 agreement {q.get('top1_agreement', float('nan')):.0%} on {q.get('held_out_images', '?')} "
            "held-out photos."
        )
    if "vgg16_int8" in oc:
        q = oc["vgg16_int8"]
        lines.append(
            f"- INT8 on vgg16 (same windows, score = embedding unit {q['unit']}): sweep {q['speedup_sweep']:.2f}x "
            f"the fp32 sweep, incremental {q['speedup_incremental']:.2f}x the fp32 incremental; map Spearman vs "
            f"fp32 {q['spearman_vs_fp32']:.3f} (incremental {q['incremental_spearman_vs_fp32']:.3f})."
        )
    if "speedups_vs_captum_default" in oc:
        sp = oc["speedups_vs_captum_default"]
        exact = [k for k in ("ort_sweep", "ort_incremental") if k in sp]
        if exact:
            b = max(exact, key=lambda k: sp[k])
            lines.append(f"- Best exact path: {b}, {sp[b]:.1f}x Captum's default.")
        b = max(sp, key=lambda k: sp[k])
        lines.append(f"- Best overall: {b}, {sp[b]:.1f}x Captum's default.")
    if "peak_rss_mb" in oc:
        lines.append(f"- Peak RSS of the {oc['masks']}-mask sweep process: {oc['peak_rss_mb']:.0f} MiB.")
    g = r.get("gpu")
    if g and "rows" in g:
        lines += [
            "",
            f"GPU ({g['device']}), images/s:",
            "",
            "| model | batch | engine | img/s | accuracy cost |",
        ]
        lines.append("|---|---:|---|---:|---|")
        for row in g["rows"]:
            cost = row.get("accuracy_cost") or {}
            note = row.get("error") or (
                f"top-1 {cost['top1_agreement']:.0%}" if "top1_agreement" in cost else ""
            )
            ips = f"{row['images_per_s']:.1f}" if "images_per_s" in row else "-"
            lines.append(f"| {row['model']} | {row['batch']} | {row['engine']} | {ips} | {note} |")
        lines.append("")
    ps = r["patch_scan"]
    lines.append(
        f"- Max-patch scan (alexnet {ps[0]['layer']}, {ps[0]['images']} JPEGs, decode included): "
        + ", ".join(f"{p['engine']} {p['images_per_s']:.1f} img/s" for p in ps)
    )
    al = r.get("allocator", {})
    if "speedup" in al:
        dflt, tuned = al["default"], al["tuned"]
        lines.append(
            "- Torch eager efficientnet_lite0, glibc's default heap vs convlens's tuning (fresh processes; the CLI "
            "and dashboard tune, the rows above use the default heap as a user's own code does): "
            + ", ".join(
                f"{k.replace('_', ' ')} {dflt[k]['img_s']:.0f} -> {tuned[k]['img_s']:.0f} img/s "
                f"({al['speedup'][k]:.2f}x; system time {dflt[k]['sys_share']:.0%} -> {tuned[k]['sys_share']:.0%} "
                "of user)"
                for k in ALLOC_WORKLOADS
            )
            + "."
        )
    ins = r.get("inspect", {})
    if "max_patches" in ins and "wall_s" in ins["max_patches"]:
        mp_ = ins["max_patches"]
        lines.append(
            f"- max_patches over {mp_['images']} Fashion-MNIST images (fashion_cnn features.9, {mp_['backend']}): "
            f"{mp_['wall_s']:.1f} s, peak RSS of the whole process {mp_['peak_rss_mb']:.0f} MiB."
        )
    if "tsne" in ins:
        t = ins["tsne"]
        lines.append(
            f"- t-SNE of {t['points']} fashion_cnn embeddings: openTSNE ({t['opentsne_impl']}) {t['opentsne_s']:.0f} s, "
            f"trustworthiness {t['opentsne_trustworthiness']:.3f}; scikit-learn TSNE {t.get('sklearn_s', float('nan')):.0f} s, "
            f"trustworthiness {t.get('sklearn_trustworthiness', float('nan')):.3f}."
        )
    d = r.get("dashboard")
    if d and "skipped" not in d:
        sw = d["page_switch_s"]
        lines += [
            "",
            f"Dashboard ({d['model']}, AppTest in one process, medians of {d['repeats']}):",
            "",
            "| what | median s | target |",
            "|---|---:|---:|",
            f"| warm page switch (worst page median; max {d['page_switch_max_s']:.2f} s) | {max(sw.values()):.2f} | < 2 |",
            f"| Compare, 4 gradient methods ({', '.join(d['methods'])}) + faithfulness scores "
            f"({d['compare_scores_steps']} steps), fresh photo | {d['compare_s']:.2f} | < 5 |",
            f"| ... of which the four maps | {d['compare_maps_only_s']:.2f} | |",
            f"| reopening a stored run by its link (max {d['reopen_max_s']:.2f} s) | {d['reopen_s']:.2f} | < 1 |",
        ]
    elif d:
        lines.append(f"- Dashboard timings skipped: {d['skipped']}")
    return "\n".join(lines) + "\n"
