"""Known results of the explanation literature, reproduced on efficientnet_lite0 and a real photo (issue 19):
guided backprop fails the randomisation checks (Adebayo et al. 2018; Sixt et al. 2020) and saliency passes them,
judged by `accel.evaluate`'s randomisation metrics (independent MPRT at the logits layer, Adebayo et al.'s most
telling step, and random logit). Cheap settings: one photo, one layer. The cascading sanity check's verdicts on the
same model and photo are tested in tests/test_trust.py; Eigen-CAM's class insensitivity beside the method
(tests/test_cam_modern.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import accel
from accel.evaluate import EvalBatch, get_metric

T_CAT = 281  # tabby: efficientnet_lite0's third guess on chelsea (after tiger cat 282 and Egyptian cat)


def explainer(name: str):
    """(net, x (N,C,H,W), targets) -> maps (N,H,W) through `accel.run`, as the evaluation suite explains."""

    def run(net, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.stack([accel.run(name, net, x[i : i + 1], target=int(t[i])).data for i in range(len(x))])

    return run


@pytest.fixture(scope="module")
def scores(lite0, chelsea) -> dict[str, dict[str, float]]:
    """Spearman of |map| before and after re-initialising the logits layer (MPRT, max_layers=1) and random-logit
    SSIM, per method, on chelsea explained for class 281 (tabby)."""
    x = lite0.preprocess(chelsea).float().numpy()
    y = np.array([T_CAT])
    out = {}
    for name in ("saliency", "guided_backprop"):
        ex = explainer(name)
        b = EvalBatch(net=lite0, x=x, targets=y, maps=ex(lite0, x, y), explain=ex, seed=0)
        out[name] = {
            "mprt": float(get_metric("mprt")(b, max_layers=1)[0]),
            "random_logit": float(get_metric("random_logit")(b)[0]),
        }
    return out


def test_saliency_depends_on_the_weights(scores):
    """Lower = depends more on the weights: saliency decorrelates once the classifier is re-initialised."""
    assert scores["saliency"]["mprt"] < 0.5, scores


def test_guided_backprop_ignores_the_classifier_and_the_class(scores):
    """Re-initialising the logits layer leaves guided backprop's map as it was, and another class gives the same
    map: the map reflects the input's edges more than the model's decision (saliency: neither)."""
    g, s = scores["guided_backprop"], scores["saliency"]
    assert g["mprt"] > 0.9, scores
    assert g["random_logit"] > 0.9, scores
    assert g["random_logit"] > s["random_logit"] + 0.3, scores
