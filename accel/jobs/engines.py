"""Where a job's shards are computed: `local` (this process, never imports Ray) or `ray` (a Ray Data actor pool).

Both run the very same ShardWorker and yield the same result records, one per shard, to the driver, which writes
them: the Ray actors return their Parquet bytes, so `--out` needs no shared disk. Each actor holds one worker (one
ONNX Runtime session for embed and max_patches), its share of the cores passed explicitly, and one GPU per actor
when the cluster has GPUs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import settings
from ..errors import BadInput
from ..registry import Observer
from .config import JobConfig
from .worker import Shard, ShardWorker

if TYPE_CHECKING:
    from ..zoo import Backbone

ENGINES: tuple[str, ...] = ("local", "ray")
RAY_HINT = "the ray engine needs Ray: pip install 'convlens[distributed]' (or 'ray[data]>=2.30')"
Progress = Callable[[float, str], None] | None


class ShardObserver(Observer):
    """Progress inside one shard, reported as the job's overall progress: the shard covers `count` of the
    `total` images, starting after `done` of them."""

    def __init__(self, progress: Callable[[float, str], None], done: int, count: int, total: int) -> None:
        self.report, self.done, self.count, self.total = progress, done, count, max(total, 1)

    def progress(self, frac: float, msg: str = "") -> None:
        """Map the shard's 0..1 onto the job's share and pass it on."""
        n = self.done + float(frac) * self.count
        self.report(min(1.0, n / self.total), f"{int(n)}/{self.total} images")


def local_results(
    cfg: JobConfig,
    todo: list[Shard],
    net: Backbone,
    progress: Progress = None,
    start: int = 0,
    total: int = 0,
) -> Iterator[dict[str, Any]]:
    """Compute `todo` in this process with `net`, one shard at a time; with `progress`, the progress inside each
    shard is reported too (`start` of `total` images were done before)."""
    worker = ShardWorker(asdict(cfg), None, net)
    done = start
    for s in todo:
        obs = ShardObserver(progress, done, len(s.paths), total) if progress is not None else None
        yield worker.process(s, obs) | {"backend": worker.backend}
        done += len(s.paths)


class RayShardWorker:
    """Ray Data callable class: one ShardWorker per actor, one shard per call."""

    def __init__(self, cfg: dict[str, Any], threads: int) -> None:
        self.worker = ShardWorker(cfg, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Process the shards of one Ray Data batch (JSON-encoded Shard records) into result columns."""
        outs = [self.worker.process(Shard(**json.loads(str(s)))) for s in batch["shard"]]
        return {
            "shard": np.asarray([o["shard"] for o in outs], np.int64),
            "payload": np.asarray([o["payload"] for o in outs], dtype=object),
            "rows": np.asarray([o["rows"] for o in outs], np.int64),
            "errors": np.asarray([json.dumps(o["errors"]) for o in outs], dtype=object),
            "seconds": np.asarray([o["seconds"] for o in outs], np.float64),
            "backend": np.asarray([self.worker.backend] * len(outs), dtype=object),
        }


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local instance (on `num_cpus` cores) that forwards this
    process's CONVLENS_* settings to its workers; quiet (no dashboard, no driver logs)."""
    try:
        import ray
    except ImportError:
        raise BadInput(RAY_HINT) from None
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        ray.init(address=address, **kw)
        return
    env = settings.environment()
    if num_cpus is not None:
        kw["num_cpus"] = num_cpus
    ray.init(runtime_env={"env_vars": env} if env else None, **kw)


def _quiet_ray_data(ray: Any) -> None:
    """No progress bars or execution banners from Ray Data; results in completion order."""
    import logging

    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False


def ray_results(
    cfg: JobConfig,
    todo: list[Shard],
    address: str | None,
    concurrency: int | None,
    cpus_per_actor: float,
    info: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """Compute `todo` on a Ray Data actor pool (joining `address`, or a local instance started and stopped
    here); `info` receives the pool's size and the cluster's resources."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise BadInput(RAY_HINT) from None
    ours = not ray.is_initialized()
    if ours:
        start_ray(address)
    try:
        _quiet_ray_data(ray)
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        cpus = max(1, int(res.get("CPU", 1)))
        size = concurrency or (gpus if gpus else max(1, int(cpus // max(cpus_per_actor, 1e-3))))
        size = max(1, min(size, len(todo)))
        info.update(actors=size, gpus_per_actor=1 if gpus else 0, cluster_cpus=cpus, cluster_gpus=gpus)
        items = [{"shard": json.dumps(asdict(s))} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        pool = ds.map_batches(
            RayShardWorker,
            fn_constructor_kwargs={"cfg": asdict(cfg), "threads": max(1, int(cpus_per_actor))},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus_per_actor,
            num_gpus=1 if gpus else 0,
        )
        for row in pool.iter_rows():
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
