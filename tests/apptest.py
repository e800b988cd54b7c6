"""Shared helpers of the Streamlit AppTest page tests: a private run store per test module, the app opened on a page,
waiting for background jobs, and the no-errors check."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture(scope="module", autouse=True)
def private_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Import into a test module: its tests write to a run store of their own (CONVLENS_STORE), restored after."""
    old = os.environ.get("CONVLENS_STORE")
    os.environ["CONVLENS_STORE"] = str(tmp_path_factory.mktemp("store"))
    yield
    if old is None:
        os.environ.pop("CONVLENS_STORE", None)
    else:
        os.environ["CONVLENS_STORE"] = old


def ok(at: Any) -> None:
    """No exception and no error element on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_page(page: str, model: str | None = None, /, **query: str) -> Any:
    """The app in AppTest, switched to `page` (e.g. "views/evaluate.py") with `model` chosen in the session and
    `query` as URL parameters (which may name a model of their own); checked for errors."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    if model is not None:
        at.session_state["model"] = model
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(page).run()
    ok(at)
    return at


def wait_jobs(at: Any, what: str, timeout: float = 240.0) -> None:
    """Rerun `at` until its background jobs have all finished (then once more, to show their results)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        jobs = at.session_state["_jobs"] if "_jobs" in at.session_state else {}  # noqa: SIM401
        if jobs and not any(j.running for j in jobs.values()):
            at.run()
            return
        time.sleep(0.3)
        at.run()
    raise AssertionError(f"the {what} job did not finish")
