"""Dashboard timings for `convlens bench`: warm page switches, Compare with four gradient methods, reopening a
stored run. Runs the real app headlessly (streamlit's AppTest) in its own process, so the engine never imports
streamlit: `python -m dashboard.bench [--repeats N]` prints one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
SWITCH_PAGES = ("compare", "filters", "embeddings", "synthesis", "runs", "benchmarks")
GRADIENT_METHODS = ("saliency", "gradcam", "integrated_gradients", "guided_backprop")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _check(at: Any, what: str) -> None:
    if at.exception:
        raise RuntimeError(f"{what}: {[e.value for e in at.exception][:1]}")


def bench_dashboard(repeats: int = 3, model: str = "efficientnet_lite0") -> dict[str, Any]:
    """Time the app as a user meets it (warm caches): page switches, a fresh Compare run, reopening a run."""
    from streamlit.testing.v1 import AppTest

    out: dict[str, Any] = {"model": model, "methods": list(GRADIENT_METHODS), "repeats": repeats}
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state["model"] = model
    at.run()
    _check(at, "home")
    # warm-up: visit every page once (imports, model load, cached resources), then time the switches
    for page in SWITCH_PAGES:
        at.switch_page(f"views/{page}.py").run()
        _check(at, page)
    switches: dict[str, list[float]] = {p: [] for p in SWITCH_PAGES}
    for _ in range(repeats):
        for page in SWITCH_PAGES:
            t0 = time.perf_counter()
            at.switch_page(f"views/{page}.py").run()
            switches[page].append(time.perf_counter() - t0)
            _check(at, page)
    out["page_switch_s"] = {p: statistics.median(v) for p, v in switches.items()}
    out["page_switch_max_s"] = max(max(v) for v in switches.values())

    # Compare: four gradient methods, default parameters and faithfulness scores, each repeat on a new photo so
    # nothing is answered from the store (the user's first request).
    # The first run (untimed, on its own photo) starts the shared ONNX Runtime session and checks its parity
    # once per server; the timed runs are what every later user request costs.
    photos = ("camera", "chelsea", "astronaut", "coffee", "rocket", "horse", "china", "coins")
    walls, cpus, maps_only, run_ids = [], [], [], []
    for k in range(-1, repeats):
        at = AppTest.from_file(APP, default_timeout=600)  # a new session per photo; server caches stay warm
        at.session_state["model"] = model
        at.session_state["img_sample"] = photos[(k + 1) % len(photos)]
        at.run()
        at.switch_page("views/compare.py").run()
        at.multiselect(key="cmp_methods").set_value(list(GRADIENT_METHODS)).run()
        _check(at, "compare setup")
        c0, t0 = _cpu(), time.perf_counter()
        at.button[0].click().run()
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        _check(at, "compare run")
        if k < 0:
            continue
        walls.append(wall)
        cpus.append(cpu)
        maps_only.append(float(at.session_state["cmp_total_s"]))
        runs = at.session_state["cmp_runs"]
        if any(r["cached"] for r in runs):
            raise RuntimeError("compare bench: a map came from the store; the timing would be meaningless")
        run_ids += [r["run_id"] for r in runs]
    out["compare_s"] = statistics.median(walls)
    out["compare_best_s"] = min(walls)
    out["compare_cpu_s"] = statistics.median(cpus)
    out["compare_maps_only_s"] = statistics.median(maps_only)
    out["compare_scores_steps"] = int(at.session_state.get("cmp_score_steps", 0))

    # reopening a stored run by its link, in a new session (the server's caches warm, as for a colleague)
    reopen = []
    for rid in run_ids[: max(3, repeats)]:
        at2 = AppTest.from_file(APP, default_timeout=600)
        at2.query_params["run"] = rid
        t0 = time.perf_counter()
        at2.run()
        reopen.append(time.perf_counter() - t0)
        _check(at2, "reopen")
    out["reopen_s"] = statistics.median(reopen)
    out["reopen_max_s"] = max(reopen)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="efficientnet_lite0")
    a = ap.parse_args(argv)
    from accel import settings

    if not settings.is_set("CONVLENS_STORE"):  # `convlens bench` passes a scratch store; a bare run refuses
        ap.error("set CONVLENS_STORE to a scratch folder: the bench's runs must not land in your run store")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    print(json.dumps(bench_dashboard(a.repeats, a.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
