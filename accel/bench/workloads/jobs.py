"""Dataset jobs: the job benchmark of `accel.jobs` (embed throughput, local engine vs Ray actors), called here."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def bench_job_throughput(quick: bool, out_dir: Path) -> dict[str, Any]:
    """The jobs package's own benchmark: quick runs the local engine on 100 crops; the full bench also starts a
    local Ray instance with 1 and 2 actors on 500 crops. Writes bench_jobs.json and .md into `out_dir`."""
    from ...jobs import bench_jobs

    try:
        if quick:
            return bench_jobs(n=100, actors=(), out=out_dir)
        return bench_jobs(n=500, actors=(1, 2), out=out_dir)
    except Exception as e:  # noqa: BLE001 - a job engine that cannot start (Ray) is reported, not fatal
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
