"""The Explain-a-dataset page (issue 21), in Streamlit's AppTest: a labelled set explained in the background with
progress, the mistake filter and confidence sort, the confusion matrix, an identical request answered from the
store, and a link that reopens the same view."""

from __future__ import annotations

from typing import Any

from tests.apptest import APP, private_store, wait_jobs
from tests.apptest import ok as _ok

__all__ = ["private_store"]  # autouse: this module's runs go to a store of its own


def _wait(at: Any, timeout: float = 240.0) -> None:
    wait_jobs(at, "dataset", timeout)


def test_dataset_page_mistakes_confusion_store_and_link() -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model"] = "fashion_cnn"
    at.run()
    at.switch_page("views/dataset.py").run()
    _ok(at)
    at.selectbox(key="ds_source").set_value("fashion_mnist:test")
    at.number_input(key="ds_limit").set_value(30)
    at.multiselect(key="ds_methods").set_value(["gradcam"])
    at.button[0].click().run()
    _wait(at)
    _ok(at)
    job = at.session_state["_jobs"]["ds"]
    res = job.result
    table = res.meta["table"]
    wrong = sum(1 for r in table if r["correct"] is False)
    assert len(table) == 30 and res.extras["maps"].shape == (30, 1, 28, 28)
    assert at.metric[1].value == f"{res.meta['accuracy']:.1%}" and wrong == round(
        30 * (1 - res.meta["accuracy"])
    )
    assert at.get("plotly_chart"), "no confusion matrix"
    frame = at.dataframe[0].value
    assert len(frame) == 30 and list(frame["probability"]) == sorted(frame["probability"], reverse=True)
    assert "None" not in frame.astype(str).to_numpy().ravel().tolist()
    at.toggle(key="dsv_mistakes").set_value(True).run()
    frame = at.dataframe[0].value
    assert len(frame) == wrong and set(frame["correct"]) <= {"no"}
    assert f"{min(12, wrong)} drawn below" in " ".join(c.value for c in at.caption)
    # the identical request is answered from the store, without a new job
    at.button[0].click().run()
    assert "ds" not in at.session_state["_jobs"] and at.session_state["_slot_runs"]["ds"] == job.run_id
    # the link reopens the same view
    link = AppTest.from_file(APP, default_timeout=240)
    link.query_params["run"] = job.run_id
    link.run()
    _ok(link)
    assert len(link.dataframe[0].value) == 30 and link.get("plotly_chart")
    assert link.metric[1].value == f"{res.meta['accuracy']:.1%}"
