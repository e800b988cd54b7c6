"""The forward definition and the batched Runner base: `forward_taps` (what every runner computes), batch checks
and sizing, `Runner` (chunking, halving the batch on an allocation failure, pass counts per thread, sweeps) and
`TorchRunner`, the PyTorch eager implementation that is also the parity reference of the ONNX Runtime one.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import settings
from ..errors import BadInput, ResourceLimit
from ..taps import capture
from .sweep import Perturbation

if TYPE_CHECKING:
    from ..backbone import Backbone

Progress = Callable[[float, str], None]


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
    """A float32 (N, C, H, W) input batch from images, a tensor or an array, checked for shape and finiteness."""
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
    """Whether an error is an allocation failure (the runner then halves its batch)."""
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
        """Add `n` passes to the running total (shared between threads)."""
        with self._count_lock:
            self.passes += n

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        """One chunk through the backend: one array per tap, batch first."""
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
