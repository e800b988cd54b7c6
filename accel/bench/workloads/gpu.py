"""GPU: torch eager fp32 and fp16 autocast against ONNX Runtime CUDA and TensorRT (fp32, fp16), where CUDA exists."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from ...backbone import Backbone
from ..harness import compare, photos

PROVIDERS = (("CUDAExecutionProvider", "ort_cuda"), ("TensorrtExecutionProvider", "ort_trt"))


def torch_rows(module: torch.nn.Module, x: np.ndarray) -> dict[str, Callable[[], None]]:
    """Torch eager on the GPU, fp32 and fp16 autocast, synchronised so the time is the work's."""
    xt = torch.from_numpy(x).to("cuda")

    def fp32() -> None:
        with torch.no_grad():
            module(xt)
        torch.cuda.synchronize()

    def fp16() -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            module(xt)
        torch.cuda.synchronize()

    return {"torch_fp32": fp32, "torch_autocast_fp16": fp16}


def ort_rows(net: Backbone, x: np.ndarray, bs: int) -> tuple[dict[str, Callable[[], Any]], dict[str, dict]]:
    """ONNX Runtime CUDA / TensorRT runners at fp32 and fp16 (those that start on their provider), with the meta
    each row reports; a provider that cannot start or falls back is recorded as an error row."""
    import onnxruntime as ort

    from ...runtime.runner import runner

    avail = set(ort.get_available_providers())
    fns: dict[str, Callable[[], Any]] = {}
    metas: dict[str, dict] = {}
    for prov, label in PROVIDERS:
        if prov not in avail:
            continue
        for prec in ("fp32", "fp16"):
            key = f"{label}_{prec}"
            try:
                r = runner(
                    net, ["embedding"], "onnxruntime", batch_size=bs, providers=(prov,), precision=prec
                )
            except Exception as e:  # noqa: BLE001 - a provider that cannot start is reported, not fatal
                metas[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            got = getattr(r, "provider", r.backend)
            if got != prov:
                metas[key] = {"error": f"fell back to {got}"}
                continue
            fns[key] = partial(r.run, x)
            metas[key] = {k: r.meta.get(k) for k in ("accuracy_cost", "io_binding")}
    return fns, metas


def bench_gpu(models: list[str], batches: list[int], repeats: int) -> dict[str, Any]:
    """(GPU) images/s of torch eager fp32 and fp16 autocast against ONNX Runtime CUDA (fp32, fp16) and TensorRT
    (fp32, fp16), alternating in one process; reduced-precision rows carry their accuracy cost."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from ...zoo import load

    rows: list[dict] = []
    for name in models:
        net = load(name)
        dev_mod = (
            copy.deepcopy(net.require_module("this bench workload")).to("cuda").eval()
        )  # the CPU module stays for the parity checks
        for bs in batches:
            x = photos(net, bs)
            fns, metas = ort_rows(net, x, bs)
            res = compare(torch_rows(dev_mod, x) | fns, repeats, warmup=3)
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
