"""The Evaluate page (issue 19), in Streamlit's AppTest: the sidebar photo scored by two methods on three metrics
(one of them localisation against typed boxes) in the background; the page's tables hold exactly the numbers of
`accel.evaluate.suite.evaluate` called directly; the stored run reopens through `?run=`; an identical request is
answered from the store; a link restores the form; invalid combinations say so instead of crashing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.apptest import APP, open_page, private_store, wait_jobs
from tests.apptest import ok as _ok

__all__ = ["private_store"]  # autouse: this module's runs go to a store of its own

METHODS = ["saliency", "gradcam"]
METRICS = {
    "faithfulness": ["pixel_flipping"],
    "localisation": ["pointing_game"],
    "complexity": ["sparseness"],
}
BOXES = [[120.0, 20.0, 330.0, 250.0]]  # chelsea's head, in the photo's own pixels


def _app(**query: str) -> Any:
    return open_page("views/evaluate.py", **query)


def _wait(at: Any, timeout: float = 240.0) -> None:
    wait_jobs(at, "evaluation", timeout)


def _submit(at: Any) -> None:
    next(b for b in at.button if b.label == "Evaluate").click().run()


def _shown(at: Any) -> dict[tuple[str, str], tuple[float, Any]]:
    """(method, metric) -> (mean, random map) from every family table on the page."""
    out = {}
    for df in at.dataframe:
        frame = df.value
        if "method" not in frame.columns or "mean" not in frame.columns:
            continue
        for _, r in frame.iterrows():
            out[r["method"], r["metric"]] = (float(r["mean"]), r.get("random map"))
    return out


def test_page_scores_like_the_suite_stores_and_reopens() -> None:
    from accel.evaluate.suite import evaluate

    at = _app()
    at.multiselect(key="ev_methods").set_value(METHODS)
    for fam in ("faithfulness", "localisation", "randomisation", "robustness", "complexity"):
        at.multiselect(key=f"ev_metrics_{fam}").set_value(METRICS.get(fam, []))
    at.text_area(key="ev_boxes").set_value("120,20,330,250")
    _submit(at)
    _wait(at)
    _ok(at)
    job = at.session_state["_jobs"]["ev"]
    assert job.state == "done" and job.run_id
    meta = job.result.meta
    assert not meta["errors"] and not meta["skipped"] and not meta["stopped"]
    shown = _shown(at)
    metrics = [m for ms in METRICS.values() for m in ms]
    assert set(shown) == {(a, b) for a in METHODS for b in metrics}
    # the same inputs through the suite directly give the same numbers
    c = at.session_state["_ctx"]
    direct = evaluate(c.net, [c.img], METHODS, metrics, regions=[BOXES], n_random=1, backend=c.backend)
    assert len(direct["table"]) == len(shown)
    for row in direct["table"]:
        mean, rand = shown[row["method"], row["metric"]]
        assert mean == pytest.approx(row["mean"], rel=1e-6, abs=1e-9)
        assert float(rand) == pytest.approx(row["random_mean"], rel=1e-6, abs=1e-9)
    assert at.query_params["methods"] == ",".join(METHODS)
    assert at.query_params["metrics"] == ",".join(metrics) and at.query_params["on"] == "photo"
    assert at.get("plotly_chart"), "no plot per family"
    # the identical request is answered from the store, without a new job
    _submit(at)
    assert "ev" not in at.session_state["_jobs"] and at.session_state["_slot_runs"]["ev"] == job.run_id
    assert _shown(at) == shown
    # the link reopens the same view from the store
    from streamlit.testing.v1 import AppTest

    link = AppTest.from_file(APP, default_timeout=240)
    link.query_params["run"] = job.run_id
    link.run()
    _ok(link)
    assert _shown(link) == shown and link.get("plotly_chart")


def test_link_restores_the_form_and_invalid_choices_are_explained() -> None:
    at = _app(
        on="dataset", dataset="foolbox:imagenet", limit="3", methods="gradcam,nonsense,saliency",
        metrics="sparseness,pointing_game,nope", targets="label", random="2",
    )  # fmt: skip
    assert at.radio(key="ev_scope").value == "dataset"
    assert at.selectbox(key="ev_source").value == "foolbox:imagenet"
    assert at.number_input(key="ev_limit").value == 3 and at.number_input(key="ev_random").value == 2
    assert at.multiselect(key="ev_methods").value == ["gradcam", "saliency"]
    assert at.multiselect(key="ev_metrics_complexity").value == ["sparseness"]
    assert at.multiselect(key="ev_metrics_localisation").value == ["pointing_game"]
    assert at.multiselect(key="ev_metrics_faithfulness").value == []
    assert at.radio(key="ev_targets").value == "label"
    assert at.query_params["metrics"] == "pointing_game,sparseness" and at.query_params["limit"] == "3"
    # localisation on a dataset has no ground truth: said, nothing runs
    _submit(at)
    _ok(at)
    assert "_jobs" not in at.session_state or "ev" not in at.session_state["_jobs"]
    assert any("pointing_game needs ground truth" in w.value for w in at.warning)
    # on the photo, a malformed box and a box outside the photo are named, nothing runs
    at.radio(key="ev_scope").set_value("photo").run()
    at.text_area(key="ev_boxes").set_value("10,10,50")  # a form's values travel with its submit
    _submit(at)
    _ok(at)
    assert any("four numbers" in w.value for w in at.warning)
    at.text_area(key="ev_boxes").set_value("5000,5000,6000,6000")
    _submit(at)
    _ok(at)
    assert any("outside" in w.value for w in at.warning)
    assert "_jobs" not in at.session_state or "ev" not in at.session_state["_jobs"]
    # no metric at all: said, nothing runs
    for fam in ("localisation", "complexity"):
        at.multiselect(key=f"ev_metrics_{fam}").set_value([])
    _submit(at)
    _ok(at)
    assert any("at least one metric" in w.value for w in at.warning)
    # a dataset run stops when asked: the partial result is stored and says so, and is not the full request's answer
    at.radio(key="ev_scope").set_value("dataset").run()
    at.multiselect(key="ev_metrics_complexity").set_value(["sparseness"])
    at.multiselect(key="ev_methods").set_value(["saliency"])
    at.number_input(key="ev_limit").set_value(20)
    _submit(at)
    at.button(key="ev_stop").click().run()
    _wait(at)
    _ok(at)
    job = at.session_state["_jobs"]["ev"]
    assert job.state == "stopped" and job.result.meta["stopped"] and job.run_id
    assert any("stopped before the end" in w.value for w in at.warning)
    assert at.session_state["_ctx"].store.get(job.run_id).title.endswith("(stopped)")
