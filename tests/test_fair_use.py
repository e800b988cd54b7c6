"""Fair use on a shared server (issue 17 items 5-6): one heavy run at a time per user and a server-wide limit, with
the place in line shown and Stop working while waiting (the real app in AppTest, several sessions and users); jobs
stop when their browser session ends; the registry's first load is thread-safe in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
CALLS: list[tuple[str, int]] = []  # (user seed marker, steps) of every heavy run that actually started


# ---------------------------------------------------------------------------------------------------- registry


def test_six_threads_calling_run_in_a_fresh_process_all_succeed() -> None:
    """The registry's first load is shared by every thread: none sees a half-filled registry ("unknown method").
    Each thread has its own copy of the backbone, as each dashboard session does (hooks are per module)."""
    code = """
import copy, threading
import accel
from accel.images import sample_image
net, img = accel.load("fashion_cnn"), sample_image("chelsea")
net.layers()  # layer facts once, before sharing (as the dashboard does; tracing them is not thread-safe)
nets = [copy.deepcopy(net) for _ in range(6)]
gate, errors, done = threading.Barrier(6), [], []
def work(i, name):
    gate.wait()
    try:
        done.append(accel.run(name, nets[i], img).kind)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
names = ["saliency", "gradcam", "saliency", "smoothgrad", "gradcam", "saliency"]
threads = [threading.Thread(target=work, args=(i, n)) for i, n in enumerate(names)]
[t.start() for t in threads]
[t.join() for t in threads]
print("RESULT", len(done), len(errors), errors[:2])
"""
    for _ in range(2):  # each run is a new cold process
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), out.stderr[-2000:])
        assert line == "RESULT 6 0 []", line


def test_a_broken_technique_module_does_not_hide_the_others(tmp_path: Path) -> None:
    """A technique module that fails to import is recorded and named; every other technique still loads."""
    code = """
import sys, types, importlib.abc, importlib.machinery
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "accel.methods.attribute.smoothgrad":
            raise RuntimeError("simulated import failure")
sys.meta_path.insert(0, Broken())
from accel import registry
import accel
print("N", len(registry.methods()) > 20, "smoothgrad" in {s.name for s in registry.methods()})
print("B", registry.broken_modules())
try:
    accel.get("smoothgrad")
except accel.BadInput as e:
    print("E", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines[0] == "N True False", out.stderr[-2000:]
    assert lines[1] == "B {'accel.methods.attribute.smoothgrad': 'RuntimeError: simulated import failure'}"
    assert lines[2].startswith("E unknown method 'smoothgrad'; known methods: ") and lines[2].endswith(
        "(1 technique module(s) failed to import: accel.methods.attribute.smoothgrad)"
    )


# ---------------------------------------------------------------------------------------------------- the line


def test_gate_admits_per_user_and_server_wide_in_order() -> None:
    from dashboard.jobs import HeavyGate

    g = HeavyGate(per_user=1, server=2)
    a1 = g.enter("alice", "class_viz")
    a2 = g.enter("alice", "embedding")
    b1 = g.enter("bob", "texture")  # alice's second run waits for alice only: bob goes ahead
    c1 = g.enter("carol", "deepdream")
    assert (a1.admitted, a2.admitted, b1.admitted, c1.admitted) == (True, False, True, False)
    assert (a1.position, a2.position, b1.position, c1.position) == (0, 1, 0, 2)
    assert a2.reason == "your other heavy run must finish first (CONVLENS_HEAVY_PER_USER=1)"
    assert c1.reason == "2 heavy run(s) in progress on the server (CONVLENS_HEAVY_SERVER=2)"
    a1.release()  # alice's first run ends: her second is next in line
    assert a2.admitted and not c1.admitted and c1.position == 1
    assert c1.wait(timeout=0.3) is False
    assert c1.wait(stop=lambda: True) is False  # Stop while waiting
    c1.release()
    assert g.snapshot() == {"running": [("bob", "texture"), ("alice", "embedding")], "waiting": []}
    assert [e[0] for e in g.log] == ["admitted", "queued", "admitted", "queued", "finished", "left"]


def test_gate_never_exceeds_its_limits_under_contention() -> None:
    from dashboard.jobs import HeavyGate

    g = HeavyGate(per_user=1, server=3)
    lock = threading.Lock()
    running: dict[str, int] = {}
    peak = {"server": 0, "user": 0}
    done: list[str] = []

    def work(user: str, i: int) -> None:
        with g.enter(user, f"job{i}") as t:
            assert t.wait(timeout=30)
            with lock:
                running[user] = running.get(user, 0) + 1
                peak["server"] = max(peak["server"], sum(running.values()))
                peak["user"] = max(peak["user"], max(running.values()))
            time.sleep(0.02)
            with lock:
                running[user] -= 1
            done.append(user)

    threads = [threading.Thread(target=work, args=(f"u{i % 5}", i)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(done) == 40 and peak == {"server": 3, "user": 1}
    assert g.snapshot() == {"running": [], "waiting": []}


# ---------------------------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def heavy_method(tmp_path_factory: pytest.TempPathFactory):
    """A registered synthesis technique that runs `steps` x 20 ms and honours should_stop; a private run store."""
    import os

    from accel.registry import _REGISTRY, param, register
    from accel.result import Result

    old = os.environ.get("CONVLENS_STORE")
    os.environ["CONVLENS_STORE"] = str(tmp_path_factory.mktemp("store"))

    @dataclass
    class HeavyP:
        steps: int = param(50, "steps of 20 ms", min=1, max=2000)
        seed: int = param(0, "which run (keeps store keys apart)", min=0, max=1000)

    def heavy(net, img, p, obs):
        CALLS.append((str(p.seed), p.steps))
        for i in range(p.steps):
            if obs.should_stop():
                break
            time.sleep(0.02)
            obs.progress((i + 1) / p.steps, f"step {i + 1}")
        return Result("image", np.full((8, 8, 3), 0.5, np.float32), {"steps_done": i + 1})

    register("t_heavy", "synthesize", HeavyP, needs_image=False)(heavy)
    yield "t_heavy"
    _REGISTRY.pop("t_heavy", None)
    if old is None:
        os.environ.pop("CONVLENS_STORE", None)
    else:
        os.environ["CONVLENS_STORE"] = old


def _session(user: str | None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    if user:
        at.user = {"is_logged_in": True, "email": user}
    at.session_state["model"] = "fashion_cnn"
    at.run()
    at.switch_page("views/synthesis.py").run()
    at.radio(key="syn_method").set_value("t_heavy").run()
    return at


def _set(at, name: str, value: int) -> None:
    key = f"syn.t_heavy.{name}"
    for kind in ("slider", "number_input"):
        widgets = [w for w in getattr(at, kind) if w.key == key]
        if widgets:
            widgets[0].set_value(value)
            return
    raise AssertionError(f"no control {key}")


def _launch(at, steps: int, seed: int) -> None:
    _set(at, "steps", steps)
    _set(at, "seed", seed)
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception, [e.value for e in at.exception]


def _status(at) -> str:
    """Every progress text and message on the page, as the reader sees it (Markdown escapes removed)."""
    parts = [p.proto.text for p in at.get("progress")]
    parts += [str(x.value) for x in (*at.warning, *at.error, *at.info, *at.success)]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))


def _job(at):
    return at.session_state["_jobs"]["syn:t_heavy"]


def _until(pred, timeout: float = 30.0, state=None) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"condition not reached in time; state: {state() if state else '?'}")
        time.sleep(0.05)


def test_second_heavy_run_of_one_user_waits_with_its_place_and_stop_works(heavy_method: str) -> None:
    from dashboard.jobs import GATE

    CALLS.clear()
    first, second = _session("alice@example.com"), _session("alice@example.com")
    _launch(first, 2000, 1)
    _until(lambda: _job(first).state == "running")
    _launch(second, 50, 2)
    second.run()
    assert _job(second).state == "queued"
    text = _status(second)
    assert (
        "t_heavy: waiting in line, position 1 · your other heavy run must finish first (CONVLENS_HEAVY_PER_USER=1)"
        in text
    ), text
    assert [b.label for b in second.button if b.key == "syn:t_heavy_stop"] == ["Stop"]
    # Stop while waiting: the run leaves the line and never starts
    next(b for b in second.button if b.key == "syn:t_heavy_stop").click().run()
    _until(lambda: not _job(second).running, 10)
    second.run()
    assert _job(second).state == "stopped" and _job(second).run_id is None
    assert "t_heavy: stopped while waiting in line; nothing ran" in _status(second)
    assert [c[0] for c in CALLS] == ["1"]  # only the first run ever started
    assert GATE.snapshot()["waiting"] == []
    _job(first).stop()
    _until(lambda: not _job(first).running)
    assert GATE.snapshot() == {"running": [], "waiting": []}


def test_server_limit_queues_other_users_and_admits_them_in_turn(
    heavy_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.jobs import GATE

    monkeypatch.setenv("CONVLENS_HEAVY_SERVER", "2")
    CALLS.clear()
    a, b, c = _session("alice@example.com"), _session("bob@example.com"), _session("carol@example.com")
    _launch(a, 2000, 11)
    _launch(b, 2000, 12)
    _until(lambda: _job(a).state == "running" and _job(b).state == "running")
    _launch(c, 20, 13)
    c.run()
    assert _job(c).state == "queued"
    assert (
        "t_heavy: waiting in line, position 1 · 2 heavy run(s) in progress on the server (CONVLENS_HEAVY_SERVER=2)"
        in _status(c)
    )
    assert GATE.snapshot() == {
        "running": [("alice@example.com", "t_heavy"), ("bob@example.com", "t_heavy")],
        "waiting": [("carol@example.com", "t_heavy")],
    }
    _job(a).stop()  # alice's run ends: carol is admitted and finishes
    _until(lambda: _job(c).state == "done", 30)
    c.run()
    assert _job(c).run_id and not c.exception
    assert sorted(x[0] for x in CALLS) == ["11", "12", "13"]
    _job(b).stop()
    _until(lambda: not _job(b).running)
    assert GATE.snapshot() == {"running": [], "waiting": []}


def test_quick_run_of_a_dataset_method_waits_for_its_turn_in_the_page(heavy_method: str) -> None:
    """The Embeddings page computes in its own script run: a heavy request waits there (in line, Stop shown) until
    the user's other heavy run ends, then runs."""
    from streamlit.testing.v1 import AppTest

    from dashboard.jobs import GATE

    holder = GATE.enter("local", "someone's class_viz")
    assert holder.admitted
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model"] = "fashion_cnn"
    at.run()
    at.switch_page("views/embeddings.py").run()
    at.selectbox(key="emb.embedding.projection").set_value("pca")
    at.selectbox(key="emb.embedding.dataset@fashion_cnn").set_value("samples")
    threading.Timer(2.5, holder.release).start()  # the other run ends in 2.5 s
    t0 = time.perf_counter()
    at.button[0].click().run()
    waited = time.perf_counter() - t0
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert waited >= 2.4
    assert ("queued", "local", "embedding", 1) in GATE.log
    assert "15 points" in re.sub(r"\\(.)", r"\1", "\n".join(x.value for x in at.caption))
    assert GATE.snapshot() == {"running": [], "waiting": []}


def test_jobs_stop_and_uploads_go_when_the_session_ends(heavy_method: str) -> None:
    """What Streamlit does when a browser disconnects (clear the session's resources) stops its jobs, running or
    waiting, and deletes its upload folder."""
    from streamlit.runtime.caching import clear_session_resource_cache

    from dashboard.jobs import GATE

    a, b = _session("dave@example.com"), _session("dave@example.com")
    _launch(a, 2000, 21)
    _until(lambda: _job(a).state == "running")
    _launch(b, 2000, 22)
    assert _job(b).state == "queued"

    from streamlit.testing.v1 import AppTest

    def touch_space() -> None:
        import streamlit as st

        from dashboard.state import session_space

        st.text(str(session_space().dir))

    probe = AppTest.from_function(touch_space, default_timeout=60).run()
    folder = Path(probe.text[0].value)
    assert folder.is_dir()
    clear_session_resource_cache("test session id")  # AppTest's session id; a server does this on disconnect
    _until(lambda: not _job(a).running and not _job(b).running, 10)
    assert _job(a).state == "stopped" and _job(b).state == "stopped" and not folder.exists()
    assert GATE.snapshot() == {"running": [], "waiting": []}


# ---------------------------------------------------------------------------------------------------- browser

PROBE_APP = """
import sys
sys.path.insert(0, {root!r})
import streamlit as st
from dashboard.jobs import GATE, heavy_turn

if st.button("hold"):  # another heavy run of this user holds the only slot
    st.session_state["holder"] = GATE.enter("local", "holder")
if st.button("free") and "holder" in st.session_state:
    st.session_state.pop("holder").release()
if st.button("go"):
    with heavy_turn("work", "w"):
        st.text("RAN")
st.button("refresh")
st.text("LINE " + repr(GATE.snapshot()))
"""


def test_in_page_wait_shows_its_place_and_stop_leaves_the_line_in_a_browser(tmp_path: Path) -> None:
    """In a real browser: a heavy request waiting in its page shows its place; Stop interrupts the wait and gives
    the place back (nothing is left in line), and the next request runs once the slot is free."""
    from selenium.webdriver.common.by import By

    from tests.test_browser import CHROMIUM, DRIVER, HAVE_SELENIUM, chrome

    if not (CHROMIUM and DRIVER and HAVE_SELENIUM):
        pytest.skip("headless Chromium (apt-get install -y chromium chromium-driver) and selenium are needed")
    app = tmp_path / "probe.py"
    app.write_text(PROBE_APP.format(root=str(ROOT)))
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(app),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    drv = None
    try:
        url = f"http://127.0.0.1:{port}"
        _until(lambda: _health(url), 90)
        drv = chrome(tmp_path / "chromium")
        drv.get(url)

        def text() -> str:
            return drv.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text

        def click(label: str) -> None:
            from selenium.common.exceptions import WebDriverException

            t0 = time.time()
            while time.time() - t0 < 20:
                try:
                    for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button'):
                        if b.text.strip().splitlines()[-1:] == [label]:
                            b.click()
                            return
                except WebDriverException:  # re-rendered while we looked
                    pass
                time.sleep(0.2)
            raise AssertionError(f"no button {label!r} in {text()!r}")

        _until(lambda: "LINE" in text(), 60, text)
        click("hold")
        _until(lambda: "'running': [('local', 'holder')]" in text(), 30, text)
        click("go")
        _until(lambda: "work: waiting in line, position 1" in text(), 30, text)
        assert "your other heavy run must finish first (CONVLENS_HEAVY_PER_USER=1)" in text()
        time.sleep(1.5)  # still waiting, still shown
        assert "work: waiting in line, position 1" in text() and "RAN" not in text()
        # the click reruns the page; the waiting run stops at its next update and leaves the line
        click("Stop")
        _until(lambda: "waiting in line" not in text(), 30, text)
        time.sleep(1.0)
        click("refresh")
        _until(lambda: "LINE {'running': [('local', 'holder')], 'waiting': []}" in text(), 30, text)
        assert "RAN" not in text()
        click("free")
        _until(lambda: "LINE {'running': [], 'waiting': []}" in text(), 30, text)
        click("go")
        _until(lambda: "RAN" in text(), 30, text)
    finally:
        if drv is not None:
            drv.quit()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False
