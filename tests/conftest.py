"""Shared fixtures: real photos and real packaged backbones, loaded once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests never reach a hub; exports are cached inside the repo (ignored by git) so reruns are quick.
os.environ.setdefault("CONVLENS_OFFLINE", "1")
os.environ.setdefault("CONVLENS_CACHE", str(ROOT / ".cache" / "convlens"))

ARTIFACTS = ROOT / "artifacts" / "tests"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder where tests save images for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


_NETS: dict = {}


def get_net(name: str):
    """A packaged backbone, loaded once per test session."""
    import accel

    if name not in _NETS:
        _NETS[name] = accel.load(name)
    return _NETS[name]


@pytest.fixture(scope="session")
def lite0():
    return get_net("efficientnet_lite0")


@pytest.fixture(scope="session")
def chelsea():
    from accel.images import sample_image

    return sample_image("chelsea")


@pytest.fixture(scope="session")
def imagenet_photos():
    """foolbox's 20 labelled ImageNet photos as (PIL image, label)."""
    import accel
    from accel.images import foolbox_imagenet

    items = foolbox_imagenet()
    if not items:
        pytest.skip("foolbox photos are not installed (pip install --no-deps foolbox==3.3.4)")
    return [(accel.open_image(p), lab) for p, lab in items]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the summary lines tests record with record_property("summary_line", ...) (the bad-input count)."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for rep in reports
        if getattr(rep, "when", None) == "call"
        for key, value in getattr(rep, "user_properties", ())
        if key == "summary_line"
    ]
    import sys

    fuzzkit = sys.modules.get("tests.fuzzkit")
    if fuzzkit is not None and fuzzkit.REPORTS:  # byte-level fuzzing: one line per domain and the total
        reps = list(fuzzkit.REPORTS.values())
        lines += [r.line() for r in reps]
        tried, escapes = sum(r.tried for r in reps), sum(len(r.escapes) for r in reps)
        secs = sum(r.seconds for r in reps)
        lines.append(f"byte fuzzing: {tried} generated inputs, {escapes} escapes, {secs:.1f} s")
    if lines:
        terminalreporter.section("summary")
        for line in lines:
            terminalreporter.write_line(str(line))


# Under pytest-xdist (`make test` runs `-n 2`) the workers share the cores: each computes on its share of them, so
# torch's and ONNX Runtime's thread pools (which spin while they wait) never oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _share = str(max(1, _cores // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
    for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CONVLENS_THREADS"):
        os.environ.setdefault(_v, _share)


@pytest.fixture(scope="module", autouse=True)
def fresh_app_session() -> Iterator[None]:
    """Each test module's AppTest apps start from a new dashboard session. AppTest runs every app of a process as
    one session ("test session id"), so its session-scoped resources (uploads, jobs) would otherwise follow one
    module's tests into the next (which modules share a process depends on how pytest-xdist shares out the files).
    After the module, that session ends as Streamlit ends one: its session caches are released (uploads deleted)."""
    yield
    import sys

    if "dashboard.state" in sys.modules:
        from streamlit.runtime.caching.cache_resource_api import clear_session_cache

        clear_session_cache("test session id")
