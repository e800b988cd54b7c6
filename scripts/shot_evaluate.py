"""The README screenshot of the Evaluate page: `streamlit run` on a free port (tests/test_browser.serve, private run
store), headless Chromium opens /evaluate with its form in the URL, types a ground-truth box for chelsea's head,
presses Evaluate, waits for the background run and saves the whole page.

Usage: ``python scripts/shot_evaluate.py [docs/screenshots/evaluate.png]`` (needs chromium, chromedriver, selenium).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.test_browser import _check_no_errors, _settle, chrome, serve  # noqa: E402

QUERY = (
    "on=photo&methods=saliency,guided_backprop,gradcam&random=1"
    "&metrics=pixel_flipping,pointing_game,relevance_mass_accuracy,random_logit,sparseness,complexity"
)
BOX = "150,10,320,200"  # chelsea's head, in the photo's pixels


def main(out: Path) -> None:
    """Run the page once in a real browser and save its screenshot to `out`."""
    tmp = Path(tempfile.mkdtemp())
    with serve(tmp / "store", tmp) as url:
        drv = chrome(tmp / "chromium")
        drv.set_window_size(1500, 2600)
        try:
            drv.get(f"{url}/evaluate?{QUERY}")
            _settle(drv)
            summary = [e for e in drv.find_elements(By.CSS_SELECTOR, "summary") if "ground truth" in e.text]
            summary[0].click()
            time.sleep(1)
            drv.find_element(By.CSS_SELECTOR, "textarea").send_keys(BOX)
            time.sleep(1)
            [b for b in drv.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "Evaluate"][
                0
            ].click()
            t0 = time.time()
            while time.time() - t0 < 600:
                time.sleep(2)
                done = drv.find_elements(By.XPATH, "//*[contains(text(), 'Complexity')]")
                if done and not drv.find_elements(By.XPATH, "//button[contains(., 'Stop')]"):
                    break
            _settle(drv)
            time.sleep(3)
            _check_no_errors(drv, "evaluate")
            h = drv.execute_script("return document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            drv.set_window_size(1500, min(4000, int(h) + 150))
            time.sleep(2)
            out.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(out))
            print(f"saved {out} ({time.time() - t0:.0f} s after pressing Evaluate)")
        finally:
            drv.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "screenshots" / "evaluate.png"))
