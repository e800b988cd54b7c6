"""Page state in the URL both ways (issue 21): a link with model, image, methods, target, scores and method
parameters restores a whole comparison; changing the page rewrites the link."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


def test_a_link_restores_a_comparison_and_the_page_rewrites_it() -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300)
    q = {"model": "fashion_cnn", "fashion": "7", "methods": "gradcam,saliency", "target": "3", "scores": "0"}
    q |= {"p.gradcam.relu": "False", "p.saliency.nonsense": "1", "p.gradcam.layer": "no-such-layer"}
    for k, v in q.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.sidebar.selectbox(key="model").value == "fashion_cnn"
    assert at.session_state["img_source"] == "Fashion-MNIST item" and at.session_state["img_fashion"] == 7
    assert at.multiselect(key="cmp_methods").value == ["gradcam", "saliency"]
    assert at.selectbox(key="cmp_target").value == 3 and at.checkbox(key="cmp_score").value is False
    assert at.checkbox(key="cmp.gradcam.relu").value is False  # the declared parameter, parsed by its type
    # the page writes its state back: the unknown parameter and the bad layer are dropped
    assert at.query_params["p.gradcam.relu"] == "False" and "p.saliency.nonsense" not in at.query_params
    assert "p.gradcam.layer" not in at.query_params and at.query_params["target"] == "3"
    at.multiselect(key="cmp_methods").set_value(["saliency"]).run()
    at.selectbox(key="cmp_target").set_value(5)
    next(
        b for b in at.button if b.label == "Run"
    ).click().run()  # the target sits in the form: Run commits it
    assert at.query_params["methods"] == "saliency" and at.query_params["target"] == "5"
    assert "p.gradcam.relu" not in at.query_params and at.query_params["fashion"] == "7"
    assert at.query_params["model"] == "fashion_cnn"
    # every map offers its raw array and a full-resolution picture (built when clicked)
    labels = [b.label for b in at.get("download_button")]
    assert labels.count(".npy") == 1 and labels.count("full PNG") == 1, labels
    import io

    import numpy as np
    from PIL import Image

    from dashboard.downloads import full_png, npy_bytes
    from dashboard.state import load_run

    run = at.session_state["cmp_runs"][0]
    res = load_run(run["run_id"])[1]
    c = at.session_state["_ctx"]
    assert np.array_equal(np.load(io.BytesIO(npy_bytes(res.data))), res.data)
    fig = Image.open(io.BytesIO(full_png(res, c.net, c.img, "saliency")))
    assert fig.width > c.img.width * 1.5  # 28 px item drawn at least its own size plus a colour bar
