"""Dataset-scale jobs (embed, explain, max_patches) that run locally or on a Ray cluster with identical outputs.

The input (an image folder, a text list of paths/URIs, or a Parquet manifest with a `path` column) is sorted and cut
into fixed-size shards. Each shard is decoded with `accel.open_image` semantics (unreadable files are listed in the
output, never fatal), pushed through one runner and written atomically as a Parquet file that `manifest.json`
records with its size and SHA-256; a restarted job verifies and skips finished shards, every reader verifies each
shard before parsing it (a damaged or missing one is named, never returned), and `convlens job verify` /
`convlens job repair` check an output and recompute exactly its damaged shards. The local engine (the default) never
imports Ray. The Ray engine maps the very same shard function over a Ray Data actor pool (one ONNX Runtime session
per actor, one GPU per actor when the cluster has GPUs) and the driver writes what the actors return, so `--out`
needs no shared disk. Jobs: `embed` (embedding, label, path, prediction), `explain` (occlusion or Grad-CAM maps),
`max_patches` (per-shard top-k per channel, merged into a global top-k with each unit's receptive-field box).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import settings
from .errors import BadInput, ResourceLimit

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL import Image

    from .zoo import Backbone

__all__ = [
    "JOBS",
    "ENGINES",
    "JobConfig",
    "Inputs",
    "list_inputs",
    "read_image",
    "run_job",
    "open_job_output",
    "verify_job_output",
    "repair_job_output",
    "JobOutputDamaged",
    "crop_patch",
    "make_crop_folder",
    "bench_jobs",
    "add_job_parser",
    "cmd_job",
    "main",
]

JOBS: tuple[str, ...] = ("embed", "explain", "max_patches")
ENGINES: tuple[str, ...] = ("local", "ray")
FORMAT = "convlens-job/1"
MANIFEST = "manifest.json"
ERRORS = "errors.json"
SHARD_DIR = "shards"
MERGED = (
    "max_patches.parquet",
    "channels.parquet",
)  # max_patches: merged outputs, recorded with their SHA-256
MAX_URI_BYTES = 256 * 2**20  # refuse remote objects larger than this before decoding
Progress = Callable[[float, str], None] | None
_URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Inputs:
    """The job's images: sorted unique paths/URIs, labels (-1 = unknown) and class names (None if unlabelled)."""

    source: str
    paths: list[str]
    labels: list[int]
    classes: list[str] | None = None
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def sha256(self) -> str:
        """Fingerprint of the listing (paths and labels), so a resumed job knows its inputs did not change."""
        h = hashlib.sha256()
        for p, lab in zip(self.paths, self.labels):
            h.update(f"{p}\t{lab}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def _is_uri(s: str) -> bool:
    return bool(_URI_RE.match(s)) and not s.lower().startswith("file://")


def _local(s: str) -> str:
    return s[7:] if s.lower().startswith("file://") else s


def _image_exts() -> frozenset[str]:
    """Every extension `open_image` decodes (one list for dataset folders and job inputs)."""
    from .images import image_extensions

    return image_extensions()


def _folder_inputs(root: Path) -> tuple[list[str], list[str | None]]:
    """Image files under `root`, recursively (hidden entries skipped); class = the top-level subfolder, if any."""
    exts = _image_exts()
    paths: list[str] = []
    names: list[str | None] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        cls = rel.parts[0] if rel.parts else None
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in exts:
                paths.append(os.path.abspath(os.path.join(dirpath, f)))
                names.append(cls)
    return paths, names


def _text_inputs(path: Path) -> tuple[list[str], list[str | None]]:
    """One path or URI per line, optionally `<TAB>label`; blank lines and `#` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(
            f"{str(path)!r} is not a UTF-8 text list; the job input must be an image folder, a text file with one "
            "path or URI per line, or a .parquet manifest with a 'path' column"
        ) from None
    base = path.parent
    paths: list[str] = []
    names: list[str | None] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p, _, lab = line.partition("\t")
        p = p.strip()
        if not _is_uri(p):
            p = os.path.abspath(os.path.join(base, os.path.expanduser(_local(p))))
        paths.append(p)
        names.append(lab.strip() or None)
    return paths, names


def _parquet_inputs(path: Path) -> tuple[list[str], list[str | None]]:
    """A Parquet manifest: a `path` column (paths or URIs) and an optional `label` column (int or class name)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise BadInput(f"{str(path)!r}: not a readable Parquet manifest ({e})") from None
    if "path" not in t.column_names:
        raise BadInput(f"{str(path)!r}: the Parquet manifest needs a 'path' column (has {t.column_names})")
    base = path.parent
    raw = [str(p) if p is not None else "" for p in t.column("path").to_pylist()]
    paths = [p if _is_uri(p) else os.path.abspath(os.path.join(base, _local(p))) for p in raw if p]
    if "label" in t.column_names:
        labs = t.column("label").to_pylist()
        names = [None if v is None else str(v) for p, v in zip(raw, labs) if p]
    else:
        names = [None] * len(paths)
    return paths, names


def list_inputs(source: str | os.PathLike[str], limit: int | None = None) -> Inputs:
    """The sorted, de-duplicated image list of a folder, a text list or a Parquet manifest (first `limit` kept)."""
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise BadInput(f"limit must be a positive number of images, got {limit!r}")
    s = os.fspath(source)
    if _is_uri(s):
        raise BadInput(
            f"{s!r}: the job input must be a local folder, text list or Parquet manifest; URIs go inside the list"
        )
    p = Path(_local(s)).expanduser()
    if p.is_dir():
        paths, names = _folder_inputs(p)
    elif p.is_file():
        if p.suffix.lower() in (".parquet", ".pq"):
            paths, names = _parquet_inputs(p)
        elif p.suffix.lower() in _image_exts():
            raise BadInput(
                f"{s!r} is a single image; jobs take a folder, a text list or a Parquet manifest "
                "(use `convlens explain` for one image)"
            )
        else:
            paths, names = _text_inputs(p)
    else:
        raise BadInput(
            f"job input {s!r} does not exist (expected a folder, a .txt list or a .parquet manifest)"
        )
    # class names -> indices: integer labels stay integers, names are numbered in sorted order
    given = sorted({n for n in names if n is not None})
    if given and all(re.fullmatch(r"-?\d+", n) for n in given):
        classes = None
        labels = [int(n) if n is not None else -1 for n in names]
    else:
        classes = given or None
        index = {n: i for i, n in enumerate(given)}
        labels = [index[n] if n is not None else -1 for n in names]
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    seen: set[str] = set()
    out_p: list[str] = []
    out_l: list[int] = []
    for i in order:
        if paths[i] in seen:
            continue
        seen.add(paths[i])
        out_p.append(paths[i])
        out_l.append(labels[i])
    dups = len(paths) - len(out_p)
    if limit is not None:
        out_p, out_l = out_p[: int(limit)], out_l[: int(limit)]
    if not out_p:
        raise BadInput(f"no images found in {s!r} (extensions: {', '.join(sorted(_image_exts()))})")
    return Inputs(str(p.resolve()), out_p, out_l, classes, dups)


def read_image(uri: str) -> Image.Image:
    """Open a local path, file://, http(s):// or any pyarrow filesystem URI (s3://, gs://, hdfs://) as RGB."""
    from .images import open_image

    if not _is_uri(uri):
        return open_image(_local(uri))
    scheme = uri.split("://", 1)[0].lower()
    try:
        if scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(uri, timeout=30) as r:  # noqa: S310 - scheme checked above
                data = r.read(MAX_URI_BYTES + 1)
        else:
            from pyarrow import fs as pafs

            filesystem, path = pafs.FileSystem.from_uri(uri)
            with filesystem.open_input_stream(path) as f:
                data = f.read(MAX_URI_BYTES + 1)
    except Exception as e:  # noqa: BLE001 - network and filesystem errors of every kind
        raise BadInput(f"{uri!r}: cannot be fetched ({type(e).__name__}: {e})") from None
    if len(data) > MAX_URI_BYTES:
        raise ResourceLimit(f"{uri!r}: larger than {MAX_URI_BYTES >> 20} MiB; refused before decoding")
    return open_image(bytes(data))


# ------------------------------------------------------------------------------------------------------ config


@dataclass
class JobConfig:
    """Everything that decides a job's output (its fingerprint); engine and concurrency are not part of it."""

    job: str
    model: str
    arch: str | None = None
    backend: str = "onnxruntime"
    batch_size: int = 64
    shard_size: int = 256
    layer: str = ""  # embed: tap ('' = the embedding); max_patches: layer ('' = CAM / last spatial layer)
    k: int = 9  # max_patches: patches per channel
    method: str = "occlusion"  # explain: occlusion or a registered attribution method (gradcam, ...)
    target: int | None = None  # explain: class index (None = the predicted class)
    window: int = 0  # explain/occlusion: window side (0 = input/7)
    stride: int = 0  # explain/occlusion: stride (0 = window/2)

    def check(self) -> None:
        """BadInput for values no job can run with."""
        if self.job not in JOBS:
            raise BadInput(f"unknown job {self.job!r}; choose one of {', '.join(JOBS)}")
        if self.backend not in ("onnxruntime", "torch", "auto"):
            raise BadInput(f"backend must be 'onnxruntime', 'torch' or 'auto', got {self.backend!r}")
        for name, lo, hi in (("batch_size", 1, 4096), ("shard_size", 1, 1_000_000), ("k", 1, 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BadInput(f"{name} must be a whole number in {lo}..{hi}, got {v!r}")
        for name in ("window", "stride"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"{name} must be >= 0 pixels (0 = automatic), got {v!r}")
        if self.target is not None and (isinstance(self.target, bool) or int(self.target) < 0):
            raise BadInput(f"target must be a class index >= 0, got {self.target!r}")

    def resolve(self, net: Backbone) -> JobConfig:
        """A copy with every automatic value decided for `net` (layer, window), validated against the model."""
        self.check()
        c = JobConfig(**asdict(self))
        if c.job == "embed":
            if c.layer in ("", "embedding"):
                c.layer = "embedding"
                if not net.embedding_layer:
                    raise BadInput(
                        f"{net.name!r} declares no embedding layer; pass --layer with a layer name"
                    )
            else:
                net.layer(c.layer)
        elif c.job == "max_patches":
            from .methods.inspect._common import default_activation_layer, spatial_layer

            c.layer = spatial_layer(net, c.layer, default_activation_layer(net), "max_patches").name
            if net.layer(c.layer).rf is None:
                raise BadInput(
                    f"max_patches: layer {c.layer!r} has no receptive field to crop; pick a conv layer"
                )
        else:
            if not net.has_head:
                raise BadInput(f"explain needs class scores, but {net.name!r} has no classifier head")
            net.check_target(c.target)
            _, h, w = net.input_shape
            if c.method == "occlusion":
                c.window = c.window or max(1, min(h, w) // 7)
                c.stride = c.stride or max(1, c.window // 2)
                if c.window > min(h, w):
                    raise BadInput(
                        f"occlusion window {c.window} is larger than the {h}x{w} input of {net.name!r}"
                    )
            else:
                spec = _method_spec(c.method)
                if spec.family != "attribute":
                    raise BadInput(
                        f"explain runs attribution methods; {c.method!r} is a {spec.family} method"
                    )
                if spec.needs_grad and not net.differentiable:
                    raise BadInput(f"{c.method} needs gradients; {net.name!r} is forward-only")
                c.window = c.stride = 0
            c.layer = ""
        return c


def _method_spec(name: str) -> Any:
    """The registry spec for `name`, importing `accel.methods.<family>.<name>` directly if discovery missed it."""
    import importlib

    from . import registry

    try:
        return registry.get(name)
    except BadInput:
        for fam in registry.FAMILIES:
            try:
                importlib.import_module(f"accel.methods.{fam}.{name}")
            except ModuleNotFoundError:
                continue
        return registry.get(name)


# ------------------------------------------------------------------------------------------------------ shards


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


def _shard_name(job: str, k: int) -> str:
    return f"{SHARD_DIR}/{job}-{k:05d}.parquet"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _fixed_list(a: np.ndarray) -> pa.Array:
    """(N, D) float32 -> Arrow fixed_size_list<float32>[D] (keeps the width even when N is 0)."""
    import pyarrow as pa

    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), int(a.shape[1]))


def _table_bytes(cols: dict[str, Any], meta: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table(cols)
    t = t.replace_schema_metadata({b"convlens": json.dumps(meta, sort_keys=True).encode()})
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


class ShardWorker:
    """Turns shards into Parquet bytes: owns the backbone, one runner (ONNX Runtime by default) and the settings."""

    def __init__(self, cfg: dict[str, Any], threads: int | None = None, net: Backbone | None = None) -> None:
        from .zoo import load

        self.cfg = JobConfig(**cfg)
        if threads:  # a Ray actor's share of the cores, passed on explicitly (never through os.environ)
            import torch

            torch.set_num_threads(int(threads))
        self.threads = int(threads) if threads else _threads()
        if net is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = load(self.cfg.model, arch=self.cfg.arch)
        self.net = net
        c = self.cfg
        net = self.net
        if c.job == "embed":
            taps = [c.layer] + (["logits"] if net.has_head else [])
        elif c.job == "max_patches":
            taps = [c.layer]
        else:
            taps = ["logits"]
        from .runtime.runner import runner

        self.runner = runner(net, taps, backend=c.backend, batch_size=c.batch_size)
        if threads:
            _limit_session_threads(self.runner, int(threads))
        self.backend = self.runner.backend

    # -- decoding ----------------------------------------------------------------------------------------------
    def decode(self, shard: Shard) -> tuple[np.ndarray, list[int], list[list[str]], list[Image.Image]]:
        """Preprocessed batch of the readable images, their positions in the shard, errors, and the PIL images."""
        import torch

        def one(p: str) -> tuple[Any, str | None]:
            try:
                img = read_image(p)
                return (img, self.net.to_tensor01(img)), None
            except (BadInput, ResourceLimit) as e:
                return None, str(e)
            except Exception as e:  # noqa: BLE001 - one odd file never ends a dataset job
                return None, f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(max(1, min(4, self.threads))) as ex:
            got = list(ex.map(one, shard.paths))
        ok = [i for i, (v, _) in enumerate(got) if v is not None]
        errors = [[shard.paths[i], err] for i, (_, err) in enumerate(got) if err is not None]
        imgs = [got[i][0][0] for i in ok]  # type: ignore[index]
        if ok:
            with torch.no_grad():
                x01 = torch.cat([got[i][0][1] for i in ok])  # type: ignore[index]
                x = self.net.normalize(x01).numpy().astype(np.float32, copy=False)
        else:
            x = np.zeros((0, *self.net.input_shape), np.float32)
        return x, ok, errors, imgs

    # -- the three jobs ----------------------------------------------------------------------------------------
    def process(self, shard: Shard) -> dict[str, Any]:
        """One shard -> {'shard', 'payload' (Parquet bytes), 'rows', 'errors', 'seconds'}."""
        t0 = time.perf_counter()
        x, ok, errors, imgs = self.decode(shard)
        index = np.asarray([shard.first + i for i in ok], np.int64)
        paths = [shard.paths[i] for i in ok]
        labels = np.asarray([shard.labels[i] for i in ok], np.int64)
        base = {"index": index, "path": paths, "label": labels}
        meta: dict[str, Any] = {"job": self.cfg.job, "shard": shard.index, "backend": self.backend}
        if self.cfg.job == "embed":
            cols = base | self._embed(x)
        elif self.cfg.job == "max_patches":
            cols, meta["stats"] = self._max_patches(x, index, paths, labels)
        else:
            cols = base | self._explain(x, imgs)
            meta.update(height=int(self.net.input_shape[1]), width=int(self.net.input_shape[2]))
        payload = _table_bytes(cols, meta)
        return {
            "shard": shard.index,
            "payload": payload,
            "rows": len(ok),
            "errors": errors,
            "seconds": round(time.perf_counter() - t0, 4),
        }

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x):
            return self.runner.run(x)
        zero = np.zeros((1, *self.net.input_shape), np.float32)  # learn the output widths for an empty shard
        return {k: v[:0] for k, v in self.runner.run(zero).items()}

    def _embed(self, x: np.ndarray) -> dict[str, Any]:
        import pyarrow as pa

        out = self._forward(x)
        e = out[self.cfg.layer]
        if e.ndim == 4:
            e = e.mean((2, 3))
        cols: dict[str, Any] = {"embedding": _fixed_list(e.reshape(len(e), -1))}
        if "logits" in out:
            p = _softmax(out["logits"])
            cols["pred"] = pa.array(p.argmax(1).astype(np.int64))
            cols["prob"] = pa.array(p.max(1).astype(np.float32))
        return cols

    def _max_patches(
        self, x: np.ndarray, index: np.ndarray, paths: list[str], labels: np.ndarray
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per channel, the shard's top-k images by their strongest unit (ties: lower index first) + moments."""
        acts = self._forward(x)[self.cfg.layer]
        n, c = acts.shape[:2]
        w = acts.shape[3]
        flat = acts.reshape(n, c, -1)
        pos = flat.argmax(2)  # (n, C): first maximal position
        val = np.take_along_axis(flat, pos[..., None], 2)[..., 0].astype(np.float32)
        k = min(self.cfg.k, n)
        order = np.argsort(-val, axis=0, kind="stable")[:k]  # (k, C) image rows per channel
        ch = np.broadcast_to(np.arange(c), order.shape)
        rows = order.T.reshape(-1)  # channel-major
        chans = ch.T.reshape(-1)
        p = pos[rows, chans]
        cols = {
            "channel": np.asarray(chans, np.int32),
            "score": val[rows, chans].astype(np.float32),
            "index": index[rows],
            "path": [paths[r] for r in rows],
            "label": labels[rows],
            "i": (p // w).astype(np.int32),
            "j": (p % w).astype(np.int32),
        }
        stats = {
            "n": int(n),
            "channels": int(c),
            "s1": val.sum(0, dtype=np.float64).tolist(),
            "s2": np.square(val, dtype=np.float64).sum(0).tolist(),
            "active": (val > 0).sum(0).astype(int).tolist(),
        }
        return cols, stats

    def _explain(self, x: np.ndarray, imgs: list[Image.Image]) -> dict[str, Any]:
        _, h, w = self.net.input_shape
        logits = self._forward(x)["logits"]
        probs = _softmax(logits)
        n = len(x)
        targets = np.full(n, self.cfg.target, np.int64) if self.cfg.target is not None else probs.argmax(1)
        maps = np.zeros((n, h * w), np.float32)
        if self.cfg.method == "occlusion":
            from .methods.attribute.occlusion import per_pixel
            from .runtime.sweep import Occlusion

            occ = Occlusion(h, w, (self.cfg.window,) * 2, (self.cfg.stride,) * 2, baseline=0.0)
            for m in range(n):
                t = int(targets[m])
                scores = self.runner.sweep(
                    x[m : m + 1], occ, reduce=lambda o, t=t: _softmax(o["logits"])[:, t]
                )
                drops = (probs[m, t] - np.asarray(scores, np.float64)).astype(np.float32)
                maps[m] = per_pixel(occ, drops).reshape(-1)
        else:
            from .registry import run

            _method_spec(self.cfg.method)
            for m in range(n):
                res = run(self.cfg.method, self.net, imgs[m], target=int(targets[m]))
                a = np.asarray(res.data, np.float32)
                if a.shape != (h, w):
                    raise RuntimeError(f"{self.cfg.method} returned a {a.shape} map, expected {(h, w)}")
                maps[m] = a.reshape(-1)
        import pyarrow as pa

        return {
            "target": pa.array(targets.astype(np.int64)),
            "score": pa.array(
                probs[np.arange(n), targets].astype(np.float32) if n else np.zeros(0, np.float32)
            ),
            "map": _fixed_list(maps),
        }


def _threads() -> int:
    """Threads for this process: CONVLENS_THREADS if set, else the usable cores."""
    n = settings.get("CONVLENS_THREADS")
    if n:
        return int(n)
    from .runtime.session import default_threads

    return default_threads()


def _limit_session_threads(r: Any, threads: int) -> None:
    """Restart an ONNX Runtime runner's CPU session with `threads` intra-op threads (a Ray actor owns only its
    share of the cores); torch runners use torch.set_num_threads instead."""
    if getattr(r, "backend", None) != "onnxruntime" or getattr(r, "provider", None) != "CPUExecutionProvider":
        return
    from .runtime.session import make_session

    r.session, r.provider, _ = make_session(r.path, ("CPUExecutionProvider",), threads=threads)


# ------------------------------------------------------------------------------------------------------ files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of it; a full disk or
    a read-only folder becomes a BadInput naming the file (and no temporary is left behind)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BadInput(
            f"cannot write {path} ({e.strerror or type(e).__name__}); free some space or choose another --out"
        ) from None


def _clean_temporaries(out: Path) -> list[str]:
    """Remove the temporaries (`.<name>.<pid>[-<thread>].tmp`) a killed job left in OUT and OUT/shards. Only
    called while holding OUT's lock, so no live writer owns any of them. Returns their names."""
    gone = []
    for folder in (out, out / SHARD_DIR):
        for f in folder.glob(".*.tmp"):
            try:
                f.unlink()
                gone.append(f.name)
            except FileNotFoundError:
                pass
    return sorted(gone)


def _prepare_out(out: Path) -> None:
    """Check OUT before any work starts: a folder (or one that can be made) that takes new files."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} exists and is not a folder; choose a folder for the job output")
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}-{threading.get_ident()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BadInput(
            f"cannot write the job output in {str(out)!r} ({e.strerror or type(e).__name__}); "
            "choose a writable --out with free space"
        ) from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """OUT's manifest, checked field by field (it is the root every shard is verified against), or None."""
    p = out / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise BadInput(f"{p}: cannot read the job manifest ({e.strerror or type(e).__name__})") from None
    except (ValueError, RecursionError):
        raise BadInput(
            f"{p}: the job manifest is not valid JSON (damaged); rerun the job with --overwrite"
        ) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise BadInput(
            f"{p}: not a convlens job manifest (format {fmt if isinstance(fmt, str) else '?'!r}, "
            f"expected {FORMAT!r})"
        )
    _check_manifest(m, p)
    return m


_SHA_RE = re.compile(r"[0-9a-f]{64}")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_manifest(m: dict[str, Any], p: Path) -> None:
    """BadInput naming the first field of a manifest that does not have the shape convlens writes."""

    def bad(what: str) -> BadInput:
        return BadInput(f"{p}: the job manifest is damaged ({what}); rerun the job with --overwrite")

    job = m.get("job")
    if job not in JOBS:
        raise bad("unknown job")
    for key in ("config", "model", "inputs", "shards"):
        if not isinstance(m.get(key), dict):
            raise bad(f"{key!r} is missing or not an object")
    num = m.get("num_shards")
    if not _is_count(num):
        raise bad("'num_shards' is not a count")
    if m.get("status") not in (None, "running", "complete"):
        raise bad("unknown 'status'")
    shape = m["model"].get("input_shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(_is_count(v) and 0 < v <= 1 << 16 for v in shape)
    ):
        raise bad("'model.input_shape' is not three sizes")
    classes = m["inputs"].get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("'inputs.classes' is not a list of names")
    if job == "max_patches":
        k, layer = m["config"].get("k"), m["config"].get("layer")
        if not (_is_count(k) and 1 <= k <= 1024) or not isinstance(layer, str):
            raise bad("'config.k' or 'config.layer' is invalid")
    for key, rec in m["shards"].items():
        if not re.fullmatch(r"[0-9]{1,9}", key) or int(key) >= num:
            raise bad(f"shard key {key[:20]!r} is not one of the {num} shards")
        if not isinstance(rec, dict):
            raise bad(f"shard {key} is not an object")
        if rec.get("file") != _shard_name(job, int(key)):
            raise bad(f"shard {key} names an unexpected file")
        if not all(_is_count(rec.get(f)) for f in ("bytes", "count", "rows", "first")):
            raise bad(f"shard {key} has invalid sizes")
        if not isinstance(rec.get("sha256"), str) or not _SHA_RE.fullmatch(rec["sha256"]):
            raise bad(f"shard {key} has no valid SHA-256")
        errs = rec.get("errors")
        if not isinstance(errs, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in errs
        ):
            raise bad(f"shard {key} has an invalid error list")
    files = m.get("output_files", {})
    if not isinstance(files, dict) or not all(
        k in MERGED and isinstance(v, dict) and _is_count(v.get("bytes")) and isinstance(v.get("sha256"), str)
        for k, v in files.items()
    ):
        raise bad("'output_files' is invalid")


class _Lock:
    """An exclusive advisory lock on OUT/.lock so two jobs never write the same output (released by the kernel
    if the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise BadInput(
                f"another convlens job is writing to {self.path.parent}; wait for it or choose another --out"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _verified(out: Path, rec: dict[str, Any]) -> bool:
    """Whether a recorded file is still on disk, byte for byte (size and SHA-256)."""
    return _file_problem(out, rec) is None


def _file_problem(out: Path, rec: dict[str, Any], keep: list[bytes] | None = None) -> str | None:
    """None if OUT/rec['file'] has the recorded size and SHA-256, else what is wrong. Reads the file once; with
    `keep`, its verified bytes are appended there (so the caller parses exactly what was hashed)."""
    p = out / rec.get("file", "")
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if size != rec.get("bytes"):
        return f"is {size} bytes where the manifest recorded {rec.get('bytes')} (damaged)"
    try:
        data = p.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if len(data) != rec.get("bytes") or hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        return "does not match the SHA-256 the manifest recorded (damaged)"
    if keep is not None:
        keep.append(data)
    return None


class JobOutputDamaged(BadInput):
    """Files of a job output are missing or differ from what its manifest records; `.problems` lists them
    ({'file', 'shard', 'problem'}) and `convlens job repair OUT` recomputes them."""

    def __init__(self, out: Path, problems: list[dict[str, Any]]) -> None:
        self.out = out
        self.problems = problems
        shown = "; ".join(f"{d['file']} {d['problem']}" for d in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        super().__init__(
            f"{out}: {len(problems)} job file(s) damaged or missing: {shown}{more}; "
            f"run `convlens job repair {shlex.quote(str(out))}` to recompute them"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.out, self.problems))


def _problems(
    out: Path,
    m: dict[str, Any],
    shards: bool = True,
    merged: bool = True,
    data: dict[str, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Every recorded shard (and merged output) that is missing or altered, and every shard a complete job
    lacks a record of. With `data`, the verified bytes of each good shard are kept there by shard key."""
    found: list[dict[str, Any]] = []
    recs = m["shards"]
    if shards:
        for key in sorted(recs, key=int):
            keep: list[bytes] | None = [] if data is not None else None
            why = _file_problem(out, recs[key], keep)
            if why is not None:
                found.append({"file": recs[key]["file"], "shard": int(key), "problem": why})
            elif keep:
                data[key] = keep[0]  # type: ignore[index]
        if m.get("status") == "complete":
            for k in range(m["num_shards"]):
                if str(k) not in recs:
                    found.append(
                        {
                            "file": _shard_name(m["job"], k),
                            "shard": k,
                            "problem": "was never recorded as finished",
                        }
                    )
    if merged and m.get("status") == "complete":
        for name, rec in m.get("output_files", {}).items():
            why = _file_problem(out, rec | {"file": name})
            if why is not None:
                found.append({"file": name, "shard": None, "problem": why})
    return found


# ------------------------------------------------------------------------------------------------------ engines


def _local_results(cfg: JobConfig, todo: list[Shard], net: Backbone) -> Iterator[dict[str, Any]]:
    worker = ShardWorker(asdict(cfg), None, net)
    for s in todo:
        yield worker.process(s) | {"backend": worker.backend}


class _RayShardWorker:
    """Ray Data callable class: one ShardWorker (one ONNX Runtime session) per actor, one shard per call."""

    def __init__(self, cfg: dict[str, Any], threads: int) -> None:
        self.worker = ShardWorker(cfg, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [self.worker.process(Shard(**json.loads(str(s)))) for s in batch["shard"]]
        return {
            "shard": np.asarray([o["shard"] for o in outs], np.int64),
            "payload": np.asarray([o["payload"] for o in outs], dtype=object),
            "rows": np.asarray([o["rows"] for o in outs], np.int64),
            "errors": np.asarray([json.dumps(o["errors"]) for o in outs], dtype=object),
            "seconds": np.asarray([o["seconds"] for o in outs], np.float64),
            "backend": np.asarray([self.worker.backend] * len(outs), dtype=object),
        }


def _ray_results(
    cfg: JobConfig,
    todo: list[Shard],
    address: str | None,
    concurrency: int | None,
    cpus_per_actor: float,
    info: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise BadInput(
            "the ray engine needs Ray: pip install 'convlens[distributed]' (or 'ray[data]>=2.30')"
        ) from None
    ours = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address:
            ray.init(address=address, **kw)
        else:
            env = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_")}
            ray.init(runtime_env={"env_vars": env} if env else None, **kw)
        ours = True
    try:
        import logging

        for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = False
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        cpus = max(1, int(res.get("CPU", 1)))
        size = concurrency or (gpus if gpus else max(1, int(cpus // max(cpus_per_actor, 1e-3))))
        size = max(1, min(size, len(todo)))
        info.update(actors=size, gpus_per_actor=1 if gpus else 0, cluster_cpus=cpus, cluster_gpus=gpus)
        items = [{"shard": json.dumps(asdict(s))} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _RayShardWorker,
            fn_constructor_kwargs={"cfg": asdict(cfg), "threads": max(1, int(cpus_per_actor))},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus_per_actor,
            num_gpus=1 if gpus else 0,
        )
        for row in ds.iter_rows():
            yield {
                "shard": int(row["shard"]),
                "payload": bytes(row["payload"]),
                "rows": int(row["rows"]),
                "errors": json.loads(str(row["errors"])),
                "seconds": float(row["seconds"]),
                "backend": str(row["backend"]),
            }
    finally:
        if ours:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------------ the job


def run_job(
    job: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | Backbone = "efficientnet_lite0",
    engine: str = "local",
    address: str | None = None,
    concurrency: int | None = None,
    cpus_per_actor: float = 1.0,
    shard_size: int = 256,
    limit: int | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    on_shard: Callable[[int, dict[str, Any]], None] | None = None,
    model_name: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run (or resume) `job` over `source` into folder `out`; returns a summary. `model` is a name or a loaded
    Backbone (Ray actors load it by its name, or by `model_name` when given: what the job records and
    resumes by); `params` are JobConfig fields (layer, k, method, target, window,
    stride, backend, batch_size, arch). Finished shards are verified and skipped."""
    if engine not in ENGINES:
        raise BadInput(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address and engine != "ray":
        raise BadInput("--address joins a Ray cluster; use it with --engine ray")
    if concurrency is not None and (isinstance(concurrency, bool) or int(concurrency) < 1):
        raise BadInput(f"concurrency must be >= 1 actors, got {concurrency!r}")
    if not cpus_per_actor > 0:
        raise BadInput(f"cpus_per_actor must be > 0, got {cpus_per_actor!r}")
    known = {f.name for f in fields(JobConfig)} - {"job", "model", "shard_size"}
    bad = sorted(set(params) - known)
    if bad:
        raise BadInput(f"unknown job parameter(s) {bad}; known: {sorted(known)}")
    t_start = time.perf_counter()
    from .zoo import Backbone, load

    outp = Path(out).expanduser()
    given = model if isinstance(model, Backbone) else None
    name = model_name or (given.name if given else os.fspath(model))
    cfg0 = JobConfig(job=job, model=name, shard_size=shard_size, **params)
    cfg0.check()
    inputs = list_inputs(source, limit)
    _prepare_out(outp)  # before the model loads and any image is decoded
    if given is not None:
        net = given
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = load(os.fspath(model), arch=cfg0.arch)
    cfg = cfg0.resolve(net)
    model_info = {"name": net.name, "weights": net.weights_hash(), "input_shape": list(net.input_shape)}
    fingerprint = hashlib.sha256(
        json.dumps(
            {"config": asdict(cfg), "model": model_info, "inputs": inputs.sha256(), "format": FORMAT},
            sort_keys=True,
        ).encode()
    ).hexdigest()

    with _Lock(outp):
        cleaned = _clean_temporaries(outp)  # left by a killed job: we hold the lock, nobody else writes here
        old = None if overwrite else _read_manifest(outp)
        if old is not None and old.get("fingerprint") != fingerprint:
            why = (
                "its inputs changed"
                if old.get("inputs", {}).get("sha256") != inputs.sha256()
                else ("it used other settings or another model")
            )
            raise BadInput(
                f"{outp} holds a different job ({old.get('job')}; {why}); choose another --out or pass --overwrite"
            )
        shards = plan_shards(inputs, cfg.shard_size)
        manifest: dict[str, Any] = old or {
            "format": FORMAT,
            "job": job,
            "fingerprint": fingerprint,
            "config": asdict(cfg),
            "model": model_info,
            "inputs": {
                "source": inputs.source,
                "count": len(inputs),
                "sha256": inputs.sha256(),
                "classes": inputs.classes,
                "duplicates": inputs.duplicates,
            },
            "num_shards": len(shards),
            "shards": {},
            "created": time.time(),
        }
        recs: dict[str, Any] = manifest["shards"]
        done = {s.index for s in shards if str(s.index) in recs and _verified(outp, recs[str(s.index)])}
        for key in [k for k in recs if int(k) not in done]:
            del recs[key]  # recorded but missing or altered: compute again
        todo = [s for s in shards if s.index not in done]
        manifest.update(status="running", engine=engine)
        manifest.pop("output_files", None)
        _write_json(outp / MANIFEST, manifest)  # first: readers never see a manifest naming deleted files
        if overwrite:
            for f in list((outp / SHARD_DIR).glob("*.parquet")) + [outp / n for n in MERGED]:
                f.unlink(missing_ok=True)
        n_total = len(inputs)
        n_done = sum(recs[str(k)]["count"] for k in done)
        _report(progress, n_done / n_total, f"{n_done}/{n_total} images ({len(done)} shards already done)")
        info: dict[str, Any] = {}
        t_run = time.perf_counter()
        computed = 0
        if todo:
            by_index = {s.index: s for s in todo}
            if engine == "local":
                results = _local_results(cfg, todo, net)
            else:
                results = _ray_results(cfg, todo, address, concurrency, cpus_per_actor, info)
            try:
                for r in results:
                    s = by_index[r["shard"]]
                    name = _shard_name(job, s.index)
                    _atomic_write(outp / name, r["payload"])
                    rec = {
                        "file": name,
                        "first": s.first,
                        "count": len(s.paths),
                        "rows": r["rows"],
                        "errors": r["errors"],
                        "bytes": len(r["payload"]),
                        "sha256": hashlib.sha256(r["payload"]).hexdigest(),
                        "seconds": r["seconds"],
                        "backend": r["backend"],
                        "engine": engine,
                    }
                    recs[str(s.index)] = rec
                    _write_json(outp / MANIFEST, manifest)
                    computed += 1
                    n_done += len(s.paths)
                    _report(progress, n_done / n_total, f"{n_done}/{n_total} images")
                    if on_shard is not None:
                        on_shard(s.index, rec)
            finally:
                if hasattr(results, "close"):
                    results.close()
        run_s = time.perf_counter() - t_run
        errors = sorted(
            ({"path": p, "error": e} for rec in recs.values() for p, e in rec["errors"]),
            key=lambda d: d["path"],
        )
        _write_json(outp / ERRORS, {"count": len(errors), "files": errors})
        outputs = {"errors": ERRORS}
        if job == "max_patches":
            names, files = _merge_max_patches(outp, manifest, net)
            outputs.update(names)
            manifest["output_files"] = files
        ok = sum(rec["rows"] for rec in recs.values())
        computed_images = sum(len(s.paths) for s in todo)
        summary = {
            "job": job,
            "out": str(outp),
            "engine": engine,
            "images": n_total,
            "ok": ok,
            "errors": len(errors),
            "shards": len(shards),
            "computed_shards": computed,
            "skipped_shards": len(done),
            "run_s": round(run_s, 3),
            "wall_s": round(time.perf_counter() - t_start, 3),
            "images_per_s": round(computed_images / run_s, 2) if computed and run_s > 0 else None,
            "cleaned_temporaries": len(cleaned),
        } | info
        manifest.update(status="complete", outputs=outputs, summary=summary, finished=time.time())
        _write_json(outp / MANIFEST, manifest)
        _report(progress, 1.0, f"{n_total} images, {len(errors)} unreadable")
        return summary


def _report(progress: Progress, frac: float, msg: str) -> None:
    if progress is not None:
        progress(max(0.0, min(1.0, frac)), msg)


def _shard_tables(out: Path, manifest: dict[str, Any]) -> list[pa.Table]:
    """The finished shards' tables in shard order. Each shard is read once, its size and SHA-256 checked against
    the manifest, and only then parsed (from those same bytes); a missing or altered shard, or a shard a
    complete job never recorded, raises JobOutputDamaged naming it: damaged data is never returned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data: dict[str, bytes] = {}
    problems = _problems(out, manifest, merged=False, data=data)
    if problems:
        raise JobOutputDamaged(out, problems)
    job = manifest["job"]
    tables = []
    for key in sorted(data, key=int):
        rec = manifest["shards"][key]
        try:
            t = pq.read_table(pa.BufferReader(data[key]))
            meta = json.loads(t.schema.metadata[b"convlens"])
            ok = meta.get("job") == job and meta.get("shard") == int(key)
            ok = ok and (job == "max_patches" or t.num_rows == rec["rows"])
        except Exception:  # noqa: BLE001 - verified bytes that still do not parse: written by something else
            ok = False
        if not ok:
            raise JobOutputDamaged(
                out,
                [{"file": rec["file"], "shard": int(key), "problem": "does not hold what the manifest says"}],
            )
        tables.append(t)
    return tables


def _merge_max_patches(
    out: Path, manifest: dict[str, Any], net: Backbone | None
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Global top-k per channel from the shards' top-k (exact: the global winners are among them), with each
    unit's receptive-field box, and per-channel selectivity; written as max_patches.parquet and channels.parquet.
    Returns the outputs and their records (size, SHA-256) for the manifest, so readers can verify them."""
    import pyarrow as pa

    recs, chans = _merged_patches(out, manifest, net)
    files = {}
    for name, table in zip(MERGED, (pa.table(recs), pa.table(chans))):
        payload = _pq_bytes(table)
        _atomic_write(out / name, payload)
        files[name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return {"max_patches": MERGED[0], "channels": MERGED[1]}, files


def _pq_bytes(t: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def _merged_patches(
    out: Path, manifest: dict[str, Any], net: Backbone | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    import pyarrow as pa

    cfg = manifest["config"]
    k = int(cfg["k"])
    tables = _shard_tables(out, manifest)
    n_ch = 0
    n = 0
    s1 = s2 = active = None
    for t in tables:
        st = json.loads(t.schema.metadata[b"convlens"]).get("stats") or {}
        if not all(isinstance(st.get(f), (int, list)) for f in ("n", "channels", "s1", "s2", "active")):
            raise BadInput(f"{out}: a max_patches shard lacks its statistics; rerun the job with --overwrite")
        n_ch = st["channels"]
        if s1 is None:
            s1, s2, active = np.zeros(n_ch), np.zeros(n_ch), np.zeros(n_ch, np.int64)
        n += st["n"]
        s1 = s1 + np.asarray(st["s1"])
        s2 = s2 + np.asarray(st["s2"])
        active = active + np.asarray(st["active"], np.int64)
    t = pa.concat_tables([x.replace_schema_metadata(None) for x in tables]) if tables else None
    if t is None or t.num_rows == 0:
        empty = {c: np.zeros(0, np.int64) for c in ("channel", "rank", "index", "label", "i", "j")}
        recs = empty | {"score": np.zeros(0, np.float32), "path": []}
        recs |= {c: np.zeros(0, np.int32) for c in ("top", "left", "bottom", "right")}
        return recs, {
            "channel": np.arange(n_ch),
            "selectivity": np.zeros(n_ch),
            "mean": np.zeros(n_ch),
            "std": np.zeros(n_ch),
            "active": np.zeros(n_ch, np.int64),
        }
    ch = t.column("channel").to_numpy()
    score = t.column("score").to_numpy()
    index = t.column("index").to_numpy()
    order = np.lexsort((index, -score.astype(np.float64), ch))
    ch_sorted = ch[order]
    starts = np.searchsorted(ch_sorted, ch_sorted, side="left")
    rank = np.arange(len(order)) - starts
    keep = order[rank < k]
    rank = rank[rank < k]
    paths = t.column("path").to_pylist()
    ii = t.column("i").to_numpy()[keep]
    jj = t.column("j").to_numpy()[keep]
    boxes = np.zeros((len(keep), 4), np.int32)
    if net is not None:
        li = net.layer(cfg["layer"])
        _, h, w = net.input_shape
        for r, (a, b) in enumerate(zip(ii, jj)):
            boxes[r] = li.rf.box(int(a), int(b), h, w)
    recs = {
        "channel": ch[keep].astype(np.int64),
        "rank": rank.astype(np.int64),
        "score": score[keep].astype(np.float32),
        "path": [paths[r] for r in keep],
        "index": index[keep].astype(np.int64),
        "label": t.column("label").to_numpy()[keep].astype(np.int64),
        "i": ii.astype(np.int64),
        "j": jj.astype(np.int64),
        "top": boxes[:, 0],
        "left": boxes[:, 1],
        "bottom": boxes[:, 2],
        "right": boxes[:, 3],
    }
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    top = np.zeros(n_ch)
    best = np.full(n_ch, -np.inf)
    np.add.at(top, recs["channel"], recs["score"].astype(np.float64))
    cnt = np.bincount(recs["channel"], minlength=n_ch)
    np.maximum.at(best, recs["channel"], recs["score"].astype(np.float64))
    top = top / np.maximum(cnt, 1)
    sel = (top - mean) / (std + 1e-6 * (1.0 + np.abs(mean)))
    sel[~(best > 0)] = -np.inf
    chans = {"channel": np.arange(n_ch), "selectivity": sel, "mean": mean, "std": std, "active": active}
    return recs, chans


# ------------------------------------------------------------------------------------------------------ reading


def open_job_output(out_dir: str | os.PathLike[str], maps: bool = True) -> dict[str, Any]:
    """A job folder as numpy arrays for browsing (finished shards only, so a running job can be looked at too).

    Always: job, status, complete, config, model, classes, errors [(path, reason)], manifest. embed: paths, labels,
    index, embeddings (N,D), preds/probs (classifiers). explain: paths, labels, index, targets, scores, maps (N,H,W).
    max_patches: records (dict of arrays: channel, rank, score, path, index, label, i, j, top, left, bottom, right)
    and channels (channel, selectivity, mean, std, active)."""
    out, m = _job_manifest(out_dir)
    errors = sorted(((p, e) for rec in m["shards"].values() for p, e in rec["errors"]), key=lambda pe: pe[0])
    res: dict[str, Any] = {
        "job": m["job"],
        "status": m.get("status"),
        "complete": m.get("status") == "complete",
        "config": m["config"],
        "model": m["model"],
        "classes": m["inputs"].get("classes"),
        "errors": errors,
        "manifest": m,
    }
    if m["job"] == "max_patches":
        files = m.get("output_files", {})
        if res["complete"] and set(files) == set(MERGED):
            res["records"], res["channels"] = (_merged_table(out, m, name) for name in MERGED)
            return res
    try:
        if m["job"] == "max_patches":  # running (or recorded before merged files were): merge verified shards
            res["records"], res["channels"] = _merged_patches(out, m, None)
        else:
            res.update(_arrays(m, _shard_tables(out, m), maps))
    except BadInput:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # verified shards, inconsistent manifest
        raise BadInput(
            f"{out}: the shards do not match the job manifest ({type(e).__name__}); "
            f"run `convlens job verify {shlex.quote(str(out))}`, or rerun the job with --overwrite"
        ) from None
    return res


def _job_manifest(out_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    out = Path(out_dir).expanduser()
    m = _read_manifest(out)
    if m is None:
        raise BadInput(
            f"{str(out)!r} is not a convlens job output (no {MANIFEST}); run `convlens job ...` first"
        )
    return out, m


def verify_job_output(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file of a job output against its manifest (size and SHA-256 of each shard and merged output;
    a complete job must record every shard). Returns {'out', 'job', 'status', 'shards', 'verified',
    'problems': [{'file', 'shard', 'problem'}]}; an empty problem list means every byte is as written."""
    out, m = _job_manifest(out_dir)
    problems = _problems(out, m)
    return {
        "out": str(out),
        "job": m["job"],
        "status": m.get("status"),
        "shards": m["num_shards"],
        "verified": len(m["shards"])
        - sum(p["shard"] is not None and str(p["shard"]) in m["shards"] for p in problems),
        "problems": problems,
    }


def repair_job_output(
    out_dir: str | os.PathLike[str],
    model: str | Backbone | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Recompute exactly the damaged or missing shards of a job output (and its merged files) with the job's own
    settings, and rewrite its manifest. `model` overrides the recorded model name (the same weights are
    required). Returns run_job's summary plus 'repaired' (the files that were damaged or missing)."""
    out, m = _job_manifest(out_dir)
    problems = _problems(out, m)
    names = {f.name for f in fields(JobConfig)}
    cfg = m["config"]
    try:
        jc = JobConfig(**{k: v for k, v in cfg.items() if k in names})
        jc.check()
    except (TypeError, BadInput) as e:
        raise BadInput(
            f"{out / MANIFEST}: the job settings cannot be read back ({e}); rerun the job with --overwrite"
        ) from None
    src, count = m["inputs"].get("source"), m["inputs"].get("count")
    if not isinstance(src, str) or not _is_count(count) or count == 0:
        raise BadInput(f"{out / MANIFEST}: the job's inputs are not recorded; rerun the job with --overwrite")
    inputs = list_inputs(src, limit=count)
    if inputs.sha256() != m["inputs"].get("sha256"):
        raise BadInput(
            f"the inputs of the job in {out} changed since it ran ({src}), so its shards cannot be recomputed "
            "as they were; rerun the whole job with --overwrite"
        )
    from .zoo import Backbone, load

    if isinstance(model, Backbone):
        net = model
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = load(model or jc.model, arch=jc.arch)
    if net.weights_hash() != m["model"].get("weights"):
        raise BadInput(
            f"the model {net.name!r} has other weights than the one that ran the job in {out}; pass the same "
            "model with --model, or rerun the whole job with --overwrite"
        )
    params = {k: getattr(jc, k) for k in names - {"job", "model", "shard_size"}}
    summary = run_job(
        jc.job,
        src,
        out,
        model=net,
        model_name=jc.model,
        shard_size=jc.shard_size,
        limit=count,
        progress=progress,
        **params,
    )
    summary["repaired"] = [p["file"] for p in problems]
    return summary


def _merged_table(out: Path, m: dict[str, Any], name: str) -> dict[str, Any]:
    """One merged max_patches output as arrays, verified against its recorded size and SHA-256 first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keep: list[bytes] = []
    why = _file_problem(out, m["output_files"][name] | {"file": name}, keep)
    if why is not None:
        raise JobOutputDamaged(out, [{"file": name, "shard": None, "problem": why}])
    try:
        t = pq.read_table(pa.BufferReader(keep[0]))
        return {c: _col(t, c) for c in t.column_names}
    except Exception:  # noqa: BLE001 - verified bytes that do not parse: not written by convlens
        raise JobOutputDamaged(
            out, [{"file": name, "shard": None, "problem": "is not the table the job wrote"}]
        ) from None


def _arrays(m: dict[str, Any], tables: list[pa.Table], maps: bool) -> dict[str, Any]:
    """The columns of embed / explain shards as numpy arrays (see open_job_output)."""
    import pyarrow as pa

    res: dict[str, Any] = {}
    t = pa.concat_tables([x.replace_schema_metadata(None) for x in tables]) if tables else None
    n = 0 if t is None else t.num_rows
    res["paths"] = np.asarray(t.column("path").to_pylist() if n else [], dtype=str)
    res["labels"] = _col(t, "label") if n else np.zeros(0, np.int64)
    res["index"] = _col(t, "index") if n else np.zeros(0, np.int64)
    if m["job"] == "embed":
        res["embeddings"] = _fixed(t, "embedding") if n else np.zeros((0, 0), np.float32)
        if n and "pred" in t.column_names:
            res["preds"] = _col(t, "pred")
            res["probs"] = _col(t, "prob")
    else:
        h, w = m["model"]["input_shape"][1:]
        res["targets"] = _col(t, "target") if n else np.zeros(0, np.int64)
        res["scores"] = _col(t, "score") if n else np.zeros(0, np.float32)
        if maps:
            res["maps"] = _fixed(t, "map").reshape(-1, h, w) if n else np.zeros((0, h, w), np.float32)
    return res


def _col(t: pa.Table, name: str) -> Any:
    c = t.column(name)
    if c.type == "string" or str(c.type) in ("string", "large_string"):
        return np.asarray(c.to_pylist(), dtype=str)
    return c.to_numpy()


def _fixed(t: pa.Table, name: str) -> np.ndarray:
    c = t.column(name).combine_chunks()
    d = c.type.list_size
    return np.asarray(c.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, d)


def crop_patch(record: dict[str, Any], net: Backbone) -> Image.Image:
    """The receptive-field crop of one max_patches record (a row of `records`) from the preprocessed image."""
    from PIL import Image as PILImage

    img = read_image(str(record["path"]))
    x = net.to_tensor01(img)[0].permute(1, 2, 0).numpy()
    top, left, bottom, right = (int(record[c]) for c in ("top", "left", "bottom", "right"))
    a = (x[top:bottom, left:right] * 255 + 0.5).astype(np.uint8)
    return PILImage.fromarray(a)


# ------------------------------------------------------------------------------------------------------ data + bench


def make_crop_folder(
    dest: str | os.PathLike[str], n: int, size: int = 64, seed: int = 0, corrupt: int = 0
) -> Path:
    """A labelled folder of `n` random JPEG crops of the packaged photos (class = photo), plus `corrupt` bad files.

    For tests and benchmarks: real photo statistics, tiny files, one subfolder per source photo."""
    from .images import foolbox_imagenet, open_image, sample_images

    srcs = [(k, p) for k, p in sample_images().items()] + [
        (f"imagenet{lab}", p) for p, lab in foolbox_imagenet()
    ]
    if not srcs:
        raise BadInput("no packaged photos found (scikit-image / foolbox)")
    rng = np.random.default_rng(seed)
    photos = []
    for name, p in srcs[:12]:
        try:
            im = open_image(p)
        except BadInput:
            continue
        if min(im.size) >= size:
            photos.append((re.sub(r"[^A-Za-z0-9_]", "_", name), im))
    root = Path(dest)
    for i in range(n):
        name, im = photos[i % len(photos)]
        w, h = im.size
        s = int(rng.integers(size, max(size + 1, min(w, h) // 2)))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crop = im.crop((x0, y0, x0 + s, y0 + s)).resize((size, size))
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        crop.save(d / f"{i:05d}.jpg", quality=85)
    bad = root / "corrupt"
    for i in range(corrupt):
        bad.mkdir(parents=True, exist_ok=True)
        kind = i % 3
        f = bad / f"bad{i:03d}.jpg"
        if kind == 0:
            f.write_bytes(b"")
        elif kind == 1:
            f.write_bytes(b"this is not an image at all" * 4)
        else:  # a real JPEG cut in half
            buf = io.BytesIO()
            photos[0][1].crop((0, 0, size, size)).save(buf, "JPEG")
            f.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return root


def bench_jobs(
    n: int = 500,
    models: Sequence[str] = ("fashion_cnn",),
    actors: Sequence[int] = (1, 2),
    shard_size: int = 50,
    out: str | os.PathLike[str] | None = None,
    ray_cpus: int | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Throughput of `embed` on `n` generated crops: local engine vs Ray with 1 and 2 actors (a local Ray instance).

    Times cover the whole job (actor start, model load, ONNX session, decode, forward, writes); Ray start-up
    itself is excluded; the best of `repeats` runs is kept. Writes bench_jobs.json and .md under `out`
    (default artifacts/bench)."""
    import tempfile

    rows: list[dict[str, Any]] = []
    outdir = Path(out or Path("artifacts") / "bench")
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="convlens-bench-") as tmp:
        data = make_crop_folder(Path(tmp) / "data", n, size=64, seed=1)
        for model in models:
            s = _best(
                repeats, "embed", data, Path(tmp) / f"local-{model}", model=model, shard_size=shard_size
            )
            rows.append({"model": model, "engine": "local", "actors": 1} | _bench_row(s))
        try:
            import ray
        except ImportError:
            ray = None  # type: ignore[assignment]
        if ray is not None and actors:
            started = not ray.is_initialized()
            if started:
                t0 = time.perf_counter()
                env = {k: v for k, v in os.environ.items() if k.startswith("CONVLENS_")}
                ray.init(
                    num_cpus=ray_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                    runtime_env={"env_vars": env} if env else None,
                )
                ray_start = time.perf_counter() - t0
            else:
                ray_start = 0.0
            try:
                for model in models:
                    for a in actors:
                        s = _best(
                            repeats,
                            "embed",
                            data,
                            Path(tmp) / f"ray{a}-{model}",
                            model=model,
                            shard_size=shard_size,
                            engine="ray",
                            concurrency=a,
                        )
                        rows.append({"model": model, "engine": "ray", "actors": a} | _bench_row(s))
            finally:
                if started:
                    ray.shutdown()
        else:
            ray_start = None
    report = {
        "images": n,
        "shard_size": shard_size,
        "cpus": os.cpu_count(),
        "ray_start_s": None if ray_start is None else round(ray_start, 2),
        "rows": rows,
    }
    (outdir / "bench_jobs.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"embed job, {n} JPEG crops (64 px), shards of {shard_size}, {os.cpu_count()} CPU cores, best of {repeats}",
        "",
        "| model | engine | actors | images/s (whole job) | images/s (compute) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['actors']} | {r['job_images_per_s']} | {r['images_per_s']} | "
            f"{r['wall_s']} |"
        )
    (outdir / "bench_jobs.md").write_text("\n".join(lines) + "\n")
    report["markdown"] = "\n".join(lines)
    return report


def _best(repeats: int, *args: Any, **kw: Any) -> dict[str, Any]:
    """The fastest of `repeats` fresh runs of one job (the machine may be shared; the minimum is the signal)."""
    runs = [run_job(*args, overwrite=True, **kw) for _ in range(max(1, repeats))]
    return min(runs, key=lambda s: s["wall_s"])


def _bench_row(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "wall_s": s["wall_s"],
        "run_s": s["run_s"],
        "images_per_s": s["images_per_s"],
        "job_images_per_s": round(s["images"] / s["wall_s"], 2),
    }


# ------------------------------------------------------------------------------------------------------ CLI


def add_job_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `job embed|explain|max_patches|verify|repair|bench` to a `convlens` subparsers object; handlers call
    `cmd_job`."""
    p = subparsers.add_parser(
        "job",
        help="dataset-scale jobs (embed, explain, max_patches) on this machine or a Ray cluster",
        description="Run a job over an image folder (class subfolders = labels), a text list of paths/URIs or a "
        "Parquet manifest with a 'path' column. Outputs: Parquet shards + manifest.json + errors.json in --out; "
        "an interrupted job resumes where it stopped when run again with the same arguments. "
        "`convlens job verify OUT` checks every shard against the manifest; `convlens job repair OUT` recomputes "
        "the damaged or missing ones.",
    )
    sub = p.add_subparsers(dest="job", required=True)
    for name, text in (
        ("embed", "embeddings + labels + paths (+ predictions) as Parquet shards"),
        ("explain", "an attribution map per image (occlusion or Grad-CAM) as Parquet shards"),
        ("max_patches", "per-channel top-k maximally activating patches over the dataset"),
    ):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument(
            "input", help="image folder, .txt list (path[<TAB>label] per line) or .parquet manifest"
        )
        q.add_argument(
            "--out", "-o", required=True, help="output folder (shards, manifest.json, errors.json)"
        )
        q.add_argument(
            "--model", "-m", default="efficientnet_lite0", help="zoo name, torchvision name or file"
        )
        q.add_argument("--arch", default=None, help="architecture for a state-dict checkpoint")
        q.add_argument("--engine", choices=ENGINES, default="local", help="local (default, no Ray) or ray")
        q.add_argument(
            "--address",
            default=None,
            help="Ray cluster to join: ray://host:10001 or auto (default: start one)",
        )
        q.add_argument("--concurrency", type=int, default=None, help="Ray actors (default: GPUs, else CPUs)")
        q.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per Ray actor")
        q.add_argument(
            "--shard-size", type=int, default=256, help="images per shard (the unit of resumption)"
        )
        q.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by path)")
        q.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
        q.add_argument("--backend", choices=("onnxruntime", "torch", "auto"), default="onnxruntime")
        q.add_argument("--overwrite", action="store_true", help="discard a previous job in --out")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name in ("embed", "max_patches"):
            q.add_argument(
                "--layer",
                default="",
                help="embed: tap (default: the embedding); max_patches: conv layer (default: the CAM layer)",
            )
        if name == "max_patches":
            q.add_argument("--k", type=int, default=9, help="patches per channel")
        if name == "explain":
            q.add_argument(
                "--method", default="occlusion", help="occlusion (ONNX Runtime sweeps) or gradcam, ..."
            )
            q.add_argument("--target", type=int, default=None, help="class index (default: predicted class)")
            q.add_argument("--window", type=int, default=0, help="occlusion window in pixels (0 = input/7)")
            q.add_argument("--stride", type=int, default=0, help="occlusion stride in pixels (0 = window/2)")
        q.set_defaults(fn=cmd_job)
    v = sub.add_parser(
        "verify",
        help="check every shard of a job output against its manifest (size, SHA-256); exit 2 if any is damaged",
        description="Lists damaged or missing shards (and merged outputs) of OUT; exit status 2 if there are any.",
    )
    v.add_argument("out", help="the job's output folder (the --out of the job)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(fn=cmd_job)
    r = sub.add_parser(
        "repair",
        help="recompute exactly the damaged or missing shards of a job output and rewrite its manifest",
        description="Verifies OUT, recomputes the shards that are damaged or missing with the job's own settings "
        "(same inputs and model weights required) and rewrites the manifest.",
    )
    r.add_argument("out", help="the job's output folder (the --out of the job)")
    r.add_argument(
        "--model", "-m", default=None, help="the job's model, if its recorded name or path no longer loads"
    )
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(fn=cmd_job)
    b = sub.add_parser("bench", help="throughput of embed: local vs Ray with 1 and 2 actors")
    b.add_argument("--n", type=int, default=500, help="generated images")
    b.add_argument("--models", default="fashion_cnn", help="comma-separated models")
    b.add_argument("--actors", default="1,2", help="comma-separated Ray actor counts ('' = local only)")
    b.add_argument("--shard-size", type=int, default=50)
    b.add_argument("--repeats", type=int, default=1, help="runs per configuration (the best is kept)")
    b.add_argument("--out", default=None, help="report folder (default artifacts/bench)")
    b.set_defaults(fn=cmd_job)
    return p


def cmd_job(args: argparse.Namespace) -> int:
    """Handler of `convlens job ...`: runs, verifies or repairs a job (progress bar on a terminal) and prints a
    summary. Errors are raised as BadInput after the progress bar is closed: one stderr line, exit 2."""
    if args.job == "bench":
        rep = bench_jobs(
            n=args.n,
            models=[m for m in args.models.split(",") if m],
            actors=[int(a) for a in args.actors.split(",") if a.strip()],
            shard_size=args.shard_size,
            out=args.out,
            repeats=args.repeats,
        )
        print(rep["markdown"])
        return 0
    if args.job == "verify":
        return _cmd_verify(args)
    with _Bar(f"job {args.job}") as bar:
        if args.job == "repair":
            s = repair_job_output(args.out, model=args.model, progress=bar.progress)
        else:
            params: dict[str, Any] = {
                "arch": args.arch,
                "batch_size": args.batch_size,
                "backend": args.backend,
            }
            for name in ("layer", "k", "method", "target", "window", "stride"):
                if hasattr(args, name):
                    params[name] = getattr(args, name)
            s = run_job(
                args.job,
                args.input,
                args.out,
                model=args.model,
                engine=args.engine,
                address=args.address,
                concurrency=args.concurrency,
                cpus_per_actor=args.cpus_per_actor,
                shard_size=args.shard_size,
                limit=args.limit,
                overwrite=args.overwrite,
                progress=bar.progress,
                **params,
            )
    if getattr(args, "json", False):
        print(json.dumps(s))
    elif args.job == "repair":
        what = ", ".join(s["repaired"]) if s["repaired"] else "nothing was damaged or missing"
        print(f"repaired {s['out']}: {what} ({s['computed_shards']} shards computed, {s['wall_s']} s)")
    else:
        print(
            f"{s['job']}: {s['ok']}/{s['images']} images -> {s['out']} ({s['computed_shards']} shards computed, "
            f"{s['skipped_shards']} reused, {s['errors']} unreadable listed in {ERRORS}, {s['wall_s']} s)"
        )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """`convlens job verify OUT`: one line per damaged or missing file on stdout, then BadInput (exit 2)."""
    rep = verify_job_output(args.out)
    if args.json:
        print(json.dumps(rep))
    else:
        for p in rep["problems"]:
            print(f"{p['file']}: {p['problem']}")
    if rep["problems"]:
        raise BadInput(
            f"{rep['out']}: {len(rep['problems'])} job file(s) damaged or missing; "
            f"run `convlens job repair {shlex.quote(rep['out'])}` to recompute them"
        )
    if not args.json:
        print(f"{rep['out']}: all {rep['verified']} recorded shards verified ({rep['job']}, {rep['status']})")
    return 0


class _Bar:
    """A tqdm progress bar on stderr, drawn only on a terminal and only once there is progress, and always
    closed (its line cleared) before the context exits, so an error prints as one clean line."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def progress(self, frac: float, msg: str) -> None:
        if self.bar is None:
            if not sys.stderr.isatty():
                return
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=self.desc, unit="‰", leave=False, file=sys.stderr)
        self.bar.n = int(round(1000 * frac))
        self.bar.set_postfix_str(msg, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        sys.stderr.flush()


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one stderr line and exit 2, like every other convlens error."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m accel.distributed job ...` (the same commands as `convlens job ...`)."""
    ap = _OneLineParser(prog="python -m accel.distributed")
    add_job_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except BadInput as e:
        print(f"convlens: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"convlens: error: {e.strerror or e}{where}; check free space and permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlens: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
