"""Concurrency: the dashboard served by `streamlit run` handles 8 browser sessions at once, each running a different
attribution method on a different photo (opened through deep links), without mixing results: every session shows
its own run, the store holds exactly that method on that photo, and the map equals a direct API computation
(no shared hooks or autograd state between sessions)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

import accel
from accel.images import sample_image
from accel.store import RunStore, image_key
from tests.conftest import get_net
from tests.test_browser import CHROMIUM, DRIVER, HAVE_SELENIUM, _settle, chrome, serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver)",
    ),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (pip install selenium)"),
]

# Eight sessions: (photo, method), all different, on the default backbone (efficientnet_lite0).
REQUESTS = [
    ("chelsea", "saliency"),
    ("astronaut", "gradcam"),
    ("coffee", "guided_backprop"),
    ("rocket", "cam"),
    ("horse", "gradcam_pp"),
    ("china", "deconvnet"),
    ("grace_hopper", "smoothgrad"),
    ("flower", "integrated_gradients"),
]
RUN_LINK = re.compile(r"\?run=([0-9a-f]{16})")


def test_eight_sessions_run_different_methods_without_mixing(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    names = accel.images.sample_images()
    reqs = [(p, m) for p, m in REQUESTS if p in names]
    assert len(reqs) >= 8, f"sample photos missing: {sorted(set(p for p, _ in REQUESTS) - set(names))}"
    store_dir = tmp_path / "store"
    with serve(store_dir, tmp_path) as url:
        drv = chrome(tmp_path / "chromium")
        try:
            handles = []
            for k, (photo, method) in enumerate(reqs):
                if k:
                    drv.switch_to.new_window("tab")  # type: ignore[attr-defined]
                # Every tab opens its own websocket session; the script runs start as the pages load.
                drv.get(f"{url}/compare?photo={photo}&methods={method}&go=1&scores=0")  # type: ignore[attr-defined]
                handles.append(drv.current_window_handle)  # type: ignore[attr-defined]
            shown: dict[str, str] = {}
            t0 = time.time()
            for h, (photo, method) in zip(handles, reqs, strict=True):
                drv.switch_to.window(h)  # type: ignore[attr-defined]
                _settle(drv, timeout=300)
                errors = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')  # type: ignore[attr-defined]
                assert not errors, f"{photo}/{method}: {[e.text[:300] for e in errors]}"
                ids = set(RUN_LINK.findall(drv.page_source))  # type: ignore[attr-defined]
                assert len(ids) == 1, f"{photo}/{method}: expected one run link on the page, found {ids}"
                shown[f"{photo}/{method}"] = ids.pop()
            wall = time.time() - t0
        finally:
            drv.quit()  # type: ignore[attr-defined]

    print(f"8 concurrent sessions rendered in {wall:.1f} s after the last tab opened")
    assert len(set(shown.values())) == len(reqs), f"sessions share a run: {shown}"
    store = RunStore(store_dir)
    net = get_net("efficientnet_lite0")
    for photo, method in reqs:
        run = store.get(shown[f"{photo}/{method}"])
        assert run.method == method, f"{photo}/{method} shows a {run.method} run"
        img = sample_image(photo)
        assert run.image_key == image_key(img), f"{photo}/{method} shows a run on another image ({run.title})"
        want = accel.run(method, net, img, **run.params)
        got = run.result.data
        assert got.shape == want.data.shape
        scale = float(np.abs(want.data).max()) or 1.0
        err = float(np.abs(got - want.data).max()) / scale
        assert err < 1e-3, f"{photo}/{method}: map differs from a direct computation (relative {err:.2e})"
