"""Data and throughput for dataset jobs: a labelled folder of random photo crops (tests, benchmarks) and the
embed-job benchmark (local engine vs Ray with 1 and 2 actors), which the bench calls.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from .driver import run_job
from .engines import start_ray


def make_crop_folder(
    dest: str | os.PathLike[str], n: int, size: int = 64, seed: int = 0, corrupt: int = 0
) -> Path:
    """A labelled folder of `n` random JPEG crops of the packaged photos (class = photo), plus `corrupt` bad files.

    For tests and benchmarks: real photo statistics, tiny files, one subfolder per source photo."""
    from ..images import foolbox_imagenet, open_image, sample_images

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
    ray_start = None
    with tempfile.TemporaryDirectory(prefix="convlens-bench-") as tmp:
        data = make_crop_folder(Path(tmp) / "data", n, size=64, seed=1)
        for model in models:
            s = _best(
                repeats, "embed", data, Path(tmp) / f"local-{model}", model=model, shard_size=shard_size
            )
            rows.append({"model": model, "engine": "local", "actors": 1} | _bench_row(s))
        if actors and importlib.util.find_spec("ray") is not None:
            ray_start = _ray_rows(rows, data, Path(tmp), models, actors, shard_size, ray_cpus, repeats)
    report: dict[str, Any] = {
        "images": n,
        "shard_size": shard_size,
        "cpus": os.cpu_count(),
        "ray_start_s": None if ray_start is None else round(ray_start, 2),
        "rows": rows,
    }
    (outdir / "bench_jobs.json").write_text(json.dumps(report, indent=1))
    report["markdown"] = _markdown(report, repeats)
    (outdir / "bench_jobs.md").write_text(report["markdown"] + "\n")
    return report


def _ray_rows(
    rows: list[dict[str, Any]],
    data: Path,
    tmp: Path,
    models: Sequence[str],
    actors: Sequence[int],
    shard_size: int,
    ray_cpus: int | None,
    repeats: int,
) -> float:
    """Append the Ray rows (one per model and actor count) on a local Ray instance started here unless one
    runs already; returns Ray's start-up time (0 when it was running)."""
    import ray

    started = not ray.is_initialized()
    t0 = time.perf_counter()
    if started:
        start_ray(num_cpus=ray_cpus or os.cpu_count())
    ray_start = time.perf_counter() - t0 if started else 0.0
    try:
        for model in models:
            for a in actors:
                s = _best(
                    repeats,
                    "embed",
                    data,
                    tmp / f"ray{a}-{model}",
                    model=model,
                    shard_size=shard_size,
                    engine="ray",
                    concurrency=a,
                )
                rows.append({"model": model, "engine": "ray", "actors": a} | _bench_row(s))
    finally:
        if started:
            ray.shutdown()
    return ray_start


def _markdown(report: dict[str, Any], repeats: int) -> str:
    """The bench table in Markdown (the README's form)."""
    lines = [
        f"embed job, {report['images']} JPEG crops (64 px), shards of {report['shard_size']}, "
        f"{report['cpus']} CPU cores, best of {repeats}",
        "",
        "| model | engine | actors | images/s (whole job) | images/s (compute) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['actors']} | {r['job_images_per_s']} | {r['images_per_s']} | "
            f"{r['wall_s']} |"
        )
    return "\n".join(lines)


def _best(repeats: int, *args: Any, **kw: Any) -> dict[str, Any]:
    """The fastest of `repeats` fresh runs of one job (the machine may be shared; the minimum is the signal)."""
    runs = [run_job(*args, overwrite=True, **kw) for _ in range(max(1, repeats))]
    return min(runs, key=lambda s: s["wall_s"])


def _bench_row(s: dict[str, Any]) -> dict[str, Any]:
    """The timing columns of one bench row from a job summary."""
    return {
        "wall_s": s["wall_s"],
        "run_s": s["run_s"],
        "images_per_s": s["images_per_s"],
        "job_images_per_s": round(s["images"] / s["wall_s"], 2),
    }
