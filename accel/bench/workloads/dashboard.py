"""Dashboard timings from `dashboard.bench`, run in a child process so the engine never imports streamlit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ... import settings

ROOT = Path(__file__).resolve().parents[3]  # the checkout: accel/ and dashboard/ side by side


def bench_dashboard(repeats: int = 3, timeout: float = 1200) -> dict[str, Any]:
    """Page switch, Compare with 4 gradient methods and reopening a run, as `python -m dashboard.bench` reports
    them; {"skipped": why} when the dashboard is not installed beside the engine or the run failed."""
    if not (ROOT / "dashboard" / "bench.py").is_file():
        return {"skipped": "the dashboard package is not installed beside the engine"}
    env = dict(os.environ)
    if not settings.is_set("CONVLENS_STORE"):  # the bench's runs never land in the user's store
        env["CONVLENS_STORE"] = tempfile.mkdtemp(prefix="convlens-bench-store-")
    try:
        cp = subprocess.run(
            [sys.executable, "-m", "dashboard.bench", "--repeats", str(repeats)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"the dashboard bench did not finish in {timeout:.0f} s"}
    if cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"the dashboard bench failed: {tail[0][:300]}"}
    result: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return result
