"""Background jobs render progress without slowing the work: a script run (the live panel's fragment polls every
POLL_S) does not force a full garbage collection, and a job keeps a bounded number of snapshots, converted to a
picture only when the page draws one; heavy jobs queue. Real jobs running class_viz on fashion_cnn."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import accel
from dashboard import jobs

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def test_page_reruns_do_not_collect_in_full() -> None:
    """Streamlit's runner.postScriptGC ends every script run (every poll of a live panel's fragment) with
    gc.collect(2), which held the GIL for 0.5-2 s on a loaded server while a job ran; importing the dashboard's jobs
    turns it off. The server's ScriptRunner must still read that option, or the fix has silently gone away."""
    import inspect

    from streamlit import config
    from streamlit.runtime.scriptrunner.script_runner import ScriptRunner

    assert "runner.postScriptGC" in inspect.getsource(ScriptRunner._on_script_finished)
    config.set_option("runner.postScriptGC", True)  # what a fresh server starts with
    jobs.no_gc_after_reruns()
    assert config.get_option("runner.postScriptGC") is False
    # the app imports it on its first run (app -> runview -> jobs), before any page polls
    src = (Path(APP).parent / "runview.py").read_text() + (Path(APP).read_text())
    assert "from .jobs import" in src and "from dashboard.runview import" in src


def _class_viz_job(net: accel.Backbone, steps: int) -> jobs.Job:
    def work(j: jobs.Job) -> tuple[str | None, accel.Result | None]:
        return None, accel.run("class_viz", net, None, observer=j.observer, steps=steps, target=3, seed=0)

    return jobs.Job("class_viz", work, user="tester", heavy=False, stoppable=True)


def test_snapshots_are_bounded_and_converted_only_when_drawn() -> None:
    net = accel.load("fashion_cnn")
    steps = 200  # class_viz offers a snapshot every 10 steps: 20 in all
    job = _class_viz_job(net, steps)
    t0 = time.monotonic()
    job.thread.start()
    job.thread.join(timeout=300)
    elapsed = time.monotonic() - t0
    assert job.state == "done", job.error
    offered = steps // 10
    assert job.snapshots_kept + job.snapshots_dropped == offered
    assert 1 <= job.snapshots_kept <= elapsed / jobs.SNAPSHOT_MIN_S + 1
    assert job.conversions == 0  # nothing was drawn: nothing was converted
    first = job.snapshot
    assert isinstance(first, Image.Image) and first.size[0] >= 28
    assert job.snapshot is first and job.conversions == 1  # redrawn: converted once
    png = job.snapshot_png
    assert png is not None and png.startswith(b"\x89PNG") and job.snapshot_png is png  # encoded once too


def test_snapshot_burst_keeps_one_copy_of_the_step() -> None:
    """A burst of snapshots (a method reporting every step) keeps one per SNAPSHOT_MIN_S, as a copy: the optimiser
    changing its tensor afterwards does not change what the page shows."""
    job = jobs.Job("burst", lambda j: (None, None), user="tester", heavy=False)
    x = torch.zeros(1, 3, 8, 8)
    for step in range(100):
        x += 0.001
        job.observer.snapshot(x, step)
    assert job.snapshots_kept + job.snapshots_dropped == 100
    assert job.snapshots_kept <= 2 and job.conversions == 0
    x += 0.9  # the method goes on optimising its tensor in place
    pic = job.snapshot
    assert pic is not None and int(np.asarray(pic).max()) < 10  # the step it was taken at (about 0.001 -> 0)


def test_a_second_heavy_job_waits_for_the_first_and_stop_frees_the_line() -> None:
    """Heavy jobs queue in the fair-use line (one per user at a time) instead of running side by side."""
    net = accel.load("fashion_cnn")
    gate = jobs.HeavyGate(per_user=1, server=2)
    first = jobs.Job(
        "class_viz", _class_viz_job(net, 2000).work, user="u", heavy=True, stoppable=True, gate=gate
    )
    second = jobs.Job(
        "class_viz", _class_viz_job(net, 3).work, user="u", heavy=True, stoppable=True, gate=gate
    )
    first.thread.start()
    deadline = time.monotonic() + 120
    while first.frac == 0 and first.running and time.monotonic() < deadline:
        time.sleep(0.05)
    second.thread.start()
    time.sleep(0.5)
    assert first.state == "running", first.error
    assert second.state == "queued"
    assert second.ticket is not None and second.ticket.position == 1
    first.stop()
    second.thread.join(timeout=120)
    first.thread.join(timeout=30)
    assert first.state == "stopped" and second.state == "done"
    # the second was admitted only when the first gave its slot back
    assert [e for e, *_ in gate.log] == ["admitted", "queued", "finished", "finished"]
    assert not [t for t in threading.enumerate() if t is first.thread or t is second.thread]


def test_bench_report_shows_the_browser_rows_or_why_not() -> None:
    from accel.bench.report import dashboard_table

    rows = [
        {"row": "Synthesis: class_viz 40 steps", "page_s": 3.0, "api_s": 2.5, "ratio": 1.2, "cpu_ratio": 1.1},
        {"row": "Compare: four methods + scores", "page_s": 4.0, "api_s": 3.2, "ratio": 1.25},
        {"row": "Compare: seven methods + scores", "page_s": 12.0, "api_s": 11.0, "ratio": 1.09},
    ]
    browser = {"model": "efficientnet_lite0", "cpus": 2, "repeats": 3, "rows": rows}
    md = "\n".join(dashboard_table({"skipped": "no AppTest", "browser": browser}))
    assert "| Synthesis: class_viz 40 steps | 3.00 | 2.50 | 1.20 | 1.10 | < 1.5x |" in md
    assert "| Compare: four methods + scores | 4.00 | 3.20 | 1.25 | nan | < 1.5x, < 5 s |" in md
    assert "| Compare: seven methods + scores | 12.00 | 11.00 | 1.09 | nan | note |" in md
    why = dashboard_table(
        {"skipped": "no AppTest", "browser": {"skipped": "headless Chromium is not installed"}}
    )
    assert why[-1] == "- Real-browser rows skipped: headless Chromium is not installed"
