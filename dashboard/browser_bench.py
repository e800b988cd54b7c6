"""Real-browser timings of the heavy pages for `convlens bench`: headless Chromium against `streamlit run`, click to
result, alternating with the same work through the API (`accel.run`) in this process, medians of each.

Rows: class_viz on Synthesis (a background job with live progress), Compare with the default four methods (maps and
their faithfulness scores), and optionally Compare with seven methods. `python -m dashboard.browser_bench` prints one
JSON object; {"skipped": why} when Chromium, chromedriver or selenium are absent."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FOUR = (
    "gradcam",
    "guided_backprop",
    "integrated_gradients",
    "saliency",
)  # Compare's default (featured) methods
SEVEN = (*FOUR, "smoothgrad", "occlusion", "gradcam_pp")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "horse", "camera", "coins", "china", "brick", "grass")
SCORE_STEPS = 16  # Compare's default points per deletion/insertion curve
CPU: dict[str, float] = {}  # CPU seconds of the last page run (the server process) and the last API run
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
BUSY = '[data-testid="stStatusWidget"], [data-testid="stSkeleton"], [data-testid="stSpinner"]'


def missing() -> str | None:
    """Why the browser bench cannot run here (None when it can)."""
    if not (CHROMIUM and DRIVER):
        return "headless Chromium is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


SERVERS: dict[str, subprocess.Popen[bytes]] = {}  # url -> the `streamlit run` process serving it


def server_cpu(url: str) -> float | None:
    """CPU seconds (all threads, user + system) the server at `url` has used so far; None off Linux."""
    proc = SERVERS.get(url)
    try:
        assert proc is not None
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AssertionError, OSError, ValueError, IndexError):
        return None


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(store: Path, log_path: Path, env_extra: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on a free local port with run store `store`; yields its URL."""
    env = dict(os.environ)
    env.update(CONVLENS_STORE=str(store), CONVLENS_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.update(env_extra or {})
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true"]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"streamlit did not start: {log.read()[-2000:]}")
                time.sleep(0.5)
            SERVERS[url] = proc
            yield url
        finally:
            SERVERS.pop(url, None)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def chrome(profile: Path) -> Any:
    """Headless Chromium via selenium (background tabs keep running, as a user's foreground tab does)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--disable-quic",
        "--window-size=1500,1900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(180)
    return drv


def _until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll `cond()` until it is truthy (stale elements retried); its value, or RuntimeError after `timeout`."""
    from selenium.common.exceptions import WebDriverException

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            v = cond()
        except WebDriverException:
            v = None
        if v:
            return v
        time.sleep(poll)
    raise RuntimeError(f"browser bench: {what} did not happen in {timeout:.0f} s")


# Resolves (inside the page) once `n` run links are shown or an error is: a MutationObserver, so the bench costs the
# browser nothing while it waits (polling through WebDriver 20 times a second cost Chromium about 0.5 core, taken
# from the server it measures on a 2-core machine).
WAIT_JS = """
const [n, errors, done] = arguments;
const ready = () => document.querySelectorAll('[data-testid="stMain"] a[href*="run="]').length >= n
  || document.querySelectorAll(errors).length > 0;
if (ready()) { done(true); return; }
const watch = new MutationObserver(() => { if (ready()) { watch.disconnect(); done(true); } });
watch.observe(document.body, {childList: true, subtree: true, attributes: true});
"""


def wait_for_links(drv: Any, n: int, timeout: float, what: str) -> None:
    """Block until the page shows `n` run links or an error (watched in the page, no polling); RuntimeError after
    `timeout` seconds."""
    from selenium.common.exceptions import TimeoutException

    drv.set_script_timeout(timeout)
    try:
        drv.execute_async_script(WAIT_JS, n, ERRORS)
    except TimeoutException:
        raise RuntimeError(f"browser bench: {what} did not happen in {timeout:.0f} s") from None


def _errors(drv: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text[:300] for e in drv.find_elements(By.CSS_SELECTOR, ERRORS)]


def open_page(drv: Any, url: str, timeout: float = 300.0) -> None:
    """Load `url` and wait until the app has rendered and stayed idle for a second."""
    from selenium.webdriver.common.by import By

    drv.get(url)
    quiet: list[float] = []

    def idle() -> bool:
        ready = drv.find_elements(By.CSS_SELECTOR, "h1") and not drv.find_elements(By.CSS_SELECTOR, BUSY)
        if not ready:
            quiet.clear()
            return False
        quiet.append(time.perf_counter())
        return quiet[-1] - quiet[0] > 1.0

    _until(idle, timeout, f"{url} rendering", poll=0.2)
    if _errors(drv):
        raise RuntimeError(f"browser bench: errors on {url}: {_errors(drv)}")


# The button labelled `label`, found inside the page in one WebDriver round trip (reading each button's text through
# WebDriver took 0.44 s on Compare's 51 buttons, and the bench used to count that search as page time).
FIND_BUTTON_JS = """
const label = arguments[0];
for (const b of document.querySelectorAll('button')) { if (b.innerText.trim() === label) return b; }
return null;
"""


def find_button(drv: Any, label: str, timeout: float = 60.0) -> Any:
    """The button labelled `label` once it is on the page, scrolled into view (not clicked)."""
    b = _until(lambda: drv.execute_script(FIND_BUTTON_JS, label), timeout, f"a {label!r} button")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", b)
    return b


def click(drv: Any, label: str, timeout: float = 60.0) -> None:
    """Click the button labelled `label` once it is on the page (retried while the page redraws or covers it)."""
    from selenium.common.exceptions import WebDriverException

    t0 = time.perf_counter()
    while True:
        b = find_button(drv, label, max(1.0, timeout - (time.perf_counter() - t0)))
        try:
            b.click()
            return
        except WebDriverException:  # stale (redrawn) or covered for a moment
            if time.perf_counter() - t0 > timeout:
                raise
            time.sleep(0.2)


def set_number(drv: Any, label: str, value: int) -> None:
    """Type `value` into the number box labelled `label` (committed when the form is submitted)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = _until(
        lambda: drv.find_elements(By.CSS_SELECTOR, f'input[aria-label="{label}"]'), 30, f"a {label!r} box"
    )[0]
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))
    box.send_keys(Keys.TAB)


def run_links(drv: Any) -> list[str]:
    """The shareable run links shown in the page's main area (one per finished result)."""
    from selenium.webdriver.common.by import By

    return [
        a.get_attribute("href") or ""
        for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] a[href*="run="]')
    ]


# ---------------------------------------------------------------------------------------------------- the rows


def _run_ids(drv: Any) -> list[str]:
    return [urllib.parse.parse_qs(urllib.parse.urlparse(h).query).get("run", [""])[0] for h in run_links(drv)]


def page_class_viz(
    drv: Any, url: str, steps: int, seed: int, model: str = "efficientnet_lite0"
) -> tuple[float, str]:
    """Seconds from Start to the stored result on the Synthesis page (a fresh session; `seed` keeps the request new
    to the store), and the result's run id."""
    open_page(drv, f"{url}/synthesis?model={model}")
    set_number(drv, "steps", steps)
    set_number(drv, "seed", seed)
    start = find_button(drv, "Start")
    c0, t0 = server_cpu(url), time.perf_counter()
    start.click()
    wait_for_links(drv, 1, 900, "the class_viz result")
    dt, c1 = time.perf_counter() - t0, server_cpu(url)
    CPU["page"] = c1 - c0 if c0 is not None and c1 is not None else float("nan")
    if _errors(drv):
        raise RuntimeError(f"browser bench: class_viz failed on the page: {_errors(drv)}")
    return dt, _run_ids(drv)[0]


def api_class_viz(net: Any, steps: int, seed: int) -> tuple[float, Any]:
    """Seconds for the same class_viz run through `accel.run`, and its result."""
    import accel

    c0, t0 = _cpu(), time.perf_counter()
    res = accel.run("class_viz", net, None, steps=steps, seed=seed)
    CPU["api"] = _cpu() - c0
    return time.perf_counter() - t0, res


def page_compare(
    drv: Any, url: str, photo: str, methods: tuple[str, ...], model: str = "efficientnet_lite0"
) -> tuple[float, list[str]]:
    """Seconds from Run until every map is drawn with its link on Compare (maps and their faithfulness scores), and
    the maps' run ids in the page's order. `photo` must be new to the server's store (nothing answered from it)."""
    open_page(drv, f"{url}/compare?model={model}&photo={photo}&methods={','.join(methods)}")
    run = find_button(drv, "Run")
    c0, t0 = server_cpu(url), time.perf_counter()
    run.click()
    wait_for_links(drv, len(methods), 900, "the Compare maps")
    dt, c1 = time.perf_counter() - t0, server_cpu(url)
    CPU["page"] = c1 - c0 if c0 is not None and c1 is not None else float("nan")
    if _errors(drv):
        raise RuntimeError(f"browser bench: Compare failed on the page: {_errors(drv)}")
    return dt, _run_ids(drv)


def api_compare(net: Any, photo: str, methods: tuple[str, ...]) -> tuple[float, list[Any]]:
    """Seconds for the same Compare request through the API (each method's map, then their deletion/insertion
    scores in one batched sweep, as the page computes by default), and the maps."""
    import accel
    from accel.evaluate import deletion_insertion_many
    from accel.images import sample_image

    img = sample_image(photo)
    c0, t0 = _cpu(), time.perf_counter()
    maps = [accel.run(m, net, img) for m in methods]
    targets = [_target(r.meta) for r in maps]
    deletion_insertion_many(net, img, [r.data for r in maps], targets, steps=SCORE_STEPS, backend="auto")
    CPU["api"] = _cpu() - c0
    return time.perf_counter() - t0, maps


def _target(meta: dict[str, Any]) -> int | None:
    t = meta.get("target")
    if isinstance(t, dict):
        t = t.get("index")
    return t if isinstance(t, int) else None


def agreement(store: Path, run_ids: list[str], results: list[Any]) -> float:
    """The worst correlation between a page result (read back from the server's store) and the API's (1.0 = the
    same numbers); -1.0 when a result is missing or its shape differs."""
    import numpy as np

    from accel.store import RunStore

    if len(run_ids) != len(results) or not results:
        return -1.0
    rs = RunStore(store)
    worst = 1.0
    for rid, res in zip(run_ids, results, strict=True):
        a = np.asarray(rs.get(rid).result.data, dtype=np.float64).ravel()
        b = np.asarray(res.data, dtype=np.float64).ravel()
        if a.shape != b.shape:
            return -1.0
        same = np.allclose(a, b, rtol=1e-4, atol=1e-6)
        worst = min(worst, 1.0 if same else float(np.corrcoef(a, b)[0, 1]))
    return worst


def _say(what: str, page: float, api: float) -> None:
    print(
        f"{what}: page {page:.2f} s (server CPU {CPU.get('page', float('nan')):.2f} s), API {api:.2f} s "
        f"(CPU {CPU.get('api', float('nan')):.2f} s)",
        file=sys.stderr,
        flush=True,
    )


def _row(
    name: str, page: list[float], api: list[float], cpu: list[tuple[float, float]], **extra: Any
) -> dict[str, Any]:
    """Medians of the wall times and their ratio, and the CPU seconds each side used (the server's for the page:
    on a loaded machine the CPU ratio says what the page itself costs beyond the work)."""
    p, a = statistics.median(page), statistics.median(api)
    pc, ac = statistics.median(c[0] for c in cpu), statistics.median(c[1] for c in cpu)
    return {
        "row": name,
        "page_s": p,
        "api_s": a,
        "ratio": p / a if a > 0 else float("inf"),
        "page_cpu_s": pc,
        "api_cpu_s": ac,
        "cpu_ratio": pc / ac if ac > 0 else float("nan"),
        "page_runs_s": page,
        "api_runs_s": api,
        **extra,
    }


def bench_rows(
    drv: Any,
    url: str,
    store: Path,
    net: Any,
    model: str,
    *,
    repeats: int = 3,
    steps: int = 40,
    compare_sets: tuple[tuple[str, tuple[str, ...]], ...] = (("four", FOUR),),
    warm: bool = True,
) -> list[dict[str, Any]]:
    """Each heavy page's row: the page (click to result) alternating with the API, `repeats` times, after one
    untimed warm-up of each (model load, ONNX Runtime session, the first copy of the backbone). Each row says how
    far the page's results are from the API's (`agreement`, 1.0 = identical)."""
    rows = []
    if warm:
        page_class_viz(drv, url, 2, 10_000, model)
        api_class_viz(net, 2, 10_000)
    page, api, agree, cpu = [], [], [], []
    for k in range(repeats):
        dt, rid = page_class_viz(drv, url, steps, k, model)
        page.append(dt)
        da, res = api_class_viz(net, steps, k)
        api.append(da)
        cpu.append((CPU["page"], CPU["api"]))
        agree.append(agreement(store, [rid], [res]))
        _say(f"class_viz {steps} steps", dt, da)
    rows.append(_row(f"Synthesis: class_viz {steps} steps", page, api, cpu, agreement=min(agree)))
    photos = iter(PHOTOS)
    if warm and compare_sets:
        page_compare(drv, url, next(photos), compare_sets[0][1][:1], model)
        api_compare(net, PHOTOS[0], compare_sets[0][1][:1])
    for what, methods in compare_sets:
        page, api, agree, shown, cpu = [], [], [], [], []
        for _ in range(repeats):
            photo = next(photos)
            dt, rids = page_compare(drv, url, photo, methods, model)
            page.append(dt)
            shown.append(len(rids))
            da, maps = api_compare(net, photo, methods)
            api.append(da)
            cpu.append((CPU["page"], CPU["api"]))
            agree.append(agreement(store, rids, maps))
            _say(f"Compare {what} on {photo}", dt, da)
        rows.append(
            _row(
                f"Compare: {what} methods + scores",
                page,
                api,
                cpu,
                methods=list(methods),
                maps=min(shown),
                agreement=min(agree),
            )
        )
    return rows


def bench_browser(
    repeats: int = 3, steps: int = 40, seven: bool = True, model: str = "efficientnet_lite0"
) -> dict[str, Any]:
    """The browser rows on a fresh server and browser (see bench_rows); {"skipped": why} without Chromium."""
    why = missing()
    if why:
        return {"skipped": why}
    import accel

    work = Path(tempfile.mkdtemp(prefix="convlens-browser-bench-"))
    out: dict[str, Any] = {"model": model, "repeats": repeats, "cpus": os.cpu_count()}
    net = accel.load(model)
    sets = (("four", FOUR), ("seven", SEVEN)) if seven else (("four", FOUR),)
    try:
        with serve(work / "store", work / "streamlit.log") as url:
            drv = chrome(work / "chromium")
            try:
                out["rows"] = bench_rows(
                    drv, url, work / "store", net, model, repeats=repeats, steps=steps, compare_sets=sets
                )
            finally:
                drv.quit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--no-seven", action="store_true", help="skip Compare with seven methods")
    a = ap.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    print(json.dumps(bench_browser(a.repeats, a.steps, not a.no_seven)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
