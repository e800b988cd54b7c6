"""Real-browser workflows of issue 21 (headless Chromium against `streamlit run`, one server and one browser for all):
a labelled folder explained with the mistake filter, two models side by side, .npy and full-PNG downloads, a link
that restores a comparison, and a team model from the deployer's models file, listed and explained."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

import accel
from dashboard import browser_bench as bb
from tests.test_browser import _check_no_errors, _settle, _shot, chrome, pytestmark, serve

__all__ = ["pytestmark"]  # the same skips as the other real-browser tests (Chromium, selenium)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data root with a labelled folder (Fashion-MNIST items; one pullover filed as a coat: a sure mistake) and a
    team models file naming fashion_cnn's weights relabelled as "parts"."""
    from accel.fashion_mnist import FASHION_CLASSES, load_fashion_mnist

    root = tmp_path_factory.mktemp("roots")
    folder = root / "fashion_folder"
    x, y = load_fashion_mnist("test")
    for i in range(16):
        name = FASHION_CLASSES[int(y[i])] if i != 1 else "Coat"
        d = folder / name.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / f"{i:02d}.png")
    team = tmp_path_factory.mktemp("team")
    net = accel.load("fashion_cnn")
    assert net.module is not None
    save_file(
        {k: v.contiguous() for k, v in net.module.state_dict().items()}, str(team / "parts.safetensors")
    )
    labels = ", ".join(f'"part-{i}"' for i in range(10))
    (team / "team.toml").write_text(
        '[[model]]\nname = "parts"\narchitecture = "fashion_cnn"\nweights = "parts.safetensors"\n'
        f'input_size = 28\nresize = 28\nchannels = "L"\nmean = [0.2860]\nstd = [0.3530]\nlabels = [{labels}]\n'
    )
    return {"root": root, "folder": folder, "team": team / "team.toml"}


@pytest.fixture(scope="module")
def site(setup: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"CONVLENS_DATA_ROOTS": str(setup["root"]), "CONVLENS_TEAM_MODELS": str(setup["team"])}
    with serve(tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("log"), env) as url:
        yield url


@pytest.fixture(scope="module")
def drv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d: Any = chrome(tmp_path_factory.mktemp("chromium"))
    downloads = tmp_path_factory.mktemp("downloads")
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.downloads = downloads
    try:
        yield d
    finally:
        d.quit()


def _open(d: Any, url: str, timeout: float = 300.0) -> None:
    d.get(url)
    time.sleep(1.0)
    _settle(d, timeout=timeout)


def _wait_text(d: Any, text: str, timeout: float = 600.0) -> None:
    """Wait until `text` is on the page (a background job's result replaces its progress bar when it ends)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in _text(d):
            _settle(d)
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {timeout:.0f} s")


def _text(d: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(d.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]').text)


def test_dataset_folder_with_the_mistake_filter(site: str, drv: Any, setup: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    spec = f"folder:{setup['folder']}"
    q = urllib.parse.urlencode({"model": "fashion_cnn", "dataset": spec, "limit": 16, "methods": "gradcam"})
    _open(drv, f"{site}/dataset?{q}")
    bb.click(drv, "Explain the dataset", 300)
    _wait_text(drv, "top-1 accuracy")
    _check_no_errors(drv, "dataset")
    net = accel.load("fashion_cnn")
    items = list(accel.datasets.get(spec))
    pred = [net.predict(it.image, top=1)[0][0] for it in items]
    truth = [Path(it.id).parent.name for it in items]
    wrong = sum(p.replace("/", "-") != t for p, t in zip(pred, truth))
    assert wrong >= 1
    toggle = next(e for e in drv.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == "mistakes only")
    toggle.click()
    time.sleep(1.0)
    _settle(drv)
    assert f"{wrong} image(s) listed" in _text(drv)
    assert "✗ mistake" in _text(drv) and "✓" not in _text(drv)
    _shot(drv, "dataset_mistakes")


def test_two_models_side_by_side(site: str, drv: Any) -> None:
    q = "model=efficientnet_lite0&photo=chelsea&model2=efficientnet_lite1&methods=gradcam"
    _open(drv, f"{site}/models?{q}", timeout=600)
    _check_no_errors(drv, "models")
    text = _text(drv)
    assert "efficientnet_lite0 · predicts" in text and "efficientnet_lite1 · predicts" in text
    assert "one normalised scale" in text
    _shot(drv, "two_models")


def test_a_link_restores_a_comparison_and_maps_download(site: str, drv: Any) -> None:
    from selenium.webdriver.common.by import By

    q = "model=fashion_cnn&fashion=3&methods=gradcam,saliency&target=5&scores=0&p.gradcam.relu=False&go=1"
    _open(drv, f"{site}/compare?{q}", timeout=600)
    _check_no_errors(drv, "compare from a link")
    text = _text(drv)
    assert (
        text.count("target 5 Sandal") == 2 and "gradcam" in text and "saliency" in text
    )  # both maps explain 5
    url = urllib.parse.unquote(drv.current_url)
    for part in (
        "model=fashion_cnn",
        "fashion=3",
        "methods=gradcam,saliency",
        "target=5",
        "p.gradcam.relu=False",
    ):
        assert part in url, (part, url)
    assert len(drv.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"]')) >= 2
    for label in (".npy", "full PNG"):
        bb.click(drv, label, 300)
    t0 = time.time()
    while time.time() - t0 < 60 and not (
        list(drv.downloads.glob("*.npy")) and list(drv.downloads.glob("*_full.png"))
    ):
        time.sleep(0.5)
    a = np.load(next(drv.downloads.glob("*.npy")), allow_pickle=False)
    assert a.shape == (28, 28) and a.dtype == np.float32
    png = Image.open(next(drv.downloads.glob("*_full.png")))
    assert png.width > 100 and png.height > 28
    _shot(drv, "compare_from_link")


def test_a_team_model_is_listed_and_explained(site: str, drv: Any) -> None:
    _open(drv, f"{site}/compare?model=parts&fashion=3&methods=gradcam&go=1", timeout=600)
    _check_no_errors(drv, "team model")
    text = _text(drv)
    # the sidebar lists it as a team model, and the map explains a class by the team's own label
    assert "team model (fashion_cnn)" in text and "target 1 part-1" in text
    _shot(drv, "team_model")
