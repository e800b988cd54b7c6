"""Torch eager with glibc's default heap vs convlens's tuning (`accel.runtime.alloc`), each in a fresh process."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from ..harness import in_child

# (name, batch, with backward): what the heap workload measures
ALLOC_STEPS = (("forward_b1", 1, False), ("forward_b16", 16, False), ("gradient_b8", 8, True))
ALLOC_WORKLOADS = tuple(name for name, _, _ in ALLOC_STEPS)


def alloc_child(tuned: bool, q: Any) -> None:
    """Torch eager efficientnet_lite0 throughput in a fresh process, with or without the C-heap tuning."""
    from ...images import sample_image
    from ...runtime.alloc import tune_allocator
    from ...runtime.session import default_threads
    from ...zoo import load

    state = tune_allocator() if tuned else {"applied": False, "reason": "default glibc heap"}
    torch.set_num_threads(default_threads())
    net = load("efficientnet_lite0")
    module = net.require_module("this bench workload")
    x = net.preprocess(sample_image("chelsea"))
    out: dict[str, Any] = {"allocator": state}
    for name, b, grad in ALLOC_STEPS:
        xb = x.repeat(b, 1, 1, 1)

        def step(xb: torch.Tensor = xb, grad: bool = grad) -> None:
            if grad:
                xi = xb.clone().requires_grad_(True)
                module(xi)[:, 0].sum().backward()
            else:
                with torch.no_grad():
                    module(xb)

        step()
        n, t0, c0 = 0, time.perf_counter(), os.times()
        while n < 96:
            step()
            n += b
        wall, c1 = time.perf_counter() - t0, os.times()
        out[name] = {"img_s": n / wall, "sys_share": (c1.system - c0.system) / max(1e-9, c1.user - c0.user)}
    q.put(out)


def bench_allocator(repeats: int) -> dict[str, Any]:
    """(e) torch eager with glibc's default heap vs convlens's tuning, each in a fresh process, alternated; the
    other workloads measure torch with the default heap, as a user's own code runs."""
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for rep in range(max(1, repeats)):
        for mode in ("default", "tuned") if rep % 2 == 0 else ("tuned", "default"):
            got = in_child(alloc_child, (mode == "tuned",), timeout=600)
            if got is not None:
                runs[mode].append(got)
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
