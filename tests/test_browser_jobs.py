"""Background runs in a real browser (headless Chromium against `streamlit run`): a second heavy run waits in line
behind the first, closing the first one's tab stops it (the session ends) so the second runs; and the browser bench
at its smallest (one run each of class_viz and Compare, page vs API) gives well-formed rows whose page results are
the API's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import accel
from dashboard import browser_bench as bb
from tests.test_browser import pytestmark

__all__ = ["pytestmark"]  # the same skips as the other real-browser tests (Chromium, selenium)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("store")
    # a closed tab's session ends 3 s after its websocket goes (the app's default is 30 s): the test waits less
    ttl = {"STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": "3"}
    with bb.serve(store, tmp_path_factory.mktemp("log") / "streamlit.log", ttl) as url:
        yield url, store


@pytest.fixture(scope="module")
def drv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = bb.chrome(tmp_path_factory.mktemp("chromium"))
    try:
        yield d
    finally:
        d.quit()


def _text(d: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(d.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text)


def test_second_heavy_run_queues_and_closing_the_first_tab_stops_it(site: tuple[str, Path], drv: Any) -> None:
    url, _ = site
    first = drv.current_window_handle
    bb.open_page(drv, f"{url}/synthesis?model=efficientnet_lite0")
    bb.set_number(drv, "steps", 2000)
    bb.set_number(drv, "seed", 501)
    bb.click(drv, "Start")
    bb._until(lambda: "step " in _text(drv), 300, "the long run's progress")
    # a second tab (another session of the same user) starts a short run: it waits in line
    drv.switch_to.new_window("tab")
    second = drv.current_window_handle
    bb.open_page(drv, f"{url}/synthesis?model=efficientnet_lite0")
    bb.set_number(drv, "steps", 2)
    bb.set_number(drv, "seed", 502)
    bb.click(drv, "Start")
    bb._until(lambda: "waiting in line, position 1" in _text(drv), 120, "the second run queueing")
    time.sleep(3)
    assert not bb.run_links(drv) and "waiting in line" in _text(
        drv
    )  # still waiting: the first one holds the slot
    # close the first tab: its session ends, its job stops and gives the slot back
    drv.switch_to.window(first)
    drv.close()
    drv.switch_to.window(second)
    bb._until(lambda: bb.run_links(drv), 240, "the second run's result after the first tab closed")
    assert not bb._errors(drv)


def test_browser_bench_rows_at_minimal_size(site: tuple[str, Path], drv: Any) -> None:
    url, store = site
    net = accel.load("efficientnet_lite0")
    methods = ("saliency", "gradcam")
    rows = bb.bench_rows(
        drv, url, store, net, "efficientnet_lite0", repeats=1, steps=3, compare_sets=(("two", methods),)
    )
    assert [r["row"] for r in rows] == ["Synthesis: class_viz 3 steps", "Compare: two methods + scores"]
    for r in rows:
        assert r["page_s"] > 0 and r["api_s"] > 0 and r["ratio"] > 0
        assert len(r["page_runs_s"]) == len(r["api_runs_s"]) == 1
        assert r["agreement"] > 0.99, r  # the page computed what the API computes
    assert rows[1]["maps"] == 2 and rows[1]["methods"] == list(methods)
