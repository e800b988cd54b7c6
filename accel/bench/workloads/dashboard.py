"""Dashboard timings from `dashboard.bench` (AppTest) and `dashboard.browser_bench` (headless Chromium against
`streamlit run`, page vs API), each run in a child process so the engine never imports streamlit."""

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


def _child(module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run `python -m <module> <args>` from the checkout with a scratch run store; its last stdout line as JSON, or
    {"skipped": why}."""
    if not (ROOT / Path(*module.split("."))).with_suffix(".py").is_file():
        return {"skipped": "the dashboard package is not installed beside the engine"}
    env = dict(os.environ)
    if not settings.is_set("CONVLENS_STORE"):  # the bench's runs never land in the user's store
        env["CONVLENS_STORE"] = tempfile.mkdtemp(prefix="convlens-bench-store-")
    try:
        cp = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"{module} did not finish in {timeout:.0f} s"}
    if cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"{module} failed: {tail[0][:300]}"}
    result: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return result


def bench_dashboard(repeats: int = 3, timeout: float = 1200, browser: bool = True) -> dict[str, Any]:
    """Page switch, Compare with 4 gradient methods and reopening a run, as `python -m dashboard.bench` reports
    them, plus (under "browser") the real-browser rows of `python -m dashboard.browser_bench`: class_viz 40 steps
    on Synthesis and Compare with four and seven methods, each page click-to-result against the same work through
    the API. {"skipped": why} for a part that could not run (no dashboard, no Chromium, a failure)."""
    out = _child("dashboard.bench", ["--repeats", str(repeats)], timeout)
    if browser:
        out["browser"] = _child("dashboard.browser_bench", ["--repeats", str(repeats)], 2 * timeout)
    return out
