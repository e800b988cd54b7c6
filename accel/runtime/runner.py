"""One batched forward interface with two implementations: PyTorch eager and ONNX Runtime, same outputs.

`runner(net, taps)` returns a Runner whose `.run(batch)` gives {tap: numpy array}. Taps are "logits",
"embedding" (the backbone's pooled feature vector) or any layer name from `net.layers()`. The ONNX Runtime
runner checks itself against torch on first use and refuses an export that disagrees.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BadInput
from ..taps import capture
from .sweep import Perturbation

if TYPE_CHECKING:
    from ..zoo import Backbone

Progress = Callable[[float, str], None]
PARITY_RTOL = 1e-4  # allowed max abs difference, relative to max(1, max |torch output|)


def forward_taps(net: Backbone, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
    """Run the torch module once and return the requested taps (the definition both runners implement)."""
    mod = net.require_module("the torch runner")
    emb = net.embedding_layer
    if "embedding" in taps and not emb:
        raise BadInput(f"{net.name!r} declares no embedding layer; name a layer tap instead")
    if "logits" in taps and not net.has_head:
        raise BadInput(
            f"{net.name!r} has no classifier head, so it has no 'logits' tap; use 'embedding' or a layer"
        )
    hooks = [t for t in taps if t not in ("logits", "embedding")]
    if "embedding" in taps and emb not in hooks:
        hooks.append(emb)  # type: ignore[arg-type]
    with capture(mod, hooks) as st:
        y = mod(x)
    out: dict[str, torch.Tensor] = {}
    for t in taps:
        if t == "logits":
            out[t] = y
        elif t == "embedding":
            e = st[emb]  # type: ignore[index]
            out[t] = (e.mean((2, 3)) if e.ndim == 4 else e).flatten(1)
        else:
            out[t] = st[t]
    return out


def _as_batch(net: Backbone, batch: Any) -> np.ndarray:
    if isinstance(batch, (list, tuple)):
        return net.preprocess_batch(batch).numpy()
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu().numpy()
    a = np.asarray(batch, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(net.input_shape):
        raise BadInput(
            f"{net.name} expects a batch of shape (N,{','.join(map(str, net.input_shape))}), got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise BadInput("input batch contains NaN or inf")
    return a


def auto_batch_size(net: Backbone, budget_bytes: int | None = None) -> int:
    """A batch size from the activation footprint of one image and a memory budget (default: 1/4 of free RAM)."""
    if budget_bytes is None:
        import os

        env = os.environ.get("CONVLENS_MEMORY_BUDGET_MB")
        if env:
            budget_bytes = int(float(env) * 2**20)
        else:
            try:
                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                avail = 4 * 2**30
            budget_bytes = avail // 4
    try:
        per = sum(int(np.prod(li.out_shape)) for li in net.layers()) * 4
    except Exception:  # noqa: BLE001
        per = int(np.prod(net.input_shape)) * 4 * 64
    per = max(per, 1)
    return int(max(1, min(max_auto_batch(), budget_bytes // per)))


def max_auto_batch() -> int:
    """The largest automatic batch: 8 on CPU, where ONNX Runtime throughput peaks there or is flat (alexnet,
    vgg16) and larger batches only cost memory and cache (efficientnet_lite0's 625-window sweep, medians of 5
    alternating runs: 1.89 s at 8, 2.03 s at 16, 2.15 s at 32; INT8 0.81 / 0.85 / 0.94 s); 64 with a GPU."""
    from .session import gpu_driver_present

    return 64 if gpu_driver_present() else 8


class Runner:
    """Batched forward passes returning numpy arrays per tap."""

    backend = "?"

    def __init__(self, net: Backbone, taps: Sequence[str], batch_size: int | None = None) -> None:
        if not taps:
            raise BadInput("a runner needs at least one tap, e.g. ['logits']")
        self.net = net
        self.taps = list(dict.fromkeys(taps))
        if batch_size is not None and batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size or auto_batch_size(net)
        self.meta: dict[str, Any] = {"backend": self.backend, "batch_size": self.batch_size}
        self.passes = 0

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, batch: Any, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Forward a batch (array, tensor or list of PIL images) in chunks; returns {tap: array with batch axis}."""
        a = _as_batch(self.net, batch)
        parts: list[list[np.ndarray]] = [[] for _ in self.taps]
        n = len(a)
        i = 0
        while i < n:
            stop = min(n, i + self.batch_size)
            outs = self._forward_safe(a[i:stop])
            if outs is None:
                continue  # batch size was halved; retry the same slice
            self.passes += 1
            for p, o in zip(parts, outs):
                p.append(o)
            i = stop
            if progress is not None:
                progress(i / n, f"{i}/{n} images")
        if n == 0:
            return {t: np.empty((0,)) for t in self.taps}
        return {t: np.concatenate(p) if len(p) > 1 else p[0] for t, p in zip(self.taps, parts)}

    __call__ = run

    def _forward_safe(self, x: np.ndarray) -> list[np.ndarray] | None:
        """Forward one chunk; on an allocation failure halve the batch size, say so, and ask for a retry."""
        try:
            return self._forward(x)
        except (MemoryError, RuntimeError) as e:
            msg = str(e).lower()
            if not isinstance(e, MemoryError) and "alloc" not in msg and "out of memory" not in msg:
                raise
            if len(x) == 1:
                raise BadInput(
                    f"{self.net.name}: one image does not fit in memory ({str(e)[:120]})"
                ) from None
            self.batch_size = max(1, len(x) // 2)
            self.meta["batch_size"] = self.batch_size
            self.meta["batch_halvings"] = self.meta.get("batch_halvings", 0) + 1
            warnings.warn(
                f"allocation failed; halving batch size to {self.batch_size} and retrying", stacklevel=3
            )
            return None

    def sweep(
        self,
        x0: Any,
        perturbation: Perturbation,
        reduce: Callable[[dict[str, np.ndarray]], Any] | None = None,
        progress: Progress | None = None,
    ) -> Any:
        """Forward N perturbed copies of one image, built lazily batch by batch (see accel.runtime.sweep).

        Without `reduce`, returns {tap: (N, ...) array}. With `reduce`, each batch's outputs are reduced first
        (e.g. to the target probability) and the reduced pieces are concatenated, so big taps never pile up.
        """
        a = _as_batch(self.net, x0)
        if len(a) != 1:
            raise BadInput(f"sweep perturbs one image, got a batch of {len(a)}")
        x = a[0]
        n = perturbation.n
        pieces: list[Any] = []
        i = 0
        while i < n:
            stop = min(n, i + self.batch_size)
            got = self._forward_safe(perturbation.make(x, i, stop))
            if got is None:
                continue
            outs = dict(zip(self.taps, got))
            self.passes += 1
            pieces.append(reduce(outs) if reduce is not None else outs)
            i = stop
            if progress is not None:
                progress(stop / n, f"{stop}/{n} perturbations")
        if not pieces:
            return np.empty((0,)) if reduce is not None else {t: np.empty((0,)) for t in self.taps}
        if reduce is not None:
            return np.concatenate([np.asarray(p) for p in pieces])
        return {t: np.concatenate([p[t] for p in pieces]) for t in self.taps}


class TorchRunner(Runner):
    """PyTorch eager forward passes (also the parity reference)."""

    backend = "torch"

    def __init__(self, net: Backbone, taps: Sequence[str], batch_size: int | None = None) -> None:
        super().__init__(net, taps, batch_size)
        for t in self.taps:
            if t not in ("logits", "embedding"):
                net.layer(t.partition(":")[0])
        self.meta["provider"] = "torch-cpu" if not torch.cuda.is_available() else "torch-cuda"

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = forward_taps(self.net, torch.from_numpy(x), self.taps)
        return [out[t].float().numpy() for t in self.taps]


class OrtRunner(Runner):
    """ONNX Runtime forward passes over a cached export of the backbone with its taps as outputs."""

    backend = "onnxruntime"

    def __init__(
        self,
        net: Backbone,
        taps: Sequence[str],
        batch_size: int | None = None,
        providers: tuple[str, ...] | None = None,
        check_parity: bool = True,
        precision: str = "fp32",
        io_binding: bool | None = None,
    ) -> None:
        super().__init__(net, taps, batch_size)
        from .session import make_session

        if precision not in ("fp32", "int8", "fp16"):
            raise BadInput(
                f"precision must be 'fp32', 'int8' (CPU, static QDQ) or 'fp16' (GPU), got {precision!r}"
            )
        self.precision = precision

        t0 = time.perf_counter()
        if net.module is None:
            if self.taps != ["logits"]:
                raise BadInput(
                    f"{net.name!r} is an ONNX file: only the 'logits' tap is available, not {self.taps}"
                )
            path = net.onnx_path
            check_parity = False
        else:
            from .export import export_backbone

            for t in self.taps:
                if t not in ("logits", "embedding"):
                    net.layer(t.partition(":")[0])
            path = export_backbone(net, self.taps)
        fp32_path = path
        if precision != "fp32":
            from .quantize import packaged_photo_batches, quantize_int8

            calib, held_out = packaged_photo_batches(net)
            if precision == "int8":
                path = quantize_int8(path, calib)
        self.path = path
        self.session, self.provider, failures = make_session(path, providers, fp16=precision == "fp16")
        if precision == "fp16":
            if self.provider == "CPUExecutionProvider":
                raise BadInput(
                    "fp16 is offered on GPU providers only: on the CPU provider it is slower than fp32"
                )
            if self.provider == "CUDAExecutionProvider":  # TensorRT builds fp16 engines from the fp32 graph
                from .quantize import to_fp16

                self.session, self.provider, _ = make_session(to_fp16(fp32_path), providers)
        if precision != "fp32":
            self._record_cost(fp32_path, held_out)
            check_parity = False
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # IO binding (inputs from pinned host memory, outputs bound on the device) on GPU providers by default
        self.io_binding = self.provider != "CPUExecutionProvider" if io_binding is None else bool(io_binding)
        self.meta["io_binding"] = self.io_binding
        self.meta.update(
            provider=self.provider,
            provider_failures=failures,
            onnx=str(path),
            setup_s=round(time.perf_counter() - t0, 3),
        )
        self._parity_pending = check_parity

    def _record_cost(self, fp32_path: Any, held_out: np.ndarray) -> None:
        """Accuracy cost of a reduced-precision session against the fp32 graph on held-out packaged photos."""
        from .quantize import accuracy_cost
        from .session import make_session

        ref_sess, _, _ = make_session(fp32_path, ("CPUExecutionProvider",))
        ref = ref_sess.run(None, {"input": held_out})
        got = self.session.run(None, {self.session.get_inputs()[0].name: held_out})
        self.meta["accuracy_cost"] = accuracy_cost(ref, got, self.taps) | {"held_out_images": len(held_out)}
        self.meta["precision"] = self.precision

    def _forward_bound(self, x: np.ndarray) -> list[np.ndarray]:
        """One batch through IO binding: on CUDA the input goes from pinned host memory to the device
        asynchronously (torch) and outputs stay on the device until one copy back; elsewhere host OrtValues."""
        import onnxruntime as ort

        b = self.session.io_binding()
        on_gpu = self.provider != "CPUExecutionProvider" and torch.cuda.is_available()
        if on_gpu:
            xt = torch.from_numpy(x).pin_memory().to("cuda", non_blocking=True)
            b.bind_input(self.input_name, "cuda", 0, np.float32, list(xt.shape), xt.data_ptr())
            torch.cuda.current_stream().synchronize()
        else:
            b.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x))
        for name in self.output_names:
            b.bind_output(name, "cuda" if on_gpu else "cpu")
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.io_binding:
            outs = self._forward_bound(x)
        else:
            outs = self.session.run(None, {self.input_name: x})
        if self._parity_pending:
            self._parity_pending = False
            self._check(x[:2], outs)
        return outs

    def _check(self, x: np.ndarray, outs: list[np.ndarray]) -> None:
        with torch.no_grad():
            ref = forward_taps(self.net, torch.from_numpy(x), self.taps)
        worst = 0.0
        for t, o in zip(self.taps, outs):
            r = ref[t].float().numpy()
            d = float(np.abs(o[: len(r)] - r).max()) if r.size else 0.0
            scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            worst = max(worst, d / scale)
            self.meta.setdefault("parity_max_abs", {})[t] = d
            if d > PARITY_RTOL * scale:
                raise RuntimeError(
                    f"ONNX export of {self.net.name} disagrees with torch on tap {t!r}: max abs diff {d:.3g} "
                    f"(allowed {PARITY_RTOL * scale:.3g}); refusing to use it"
                )
        self.meta["parity_rel"] = worst


def runner(
    net: Backbone,
    taps: Sequence[str] = ("logits",),
    backend: str = "auto",
    batch_size: int | None = None,
    providers: tuple[str, ...] | None = None,
    precision: str = "fp32",
) -> Runner:
    """A batched forward runner: backend "torch", "onnxruntime", or "auto" (ONNX Runtime when it works).

    `precision="int8"` (ONNX Runtime on CPU, opt-in) quantizes statically and reports its accuracy cost in meta.
    """
    if precision != "fp32" and backend == "torch":
        raise BadInput("reduced precision is offered on the ONNX Runtime backend only")
    if backend not in ("auto", "torch", "onnxruntime", "ort"):
        raise BadInput(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        return TorchRunner(net, taps, batch_size)
    from .session import ort_available

    if backend in ("onnxruntime", "ort"):
        if not ort_available():
            raise BadInput("onnxruntime is not installed; use backend='torch'")
        return _cached_ort(net, taps, batch_size, providers, precision)
    if net.module is None or ort_available():
        try:
            return _cached_ort(net, taps, batch_size, providers, precision)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - export or session failure: torch still works
            if net.module is None:
                raise
            warnings.warn(f"ONNX Runtime unavailable for {net.name} ({e}); using torch", stacklevel=2)
    return TorchRunner(net, taps, batch_size)


_ORT_CACHE: dict[tuple, OrtRunner] = {}
_ORT_CACHE_MAX = 16


def _cached_ort(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None,
    providers: tuple[str, ...] | None,
    precision: str,
) -> OrtRunner:
    """One parity-checked ONNX Runtime runner per (backbone, weights, taps, options): sessions are costly to
    start and safe to share between threads."""
    key = (id(net), net.weights_hash(), tuple(taps), batch_size, providers, precision)
    r = _ORT_CACHE.get(key)
    if r is None:
        r = _parity_checked(OrtRunner(net, taps, batch_size, providers, precision=precision))
        if len(_ORT_CACHE) >= _ORT_CACHE_MAX:
            _ORT_CACHE.pop(next(iter(_ORT_CACHE)))
        _ORT_CACHE[key] = r
    return r


def _parity_checked(r: OrtRunner) -> OrtRunner:
    """Run the parity check now on a real-looking input, so a bad export is refused before any result is used."""
    if r._parity_pending:
        g = torch.Generator().manual_seed(0)
        x01 = torch.rand(2, 3, r.net.pre.size, r.net.pre.size, generator=g)
        r._forward(r.net.normalize(x01).numpy())
    return r
