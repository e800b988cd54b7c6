"""Dataset-scale runs of registered methods (embed, explain, max_patches), locally or on a Ray cluster, with
identical outputs.

The input (an image folder, a text list of paths/URIs, or a Parquet manifest with a `path` column) is sorted and cut
into fixed-size shards (`inputs`, `worker`). Each shard is decoded with `accel.open_image` semantics (unreadable
files are listed in the output, never fatal) and written atomically as a Parquet file that `manifest.json` records
with its size and SHA-256 (`manifest`, `driver`); a restarted job verifies and skips finished shards, every reader
verifies each shard before parsing it (`outputs`), and `convlens job verify` / `convlens job repair` check an
output and recompute exactly its damaged shards (`cli`). `explain` runs the registered attribution method through
`accel.run` with the parameters of its declaration (`config`), so its maps are the method's maps. The local engine
(the default) never imports Ray; the Ray engine maps the very same shard worker over a Ray Data actor pool and the
driver writes what the actors return, so `--out` needs no shared disk (`engines`).
"""

from __future__ import annotations

from .bench import bench_jobs, make_crop_folder
from .cli import add_job_parser, cmd_job
from .config import JOBS, JobConfig
from .driver import repair_job_output, run_job
from .engines import ENGINES
from .inputs import Inputs, list_inputs, read_image
from .manifest import JobOutputDamaged
from .outputs import crop_patch, open_job_output, verify_job_output
from .worker import Shard, ShardWorker, plan_shards

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
    "Shard",
    "ShardWorker",
    "plan_shards",
]
