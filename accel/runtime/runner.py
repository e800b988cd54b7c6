"""One batched forward interface with two implementations: PyTorch eager and ONNX Runtime, same outputs.

`runner(net, taps)` returns a Runner whose `.run(batch)` gives {tap: numpy array}. Taps are "logits",
"embedding" (the backbone's pooled feature vector) or any layer name from `net.layers()`. The ONNX Runtime
runner checks itself against torch before use; a cached export that disagrees is rebuilt once, and refused
(`ParityError`, a `BadInput`) if the fresh export disagrees too.

ONNX Runtime runners come from one pool keyed by the weights hash, taps and options (never the object's id), so
every caller holding a copy of the same weights (each dashboard session deep-copies its backbone) shares one
session. Pooled runners are shared between threads: `passes` is their running total, and `last_passes` the
passes of the calling thread's latest `run`/`sweep`. A user's .onnx file runs in a sandbox process
(`accel.runtime.sandbox`); outputs with NaN or inf are refused on every backend.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import settings
from ..errors import BadInput, ResourceLimit
from ..taps import capture
from .export import ParityError, compare_to_torch
from .sweep import Perturbation

if TYPE_CHECKING:
    from ..backbone import Backbone

Progress = Callable[[float, str], None]
POOL_MAX = 16  # ONNX Runtime runners kept (least recently used dropped first)


def forward_taps(net: Backbone, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
    """Run the torch module once and return the requested taps (the definition both runners implement)."""
    mod = net.require_module("the torch runner")
    emb = net.embedding_layer or ""
    if "embedding" in taps and not emb:
        raise BadInput(f"{net.name!r} declares no embedding layer; name a layer tap instead")
    if "logits" in taps and not net.has_head:
        raise BadInput(
            f"{net.name!r} has no classifier head, so it has no 'logits' tap; use 'embedding' or a layer"
        )
    hooks = [t for t in taps if t not in ("logits", "embedding")]
    if "embedding" in taps and emb not in hooks:
        hooks.append(emb)
    with capture(mod, hooks) as st:
        y = mod(x)
    out: dict[str, torch.Tensor] = {}
    for t in taps:
        if t == "logits":
            out[t] = y
        elif t == "embedding":
            e = st[emb]
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

        env = settings.get("CONVLENS_MEMORY_BUDGET_MB")
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


def _check_finite(net: Backbone, taps: Sequence[str], outs: Sequence[np.ndarray]) -> None:
    """Refuse outputs holding NaN or inf (the input was checked finite, so the model is numerically broken)."""
    for t, o in zip(taps, outs):
        # a float64 sum of float32 values cannot overflow: it is finite exactly when every value is
        with np.errstate(invalid="ignore", over="ignore"):
            total = o.sum(dtype=np.float64) if o.dtype.kind == "f" and o.size else 0.0
        if not np.isfinite(total):
            bad = int(o.size - np.isfinite(o).sum())
            raise BadInput(
                f"{net.name}: the model's output {t!r} holds NaN or inf ({bad} of {o.size} values) for a "
                "finite input; its weights or graph are numerically broken, so no result is given"
            )


def _alloc_message(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return "alloc" in msg or "out of memory" in msg


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
        self._count_lock = threading.Lock()
        self._local = threading.local()

    @property
    def last_passes(self) -> int:
        """Forward passes of the calling thread's latest `run` or `sweep` (shared runners: not mixed up between
        threads, unlike differences of `passes`)."""
        return int(getattr(self._local, "passes", 0))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.passes += n

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, batch: Any, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Forward a batch (array, tensor or list of PIL images) in chunks; returns {tap: array with batch axis}."""
        self._local.passes = 0
        a = _as_batch(self.net, batch)
        parts: list[list[np.ndarray]] = [[] for _ in self.taps]
        n = len(a)
        i = 0
        while i < n:
            stop = min(n, i + self.batch_size)
            outs = self._forward_safe(a[i:stop])
            if outs is None:
                continue  # batch size was halved; retry the same slice
            self._local.passes += 1
            self._count(1)
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
        """Forward one chunk; on an allocation failure halve the batch size, say so, and ask for a retry.

        Outputs are checked: one array per tap with the chunk's batch size, no NaN or inf."""
        try:
            outs = self._forward(x)
        except (MemoryError, RuntimeError) as e:
            if not _alloc_message(e):
                raise
            if len(x) == 1:
                setting = getattr(e, "setting", None)
                if setting:
                    raise ResourceLimit(
                        f"{e}; even one image does not fit: raise the setting {setting} if the model is genuine"
                    ) from None
                raise BadInput(
                    f"{self.net.name}: one image does not fit in memory ({str(e)[:160]})"
                ) from None
            self.batch_size = max(1, len(x) // 2)
            self.meta["batch_size"] = self.batch_size
            self.meta["batch_halvings"] = self.meta.get("batch_halvings", 0) + 1
            warnings.warn(
                f"allocation failed; halving batch size to {self.batch_size} and retrying", stacklevel=3
            )
            return None
        if len(outs) != len(self.taps):
            raise BadInput(f"{self.net.name}: the model gave {len(outs)} outputs for {len(self.taps)} taps")
        for t, o in zip(self.taps, outs):
            if o.ndim == 0 or o.shape[0] != len(x):
                raise BadInput(
                    f"{self.net.name}: output {t!r} has shape {tuple(o.shape)} for a batch of {len(x)}; "
                    "convlens needs the batch as the first axis of every output"
                )
        _check_finite(self.net, self.taps, outs)
        return outs

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
        The passes it made are `last_passes` afterwards (in this thread).
        """
        self._local.passes = 0
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
            self._local.passes += 1
            self._count(1)
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
    """ONNX Runtime forward passes over a cached export of the backbone with its taps as outputs.

    A forward-only backbone (a user's .onnx file) runs in a sandbox process with a timeout and a memory cap;
    convlens' own exports run in this process."""

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
        self.sandboxed = net.module is None
        self._graph: Any = None
        self.fixed_batch: int | None = None

        t0 = time.perf_counter()
        if self.sandboxed:
            self._init_sandboxed(net, precision)
            self._parity_pending = False
            self.meta["setup_s"] = round(time.perf_counter() - t0, 3)
            return
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
        self.session, self.provider, failures = make_session(
            path,
            providers,
            fp16=precision == "fp16",
            arena=False,  # pooled: shared by every caller
        )
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

    def _init_sandboxed(self, net: Backbone, precision: str) -> None:
        """A user's ONNX file: logits only, fp32, run in a sandbox process (timeout and memory cap)."""
        from .sandbox import MEMORY_VAR, TIMEOUT_VAR, SandboxedGraph

        if self.taps != ["logits"]:
            raise BadInput(
                f"{net.name!r} is an ONNX file: only the 'logits' tap is available, not {self.taps}"
            )
        if precision != "fp32":
            raise BadInput(
                f"precision {precision!r} is offered for convlens' own exports only; {net.name!r} is a "
                "user-supplied ONNX file, which convlens runs as it is, in its sandbox"
            )
        if net.onnx_path is None:
            raise BadInput(f"{net.name!r} has neither a torch module nor an ONNX file")
        self.path = Path(net.onnx_path)
        self._graph = SandboxedGraph(self.path, name=self.path.name)
        ishape = self._graph.inputs[0][1] if self._graph.inputs else []
        if ishape and isinstance(ishape[0], int) and ishape[0] > 0:  # a fixed batch: feed that many (padded)
            self.fixed_batch = int(ishape[0])
            self.batch_size = min(self.batch_size, self.fixed_batch)
            self.meta["batch_size"] = self.batch_size
        self.input_name = self._graph.inputs[0][0] if self._graph.inputs else "input"
        self.output_names = [n for n, _ in self._graph.outputs]
        self.provider = "CPUExecutionProvider"
        self.io_binding = False
        self.meta.update(
            provider=self.provider,
            provider_failures=[],
            onnx=str(self.path),
            io_binding=False,
            sandbox={"timeout_s": TIMEOUT_VAR, "max_mb": MEMORY_VAR},
        )

    def _record_cost(self, fp32_path: Any, held_out: np.ndarray) -> None:
        """Accuracy cost of a reduced-precision session against the fp32 graph on held-out packaged photos."""
        from .quantize import accuracy_cost
        from .session import make_session, run_session

        ref_sess, _, _ = make_session(fp32_path, ("CPUExecutionProvider",))
        ref = run_session(ref_sess, {"input": held_out}, f"{self.net.name} (fp32 reference)")
        got = run_session(
            self.session, {self.session.get_inputs()[0].name: held_out}, f"{self.net.name} ({self.precision})"
        )
        self.meta["accuracy_cost"] = accuracy_cost(ref, got, self.taps) | {"held_out_images": len(held_out)}
        self.meta["precision"] = self.precision

    def _forward_bound(self, x: np.ndarray) -> list[np.ndarray]:
        """One batch through IO binding: on CUDA the input goes from pinned host memory to the device
        asynchronously (torch) and outputs stay on the device until one copy back; elsewhere host OrtValues."""
        import onnxruntime as ort

        from .session import ort_error

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
        try:
            self.session.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - ORT's own exception types
            raise ort_error(e, f"running {self.net.name}") from None

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._graph is not None:
            return self._forward_sandboxed(x)
        if self.io_binding:
            outs = self._forward_bound(x)
        else:
            from .session import run_session

            outs = run_session(self.session, {self.input_name: x}, f"running {self.net.name}")
        if self._parity_pending:
            self._parity_pending = False
            self._check(x[:2], outs)
        return outs

    def _forward_sandboxed(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        if self.fixed_batch is not None and n < self.fixed_batch:  # pad to the graph's fixed batch, then cut
            pad = np.repeat(x[-1:], self.fixed_batch - n, axis=0)
            outs = self._graph.run(np.concatenate([x, pad]), self.output_names[:1])
            return [o[:n] if o.ndim and o.shape[0] == self.fixed_batch else o for o in outs]
        return self._graph.run(x, self.output_names[:1])

    def _check(self, x: np.ndarray, outs: list[np.ndarray]) -> None:
        compare_to_torch(self.net, self.taps, x, outs, self.meta)


def onnx_logits(net: Backbone, x: np.ndarray) -> np.ndarray:
    """The forward engine of a module-less backbone (an .onnx file): class scores of a preprocessed batch from
    the pooled ONNX Runtime runner, which runs a user's graph in its sandbox (`accel.load` injects this)."""
    return runner(net, ["logits"]).run(x)["logits"]


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
    ONNX Runtime runners are pooled (see `pool_info`); under "auto" an export that fails its parity check even
    after a rebuild falls back to torch with a warning, under "onnxruntime" it is refused (`ParityError`).
    """
    if precision != "fp32" and backend == "torch":
        raise BadInput("reduced precision is offered on the ONNX Runtime backend only")
    if backend not in ("auto", "torch", "onnxruntime", "ort"):
        raise BadInput(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        return TorchRunner(net, taps, batch_size)
    from .session import ort_available

    if backend in ("onnxruntime", "ort") or net.module is None:
        if not ort_available():
            raise BadInput("onnxruntime is not installed; use backend='torch'")
        return _cached_ort(net, taps, batch_size, providers, precision)
    if ort_available():
        try:
            return _cached_ort(net, taps, batch_size, providers, precision)
        except ParityError as e:
            warnings.warn(f"ONNX Runtime refused for {net.name} ({e}); using torch", stacklevel=2)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - export or session failure: torch still works
            warnings.warn(f"ONNX Runtime unavailable for {net.name} ({e}); using torch", stacklevel=2)
    return TorchRunner(net, taps, batch_size)


# ----------------------------------------------------------------------------------------------- the runner pool

_POOL: OrderedDict[tuple, OrtRunner] = OrderedDict()
_POOL_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}
_POOL_STATS = {"built": 0, "hits": 0, "evicted": 0, "rebuilt_exports": 0}
_REFUSED: OrderedDict[tuple, str] = OrderedDict()  # keys whose fresh export failed parity: not exported again


def pool_key(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None = None,
    providers: tuple[str, ...] | None = None,
    precision: str = "fp32",
) -> tuple:
    """What identifies a pooled runner: weights hash, taps and options (never the backbone object)."""
    return (net.weights_hash(), tuple(dict.fromkeys(taps)), batch_size, providers, precision)


def _cached_ort(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None,
    providers: tuple[str, ...] | None,
    precision: str,
) -> OrtRunner:
    """The pooled, parity-checked ONNX Runtime runner for (weights, taps, options): built once even when many
    threads ask at the same moment, shared by every copy of the same weights, least recently used dropped."""
    key = pool_key(net, taps, batch_size, providers, precision)
    with _POOL_LOCK:
        r = _POOL.get(key)
        if r is not None:
            _POOL.move_to_end(key)
            _POOL_STATS["hits"] += 1
            return r
        if key in _REFUSED:
            raise ParityError(_REFUSED[key])
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one builder per key; the others wait and take its runner
        with _POOL_LOCK:
            r = _POOL.get(key)
            if r is not None:
                _POOL.move_to_end(key)
                _POOL_STATS["hits"] += 1
                return r
        try:
            r = _build_ort(net, taps, batch_size, providers, precision)
        except ParityError as e:
            with _POOL_LOCK:
                _REFUSED[key] = str(e)
                while len(_REFUSED) > 4 * POOL_MAX:
                    _REFUSED.popitem(last=False)
            raise
        finally:
            with _POOL_LOCK:
                _KEY_LOCKS.pop(key, None)
        with _POOL_LOCK:
            _POOL[key] = r
            _POOL_STATS["built"] += 1
            while len(_POOL) > POOL_MAX:
                _POOL.popitem(last=False)
                _POOL_STATS["evicted"] += 1
        return r


def _build_ort(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None,
    providers: tuple[str, ...] | None,
    precision: str,
) -> OrtRunner:
    """A new runner, parity-checked; a cached export that fails the check is rebuilt once (with a warning)."""
    r = OrtRunner(net, taps, batch_size, providers, precision=precision)
    try:
        _parity_checked(r)
    except ParityError as e:
        from .export import export_backbone

        warnings.warn(
            f"the cached ONNX export of {net.name} failed its parity check ({e}); rebuilding it", stacklevel=4
        )
        export_backbone(net, r.taps, rebuild=True)
        with _POOL_LOCK:
            _POOL_STATS["rebuilt_exports"] += 1
        r = OrtRunner(net, taps, batch_size, providers, precision=precision)
        r.meta["rebuilt_export"] = True
        try:
            _parity_checked(r)
        except ParityError as e:  # a fresh export that disagrees is refused
            raise ParityError(f"{e}, also after rebuilding it; use backend='torch'") from None
    if r.net.module is not None:
        r.net = _detached(r.net)
    return r


def _detached(net: Backbone) -> Backbone:
    """A module-less view of `net` for a pooled runner after its parity check: preprocessing, name and shapes
    only, so the pool never keeps one caller's copy of the weights alive."""
    view = copy.copy(net)
    view.module = None
    return view


def _parity_checked(r: OrtRunner) -> OrtRunner:
    """Run the parity check now on a real-looking input, so a bad export is refused before any result is used."""
    if r._parity_pending:
        g = torch.Generator().manual_seed(0)
        x01 = torch.rand(2, 3, r.net.pre.size, r.net.pre.size, generator=g)
        r._forward(r.net.normalize(x01).numpy())
    return r


def pool_info() -> dict[str, Any]:
    """The pool's size and counters (runners built, hits, evictions, exports rebuilt after a parity failure)."""
    with _POOL_LOCK:
        return {"size": len(_POOL), "max": POOL_MAX, **_POOL_STATS}


def clear_pool() -> None:
    """Drop every pooled runner (their sessions close when no caller holds them)."""
    with _POOL_LOCK:
        _POOL.clear()
        _REFUSED.clear()
