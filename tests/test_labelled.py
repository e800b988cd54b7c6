"""Explaining a labelled dataset (issue 21): predictions against truth, maps per method, the confusion matrix, a
stored and reloaded result, stop between images, and the folder-name to class mapping."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import accel
from accel.datasets import get
from accel.errors import BadInput
from accel.jobs.labelled import LabelledRun, explain_labelled, to_result, truth_indices
from accel.registry import Observer
from accel.store import RunStore


@pytest.fixture(scope="module")
def net() -> Any:
    return accel.load("fashion_cnn")


@pytest.fixture(scope="module")
def run24(net: Any) -> LabelledRun:
    return explain_labelled(net, get("fashion_mnist:test:24"), ["gradcam", "saliency"])


def test_predictions_truth_maps_and_confusion(net: Any, run24: LabelledRun) -> None:
    r = run24
    assert len(r.ids) == 24 and r.maps.shape == (24, 2, 28, 28) and np.isfinite(r.maps).all()
    ds = list(get("fashion_mnist:test:24"))
    x = net.preprocess_batch([it.image for it in ds])
    want = net.logits(x).softmax(1)
    assert (r.pred == want.argmax(1).numpy()).all()
    np.testing.assert_allclose(r.prob, want.max(1).values.numpy(), rtol=1e-4)
    assert (r.truth == np.asarray([it.label for it in ds])).all()
    assert r.accuracy() == pytest.approx(float((r.pred == r.truth).mean()))
    conf, classes = r.confusion()
    assert conf.sum() == 24 and np.trace(conf) == int((r.pred == r.truth).sum())
    # each map is the method's own map for the predicted class
    one = accel.run("gradcam", net, ds[3].image, target=int(r.pred[3])).data
    np.testing.assert_allclose(r.maps[3, 0], one, rtol=1e-5, atol=1e-6)


def test_explains_the_true_class_on_request_and_stops_between_images(net: Any) -> None:
    class StopAfter(Observer):
        def __init__(self) -> None:
            self.calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls > 5

    r = explain_labelled(
        net, get("fashion_mnist:test:12"), ["saliency"], explain="true", observer=StopAfter()
    )
    assert r.stopped and len(r.ids) == 5 and (r.explained == r.truth).all()
    with pytest.raises(BadInput, match="not an attribution method"):
        explain_labelled(net, get("fashion_mnist:test:4"), ["filters"])
    with pytest.raises(BadInput, match="1 to 6 methods"):
        explain_labelled(net, get("fashion_mnist:test:4"), [])
    with pytest.raises(BadInput, match="no classifier head"):
        explain_labelled(accel.load("alexnet"), get("samples:2"), ["saliency"])


def test_stored_and_reloaded(net: Any, run24: LabelledRun) -> None:
    res = to_result(run24, net)
    wrong = [row for row in res.meta["table"] if row["correct"] is False]
    assert len(wrong) == int((run24.pred != run24.truth).sum())
    store = RunStore(tempfile.mkdtemp())
    rid = store.put(res, model="fashion_cnn", method="dataset", params={}, image_key=None)
    back = store.get(rid).result
    np.testing.assert_array_equal(back.extras["maps"], run24.maps)
    assert back.meta["table"] == res.meta["table"] and back.meta["accuracy"] == res.meta["accuracy"]


def test_folder_names_map_to_the_model_classes(net: Any, tmp_path: Path) -> None:
    for name in ("sneaker", "Ankle_boot", "unicorn"):
        (tmp_path / name).mkdir()
        Image.new("L", (28, 28), 128).save(tmp_path / name / "a.png")
    ds = get(f"folder:{tmp_path}")
    items = list(ds)
    truth, notes = truth_indices(net, ds, [it.label for it in items])
    names = {Path(it.id).parent.name: int(t) for it, t in zip(items, truth)}
    assert names == {"Ankle_boot": 9, "sneaker": 7, "unicorn": -1}
    assert "unicorn" in notes[0]
