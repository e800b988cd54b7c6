"""The unit of work of a dataset job: a shard of the sorted inputs, turned into Parquet bytes by a ShardWorker.

embed and max_patches push the whole shard through one batched runner (ONNX Runtime by default); max_patches
keeps its per-channel top-k with the max_patches method's own `TopK`. explain calls the registered method
through `accel.run` for every image, with the job's validated parameters, so each map is exactly the one
`accel.run(method, net, img, **params)` gives. The same worker serves the local engine and every Ray actor.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput, ResourceLimit
from ..registry import Observer
from .config import JobConfig
from .inputs import Inputs, read_image
from .manifest import fixed_list, table_bytes

if TYPE_CHECKING:
    from ..runtime.runner import Runner
    from ..zoo import Backbone


@dataclass
class Shard:
    """One unit of work: images [first, first + len(paths)) of the sorted input list."""

    index: int
    first: int
    paths: list[str]
    labels: list[int]


def plan_shards(inputs: Inputs, shard_size: int) -> list[Shard]:
    """Cut the sorted input list into shards of `shard_size` (the last may be shorter); deterministic."""
    return [
        Shard(k, s, inputs.paths[s : s + shard_size], inputs.labels[s : s + shard_size])
        for k, s in enumerate(range(0, len(inputs), shard_size))
    ]


def load_model(model: str, arch: str | None) -> Backbone:
    """The backbone named `model` (zoo name, torchvision name or file) as `accel.load` gives it, loader
    warnings silenced: what the driver and every Ray actor load."""
    from .. import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(model, arch=arch)


def default_threads() -> int:
    """Threads for this process: CONVLENS_THREADS if set, else the usable cores."""
    from ..runtime.session import default_threads as threads

    return threads()


def limit_session_threads(r: Any, threads: int) -> None:
    """Restart an ONNX Runtime runner's CPU session with `threads` intra-op threads (a Ray actor owns only its
    share of the cores); torch runners use torch.set_num_threads instead."""
    if getattr(r, "backend", None) != "onnxruntime" or getattr(r, "provider", None) != "CPUExecutionProvider":
        return
    from ..runtime.session import make_session

    r.session, r.provider, _ = make_session(r.path, ("CPUExecutionProvider",), threads=threads)


def _error_text(e: Exception) -> str:
    """What an errors.json entry says about one image that could not be decoded or explained."""
    return str(e) if isinstance(e, (BadInput, ResourceLimit)) else f"{type(e).__name__}: {e}"


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (embed's predicted class and its probability)."""
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class ShardWorker:
    """Turns shards into Parquet bytes: owns the backbone, the job's settings and, for embed and max_patches,
    one runner (ONNX Runtime by default). `threads` (a Ray actor's share of the cores) is applied explicitly."""

    def __init__(self, cfg: dict[str, Any], threads: int | None = None, net: Backbone | None = None) -> None:
        self.cfg = JobConfig(**cfg)
        if threads:  # a Ray actor's share of the cores, passed on explicitly (never through os.environ)
            import torch

            torch.set_num_threads(int(threads))
        self.threads = int(threads) if threads else default_threads()
        self.net = net if net is not None else load_model(self.cfg.model, self.cfg.arch)
        self.runner: Runner | None = None
        self.backend = "method"  # explain: each result names its own backend (see process)
        if self.cfg.job != "explain":
            from ..runtime.runner import runner

            taps = [self.cfg.layer]
            if self.cfg.job == "embed" and self.net.has_head:
                taps.append("logits")
            self.runner = runner(self.net, taps, backend=self.cfg.backend, batch_size=self.cfg.batch_size)
            if threads:
                limit_session_threads(self.runner, int(threads))
            self.backend = self.runner.backend

    def process(self, shard: Shard, observer: Observer | None = None) -> dict[str, Any]:
        """One shard -> {'shard', 'payload' (Parquet bytes), 'rows', 'errors', 'seconds'}. `observer` hears the
        progress inside an explain shard (0..1), from the method itself."""
        t0 = time.perf_counter()
        if self.cfg.job == "explain":
            ok, errors, cols = self._explain(shard, observer)
        else:
            x, ok, errors = self.decode(shard)
        meta: dict[str, Any] = {"job": self.cfg.job, "shard": shard.index, "backend": self.backend}
        if self.cfg.job == "explain":
            meta.update(height=int(self.net.input_shape[1]), width=int(self.net.input_shape[2]))
        index = np.asarray([shard.first + i for i in ok], np.int64)
        paths = [shard.paths[i] for i in ok]
        labels = np.asarray([shard.labels[i] for i in ok], np.int64)
        base = {"index": index, "path": paths, "label": labels}
        if self.cfg.job == "embed":
            cols = base | self._embed(x)
        elif self.cfg.job == "max_patches":
            cols, meta["stats"] = self._max_patches(x, index, paths, labels)
        else:
            cols = base | cols
        return {
            "shard": shard.index,
            "payload": table_bytes(cols, meta),
            "rows": len(ok),
            "errors": errors,
            "seconds": round(time.perf_counter() - t0, 4),
        }

    # -- embed and max_patches: one batched forward pass ------------------------------------------------------
    def decode(self, shard: Shard) -> tuple[np.ndarray, list[int], list[list[str]]]:
        """Preprocessed batch of the readable images, their positions in the shard, and the errors."""
        import torch

        def one(p: str) -> tuple[Any, str | None]:
            """(the image as a 0..1 tensor, None), or (None, why it cannot be read)."""
            try:
                return self.net.to_tensor01(read_image(p)), None
            except Exception as e:  # noqa: BLE001 - one odd file never ends a dataset job
                return None, _error_text(e)

        with ThreadPoolExecutor(max(1, min(4, self.threads))) as ex:
            got = list(ex.map(one, shard.paths))
        ok = [i for i, (v, _) in enumerate(got) if v is not None]
        errors = [[shard.paths[i], err] for i, (_, err) in enumerate(got) if err is not None]
        if not ok:
            return np.zeros((0, *self.net.input_shape), np.float32), ok, errors
        with torch.no_grad():
            x01 = torch.cat([got[i][0] for i in ok])
            x = self.net.normalize(x01).numpy().astype(np.float32, copy=False)
        return x, ok, errors

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The runner's taps for batch `x` (an empty batch still gives each output's width)."""
        assert self.runner is not None
        if len(x):
            return self.runner.run(x)
        zero = np.zeros((1, *self.net.input_shape), np.float32)
        return {k: v[:0] for k, v in self.runner.run(zero).items()}

    def _embed(self, x: np.ndarray) -> dict[str, Any]:
        """Embedding columns: the tap as one vector per image (spatial maps averaged), and for classifiers the
        predicted class with its probability."""
        import pyarrow as pa

        out = self._forward(x)
        e = out[self.cfg.layer]
        if e.ndim == 4:
            e = e.mean((2, 3))
        cols: dict[str, Any] = {"embedding": fixed_list(e.reshape(len(e), -1))}
        if "logits" in out:
            p = _softmax(out["logits"])
            cols["pred"] = pa.array(p.argmax(1).astype(np.int64))
            cols["prob"] = pa.array(p.max(1).astype(np.float32))
        return cols

    def _max_patches(
        self, x: np.ndarray, index: np.ndarray, paths: list[str], labels: np.ndarray
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per channel, the shard's top-k images by their strongest unit (the max_patches method's TopK: ties
        keep the lower index) and the moments of every image's maximum, for the global merge."""
        from ..methods.inspect.max_patches import TopK

        acts = self._forward(x)[self.cfg.layer]
        n, c = acts.shape[:2]
        w = acts.shape[3]
        top = TopK(self.cfg.k, int(c))
        if n:  # a shard of unreadable files has no candidates, only its (zero) moments
            top.update(acts, [str(r) for r in range(n)])  # ids: the rows of this batch
        rows = top.ids.astype(np.int64).reshape(-1)  # channel-major
        chans = np.repeat(np.arange(c), top.ids.shape[1])
        pos = top.pos.reshape(-1)
        cols = {
            "channel": chans.astype(np.int32),
            "score": top.vals.reshape(-1).astype(np.float32),
            "index": index[rows],
            "path": [paths[r] for r in rows],
            "label": labels[rows],
            "i": (pos // w).astype(np.int32),
            "j": (pos % w).astype(np.int32),
        }
        stats = {
            "n": int(n),
            "channels": int(c),
            "s1": top.s1.tolist(),
            "s2": top.s2.tolist(),
            "active": top.active.astype(int).tolist(),
        }
        return cols, stats

    # -- explain: the registered method, image by image -------------------------------------------------------
    def _explain(
        self, shard: Shard, observer: Observer | None
    ) -> tuple[list[int], list[list[str]], dict[str, Any]]:
        """accel.run(method, net, img, **params) for each readable image: its map, the class it explains and
        that class's probability (-1 and NaN when the method explains no class). An image that cannot be read,
        or that the method refuses, is listed in the errors, never fatal."""
        import pyarrow as pa

        from ..registry import run

        _, h, w = self.net.input_shape
        ok: list[int] = []
        errors: list[list[str]] = []
        maps: list[np.ndarray] = []
        targets: list[int] = []
        scores: list[float] = []
        backends: set[str] = set()
        n = len(shard.paths)
        for i, p in enumerate(shard.paths):
            try:
                img = read_image(p)
            except Exception as e:  # noqa: BLE001 - one odd file never ends a dataset job
                errors.append([p, _error_text(e)])
                continue
            try:
                res = run(self.cfg.method, self.net, img, observer=_part(observer, i, n), **self.cfg.params)
            except (BadInput, ResourceLimit) as e:  # this image only: the parameters passed the trial run
                errors.append([p, _error_text(e)])
                continue
            a = np.asarray(res.data, np.float32)
            if a.shape != (h, w):
                raise RuntimeError(f"{self.cfg.method} returned a {a.shape} map, expected {(h, w)}")
            tmeta = res.meta.get("target") or {}
            ok.append(i)
            maps.append(a.reshape(-1))
            targets.append(int(tmeta.get("index", -1)))
            scores.append(float(tmeta.get("probability", np.nan)))
            backends.add(str(res.meta.get("backend", "torch")))
        if backends:
            self.backend = ",".join(sorted(backends))
        cols = {
            "target": pa.array(np.asarray(targets, np.int64)),
            "score": pa.array(np.asarray(scores, np.float32)),
            "map": fixed_list(np.stack(maps) if maps else np.zeros((0, h * w), np.float32)),
        }
        return ok, errors, cols


def _part(observer: Observer | None, i: int, n: int) -> Observer | None:
    """The observer of image `i` of `n` in a shard: its progress mapped onto that image's share."""
    return None if observer is None else observer.span(i / n, (i + 1) / n)
