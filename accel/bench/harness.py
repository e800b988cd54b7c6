"""The bench's harness: timing, alternating A/B medians, machine facts, child processes, the photos workloads use.

Protocol: engines are compared in one process, alternating A and B each repeat (A,B then B,A); every iteration
records wall and process CPU time; an iteration where the process got much less CPU than its threads could use
is flagged as contended and measured once more.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbone import Backbone
from ..runtime.session import usable_cores

Progress = Callable[[float, str], None]

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "asimd", "sve")


def measure(fn: Callable[[], Any], threads: int) -> dict[str, float]:
    """One timed call: wall and process CPU seconds, and whether the process got much less CPU than it could use."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "contended": float(cpu < 0.6 * wall * max(1, threads) and wall > 0.05)}


def summarise(ss: list[dict[str, float]]) -> dict[str, Any]:
    """Median and best wall, spread, CPU share and contention count of one engine's samples."""
    walls = [s["wall"] for s in ss]
    return {
        "median_s": statistics.median(walls),
        "best_s": min(walls),
        "spread": (max(walls) - min(walls)) / statistics.median(walls) if len(walls) > 1 else 0.0,
        "cpu_per_wall": statistics.median([s["cpu"] / s["wall"] for s in ss]),
        "contended": int(sum(s["contended"] for s in ss)),
        "repeats": len(ss),
    }


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
            m = measure(fns[n], threads)
            if m["contended"]:
                again = measure(fns[n], threads)  # retry a contended measurement once
                m = again if again["wall"] < m["wall"] else m
                m["retried"] = 1.0
            samples[n].append(m)
    return {n: summarise(ss) for n, ss in samples.items()}


def cpuinfo() -> str:
    """/proc/cpuinfo ('' where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name."""
    for line in cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector-unit flags the CPU reports (of the ones that matter for fp32 and int8 throughput)."""
    for line in cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return " ".join(f for f in VECTOR_FLAGS if f in have)
    return ""


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import onnxruntime as ort

    from ..runtime.session import default_threads

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
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


def count_macs(net: Backbone) -> int:
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

    module = net.require_module("this bench workload")
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        module(torch.zeros(1, *net.input_shape))
    for h in hooks:
        h.remove()
    return macs


def photo_paths() -> list[Path]:
    """The labelled foolbox photos, then the packaged sample photos: what the workloads feed the networks."""
    from ..images import foolbox_imagenet, sample_images

    return [Path(p) for p, _ in foolbox_imagenet()] + [Path(p) for p in sorted(sample_images().values())]


def photos(net: Backbone, n: int) -> np.ndarray:
    """A batch of `n` real photos preprocessed for `net` (repeated when there are fewer photos than `n`)."""
    from ..images import open_image

    paths = photo_paths()
    x = net.preprocess_batch([open_image(p) for p in paths[: max(1, min(n, len(paths)))]]).numpy()
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n]


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


def in_child(target: Callable[..., None], args: tuple, timeout: float = 600) -> Any:
    """Run `target(*args, queue)` in a fresh spawned process (its own heap and peak RSS); what it put on the
    queue, or None when it failed or did not finish in `timeout` seconds."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return None
    return q.get(timeout=5) if p.exitcode == 0 else None
