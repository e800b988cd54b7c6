"""Real browser: `streamlit run` on a free port, headless Chromium (Debian `chromium` + `chromium-driver`, driven by
selenium) loads every page, waits for it to render, saves a screenshot, and fails on any exception or error
element. Compare and Embeddings are also run once so their screenshots show results."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard import browser_bench as bb

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
PAGES = {
    "home": "",
    "compare": "compare",
    "dataset": "dataset",
    "models": "models",
    "evaluate": "evaluate",
    "concepts": "concepts",
    "filters": "filters",
    "patches": "patches",
    "embeddings": "embeddings",
    "synthesis": "synthesis",
    "inversion": "inversion",
    "style": "style",
    "benchmarks": "benchmarks",
    "runs": "runs",
}
CHROMIUM, DRIVER, ERRORS = bb.CHROMIUM, bb.DRIVER, bb.ERRORS

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (pip install selenium)"),
]


# url -> the server process of every dashboard `serve` has running (tests read its memory); the bench's own table
SERVERS = bb.SERVERS


@contextlib.contextmanager
def serve(store: Path, logdir: Path, env_extra: dict[str, str] | None = None) -> Iterator[str]:
    """The dashboard served by `streamlit run` on a free local port with run store `store` (the browser bench's
    server, with this checkout's model cache); yields its URL (its process is SERVERS[url])."""
    env = {"CONVLENS_CACHE": os.environ.get("CONVLENS_CACHE", str(ROOT / ".cache" / "convlens"))}
    log = logdir / "streamlit.log"
    try:
        with bb.serve(store, log, {**env, **(env_extra or {})}) as url:
            yield url
    except RuntimeError as e:  # did not start: the log tail is in the message
        pytest.fail(str(e))
    finally:
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        if "Traceback" in tail:
            print(f"streamlit log tail:\n{tail}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard served by `streamlit run` on a free local port, with a private run store."""
    with serve(tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("log")) as url:
        yield url


def chrome(profile: Path) -> object:
    """Headless Chromium via selenium, with background tabs kept running (several sessions at once)."""
    return bb.chrome(profile)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    drv = chrome(tmp_path_factory.mktemp("chromium"))
    try:
        yield drv
    finally:
        drv.quit()  # type: ignore[attr-defined]


def _settle(drv, timeout: float = 240.0) -> None:
    """Wait until the app has rendered and no script run is in progress (the "running" status widget is gone)."""
    from selenium.webdriver.common.by import By

    t0 = time.time()
    quiet_since = None
    while time.time() - t0 < timeout:
        app = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')
        running = drv.find_elements(
            By.CSS_SELECTOR,
            '[data-testid="stStatusWidget"], [data-testid="stSkeleton"], [data-testid="stSpinner"], .stSpinner',
        )
        title = drv.find_elements(By.CSS_SELECTOR, "h1")
        if app and title and not running:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 1.5:  # stayed idle: the run has finished, not just paused
                return
        else:
            quiet_since = None
        time.sleep(0.25)
    raise AssertionError(f"page did not finish rendering in {timeout:.0f} s")


def _check_no_errors(drv, page: str) -> None:
    from selenium.webdriver.common.by import By

    bad = drv.find_elements(By.CSS_SELECTOR, ERRORS)
    assert not bad, f"{page}: error element(s) on the page: {[b.text[:300] for b in bad]}"


def _shot(drv, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    drv.save_screenshot(str(path))
    return path


def _pick_model(drv, name: str) -> None:
    """Choose a backbone in the sidebar's first selectbox by typing its name."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = drv.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"] [data-testid="stSelectbox"] input')
    box.click()
    box.send_keys(name)
    box.send_keys(Keys.ENTER)
    time.sleep(1.0)


def _click_point(drv, trace: int, index: int) -> None:
    """Click data point `index` of scatter trace `trace` (screen position from Plotly's own axis mapping)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    plot = drv.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    time.sleep(0.5)
    drag = plot.find_element(By.CSS_SELECTOR, ".nsewdrag")
    dx, dy = drv.execute_script(
        """const gd = arguments[0], t = gd._fullData[arguments[1]], i = arguments[2];
        const fl = gd._fullLayout, r = arguments[3].getBoundingClientRect();
        return [fl.xaxis.l2p(t.x[i]) - r.width / 2, fl.yaxis.l2p(t.y[i]) - r.height / 2];""",
        plot,
        trace,
        index,
        drag,
    )
    ActionChains(drv).move_to_element_with_offset(drag, int(round(dx)), int(round(dy))).click().perform()
    time.sleep(1.0)


def test_every_page_renders_without_errors(server: str, browser) -> None:
    timings = {}
    for name, path in PAGES.items():
        t0 = time.perf_counter()
        browser.get(f"{server}/{path}")
        _settle(browser)
        timings[name] = time.perf_counter() - t0
        _check_no_errors(browser, name)
        assert _shot(browser, name).stat().st_size > 10_000
    browser.get(f"{server}/")
    _settle(browser)
    # warm switches through the sidebar navigation (no reload: the same session, caches warm)
    switches = {}
    for title in ("Compare", "Embeddings", "Synthesis", "Runs", "Home"):
        switches[title] = _nav_switch(browser, title)
        _check_no_errors(browser, title)
    print("full page load (s):", {k: round(v, 1) for k, v in timings.items()})
    print("warm page switch via navigation (s):", {k: round(v, 2) for k, v in switches.items()})


def _nav_switch(drv, title: str, timeout: float = 60.0) -> float:
    """Click the navigation link `title`; seconds until its page has rendered and no run is in progress."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    heading = {"Home": "convlens", "Compare": "Compare attribution methods"}.get(title, title)
    t0 = None
    for _ in range(20):
        try:
            links = [
                a
                for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] a')
                if a.text.strip().splitlines()[-1:] == [title]
            ]
            assert links, f"no navigation link {title!r}"
            t0 = time.perf_counter()
            links[0].click()
            break
        except StaleElementReferenceException:
            time.sleep(0.2)
    assert t0 is not None, f"could not click the navigation link {title!r}"
    while time.perf_counter() - t0 < timeout:
        try:
            h1 = [h.text for h in drv.find_elements(By.CSS_SELECTOR, "h1")]
            busy = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        except StaleElementReferenceException:
            continue
        if heading in h1 and not busy:
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise AssertionError(f"page {title!r} did not render in {timeout:.0f} s")


def test_compare_and_embeddings_with_results(server: str, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/compare")
    _settle(browser)
    bb.click(browser, "Run", 300)
    time.sleep(1.0)
    _settle(browser, timeout=600)
    _check_no_errors(browser, "compare (after Run)")
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"]')
    assert "?run=" in browser.page_source
    _shot(browser, "compare_results")

    browser.get(f"{server}/embeddings")
    _settle(browser)
    _pick_model(browser, "fashion_cnn")  # 2,000 Fashion-MNIST items: a quick, well-separated map
    _settle(browser)
    bb.click(browser, "Compute", 300)
    time.sleep(1.0)
    _settle(browser, timeout=600)
    _check_no_errors(browser, "embeddings (after Compute)")
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    _shot(browser, "embeddings_results")
    # click one point of the WebGL scatter: the panel opens the item with its feature/pixel neighbours
    _click_point(browser, 0, 5)
    _settle(browser, timeout=600)
    _check_no_errors(browser, "embeddings (after selecting a point)")
    assert "nearest in feature space" in browser.page_source.lower()
    _shot(browser, "embeddings_selected")

    browser.get(f"{server}/runs")
    _settle(browser)
    _check_no_errors(browser, "runs (with results)")
    _shot(browser, "runs_results")
