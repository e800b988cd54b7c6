"""The dashboard as a shared server (issue 17): one engine for every browser session.

- Cold cache: 8 browser sessions start occlusion at once on an empty ONNX cache: no errors, one export per
  (weights, taps, options), every cached graph valid (its SHA-256 record matches), no temporary left behind.
- Memory: 32 browser sessions (rounds of 8) run occlusion and saliency on one backbone; the server's RSS is
  reported after every round, must end under 1.5 GB, and its own memory (anonymous + shared-memory pages, not the
  clean file pages of libraries, whose count depends on the page cache) falls under 1 GB within a minute of the
  tabs closing.
- Denial of service: an uploaded compressed-bomb checkpoint and an endless ONNX `Loop` are refused with messages
  naming their setting while another session keeps getting answers; the bomb costs the server < 1 GB of peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_browser import CHROMIUM, DRIVER, HAVE_SELENIUM, SERVERS, _settle, chrome, serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (pip install selenium)"),
]

PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "horse", "china", "grace_hopper", "flower"]
RUN_LINK = re.compile(r"\?run=([0-9a-f]{16})")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak (VmHWM) memory of a process in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not found for pid {pid}")


def open_tabs(drv, urls: list[str]) -> list[str]:
    """One tab (one Streamlit session) per URL, opened back to back; returns their window handles."""
    handles = []
    for k, url in enumerate(urls):
        if k:
            drv.switch_to.new_window("tab")
        drv.get(url)
        handles.append(drv.current_window_handle)
    return handles


def settle_all(drv, handles: list[str], timeout: float = 400) -> list[str]:
    """Wait for every tab to finish; returns the error texts shown (stException boxes)."""
    from selenium.webdriver.common.by import By

    errors = []
    for h in handles:
        drv.switch_to.window(h)
        _settle(drv, timeout=timeout)
        errors += [e.text[:300] for e in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')]
    return errors


def close_tabs(drv, handles: list[str], keep: str | None = None) -> None:
    for h in handles:
        if h != keep:
            drv.switch_to.window(h)
            drv.close()
    if keep:
        drv.switch_to.window(keep)


def test_cold_cache_eight_sessions_start_occlusion_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"CONVLENS_CACHE": str(cache)}
    with serve(tmp_path / "store", tmp_path, env) as url:
        drv = chrome(tmp_path / "chromium")
        try:
            handles = open_tabs(
                drv,
                [
                    f"{url}/compare?photo={p}&methods=occlusion&go=1&scores=0&backend=onnxruntime"
                    for p in PHOTOS
                ],
            )
            errors = settle_all(drv, handles)
            pages = []
            for h in handles:
                drv.switch_to.window(h)
                pages.append(drv.page_source)
            drv.switch_to.window(handles[0])
            drv.get(f"{url}/benchmarks")  # the page states how many ONNX Runtime sessions the server started
            _settle(drv)
            engine = re.search(r"(\d+) ONNX Runtime sessions started", drv.page_source)
        finally:
            drv.quit()
    assert errors == [], errors
    assert all(len(set(RUN_LINK.findall(p))) == 1 for p in pages), "a session shows no (or several) runs"
    graphs = sorted(p for p in cache.rglob("*.onnx"))
    assert graphs, "nothing was exported"
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    assert leftovers == [], f"temporary files left in the cache: {leftovers}"
    exports = [g for g in graphs if not g.name.startswith("incr-")]
    assert [g.name.split("-")[0] for g in exports] == ["efficientnet_lite0"], [g.name for g in exports]
    plans = {re.sub(r"-(stage|tail).*$", "", g.stem) for g in graphs if g.name.startswith("incr-")}
    assert len(plans) <= 1, f"incremental stages of several plans for one request: {plans}"
    import onnx

    for g in graphs:
        onnx.checker.check_model(str(g))
        rec = g.with_name(g.name + ".sha256")
        assert rec.exists(), f"{g.name} has no SHA-256 record"
        text = rec.read_text()
        digest = hashlib.sha256(g.read_bytes()).hexdigest()
        assert digest in text, f"{g.name} does not match its record"
    assert engine, "the Benchmarks page does not state the engine's session count"
    # one ONNX Runtime session per cached graph (the full graph's runner, each incremental stage), not per user
    assert int(engine.group(1)) == len(graphs), (engine.group(0), [g.name for g in graphs])
    print(
        f"cold cache: 8 sessions, {len(graphs)} graphs cached, {engine.group(1)} ONNX Runtime sessions "
        f"({[g.name[:40] for g in graphs]})"
    )


def test_memory_stays_bounded_over_thirty_two_sessions(tmp_path: Path, record_property) -> None:
    rounds = []
    with serve(tmp_path / "store", tmp_path) as url:
        pid = SERVERS[url].pid
        idle = rss_mb(pid)
        drv = chrome(tmp_path / "chromium")
        try:
            drv.get(f"{url}/")
            _settle(drv)
            home = drv.current_window_handle
            for r in range(4):
                urls = [
                    # occlusion at stride 32 (49 windows, not 169): the sessions' memory is what is measured
                    f"{url}/compare?photo={p}&methods=occlusion,saliency&go=1&scores=0&seed={r}&p.occlusion.stride=32"
                    for p in PHOTOS
                ]
                drv.switch_to.new_window("tab")
                first = drv.current_window_handle
                drv.get(urls[0])
                handles = [first] + open_tabs_after(drv, urls[1:])
                errors = settle_all(drv, handles)
                assert errors == [], errors
                rounds.append(round(rss_mb(pid)))
                close_tabs(drv, handles, keep=home)
            end = rss_mb(pid)
            split = f"anonymous {rss_mb(pid, 'RssAnon'):.0f} MiB, files {rss_mb(pid, 'RssFile'):.0f} MiB"
            closed_at = time.time()
            drv.get("about:blank")  # the last session goes too
            while True:  # within a minute of the tabs closing: the first reading under the bounds, or at 60 s
                after = rss_mb(pid)
                private = rss_mb(pid, "RssAnon") + rss_mb(pid, "RssShmem")
                settled_s = time.time() - closed_at
                if (private < 1024 and after < 1536) or settled_s >= 60:
                    break
                time.sleep(2.0)
        finally:
            drv.quit()
    line = (
        f"shared server memory: idle {idle:.0f} MiB, after each round of 8 sessions {rounds} MiB, "
        f"at the end {end:.0f} MiB ({split}), {after:.0f} MiB ({private:.0f} MiB of it the process's own, not clean file pages) "
        f"{settled_s:.0f} s after the tabs closed"
    )
    print(line)
    record_property("summary_line", line)
    assert end < 1536, line
    # Clean file-backed pages (torch's and ONNX Runtime's libraries) are shared and reclaimable, and how many stay
    # mapped depends on the page cache (325 MiB in a long-lived checkout, 518 MiB in a fresh clone, same code):
    # the minute-after bound is on the server's own memory; the whole RSS is reported and bounded by 1.5 GB.
    assert private < 1024, line
    assert after < 1536, line


def open_tabs_after(drv, urls: list[str]) -> list[str]:
    handles = []
    for url in urls:
        drv.switch_to.new_window("tab")
        drv.get(url)
        handles.append(drv.current_window_handle)
    return handles


def _bomb_checkpoint(path: Path) -> None:
    """A ~2 MB zip `.pt` whose one record decompresses to 2 GiB of zeros (deflate of zeros ~ 1000:1)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            block = bytes(1 << 24)
            for _ in range(128):
                f.write(block)


def _endless_loop_graph(path: Path) -> None:
    """A valid ONNX model (1x3x28x28 image in, 10 scores out) whose Loop runs 2^62 iterations."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v", "one"], ["v2"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 10]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", TensorProto.FLOAT, [1, 10]),
        ],
        [numpy_helper.from_array(np.ones((1, 10), np.float32), "one")],
    )
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Expand", ["m", "shape"], ["start"]),
        helper.make_node("Loop", ["trip", "cond", "start"], ["logits"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "endless",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(np.array(2**62, np.int64), "trip"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.array([1, 10], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _upload_model(drv, url: str, path: Path) -> None:
    """Open the app with the sidebar's checkpoint uploader (`?model=upload`) and hand it the file."""
    from selenium.webdriver.common.by import By

    drv.get(f"{url}/?model=upload")
    _settle(drv)
    inputs = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] input[type="file"]')
    assert inputs, "no checkpoint uploader in the sidebar"
    inputs[0].send_keys(str(path))
    time.sleep(1.0)  # the upload starts a rerun


def _responsive(url: str, seconds: list[float], stop: threading.Event) -> None:
    """Another user: keep asking the server for its health page and record how long each answer takes."""
    while not stop.is_set():
        t0 = time.time()
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=30).read()
            seconds.append(time.time() - t0)
        except OSError:
            seconds.append(float("inf"))
        time.sleep(0.3)


@pytest.fixture(scope="module")
def dos_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Any, Any]]:
    """One server (ONNX probe timeout 4 s) and two browsers for both denial-of-service cases: (url, server pid,
    the uploading user's browser, another user's browser)."""
    tmp = tmp_path_factory.mktemp("dos")
    with serve(tmp / "store", tmp, {"CONVLENS_ONNX_TIMEOUT_S": "4"}) as url:
        drv, other = chrome(tmp / "chromium"), chrome(tmp / "chromium2")
        try:
            yield url, SERVERS[url].pid, drv, other
        finally:
            drv.quit()
            other.quit()


@pytest.mark.parametrize(
    "case", ["bomb", "loop"]
)  # the bomb first: its peak-RSS reading starts from a fresh server
def test_uploads_that_would_take_the_server_down_are_refused(
    tmp_path: Path, case: str, dos_site: tuple[str, int, Any, Any]
) -> None:
    from selenium.webdriver.common.by import By

    url, pid, drv, other = dos_site
    path = tmp_path / ("bomb.pt" if case == "bomb" else "endless.onnx")
    (_bomb_checkpoint if case == "bomb" else _endless_loop_graph)(path)
    setting = "CONVLENS_MAX_CHECKPOINT_MB" if case == "bomb" else "CONVLENS_ONNX_TIMEOUT_S"
    stop, answers = threading.Event(), []
    watcher = threading.Thread(target=_responsive, args=(url, answers, stop), daemon=True)
    try:
        drv.get(f"{url}/")
        _settle(drv)
        before = rss_mb(pid, "VmHWM")
        watcher.start()
        _upload_model(drv, url, path)
        t0 = time.time()
        other.get(f"{url}/")  # another user opens the app meanwhile
        _settle(other, timeout=120)
        other_s = time.time() - t0
        _settle(drv, timeout=120)
        text = drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
        peak = rss_mb(pid, "VmHWM")
    finally:
        stop.set()
    assert setting in text.replace("\n", " "), text[-1500:]
    assert other_s < 60, f"another session waited {other_s:.0f} s for the home page"
    assert max(answers or [0.0]) < 10, f"health answers took up to {max(answers):.1f} s"
    if case == "bomb":
        assert peak - before < 1024, (
            f"refusing the bomb raised the server's peak RSS by {peak - before:.0f} MiB"
        )
    print(
        json.dumps(
            {"case": case, "other_session_s": round(other_s, 1), "peak_rise_mib": round(peak - before)}
        )
    )
