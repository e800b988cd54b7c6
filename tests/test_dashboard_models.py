"""Two models side by side (issue 21), in Streamlit's AppTest: the same image and methods on two backbones that share
labels explain the same class on one colour scale, each model's prediction is shown, and the URL carries the choice
both ways."""

from __future__ import annotations

from tests.apptest import APP, private_store

__all__ = ["private_store"]  # autouse: this module's runs go to a store of its own


def test_two_models_same_target_one_scale_and_url_both_ways() -> None:
    from streamlit.testing.v1 import AppTest

    import accel
    from accel.images import sample_image

    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["model2"] = "efficientnet_lite1"
    at.query_params["methods"] = "gradcam"
    at.query_params["scale"] = "absolute"
    at.run()
    at.switch_page("views/models.py").run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.selectbox(key="m2_model").value == "efficientnet_lite1"  # URL -> page
    assert (
        at.multiselect(key="m2_methods").value == ["gradcam"] and at.radio(key="m2_scale").value == "absolute"
    )
    text = " ".join(m.value for m in at.markdown)
    a, b = accel.load("efficientnet_lite0"), accel.load("efficientnet_lite1")
    img = sample_image("chelsea")
    top_a = a.predict(img, top=1)[0][0]
    assert f"predicts {top_a}" in text and f"predicts {b.predict(img, top=1)[0][0]}" in text
    # both maps explain model A's top class (shared labels)
    want_t = a.labels.index(top_a)
    store = accel.store.RunStore()
    runs = [r for r in store.list() if r.method == "gradcam"]
    assert {r.model for r in runs} == {"efficientnet_lite0", "efficientnet_lite1"}
    assert all(r.params.get("target") == want_t for r in runs)
    # page -> URL
    at.multiselect(key="m2_methods").set_value(["gradcam", "saliency"]).run()
    assert (
        at.query_params["methods"] == "gradcam,saliency" and at.query_params["model2"] == "efficientnet_lite1"
    )
    caps = [cap for im in at.get("image") for cap in im.captions]
    assert caps.count("gradcam") == 2 and caps.count("saliency") == 2 and "one absolute scale" in caps
