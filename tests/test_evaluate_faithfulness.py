"""Faithfulness metrics (ROAD, pixel-flipping, region perturbation, faithfulness correlation, deletion/insertion)
against Quantus 0.6 on the same inputs, model, targets and maps, and the evaluation suite's contract.

Every comparison is exact up to float noise (<= 1e-3 absolute), including the random ones: ROAD's imputation noise
and faithfulness correlation's subsets are drawn from RandomState(seed) in Quantus's order, so seeding NumPy's
global state before a one-image Quantus call reproduces them. Model: fashion_cnn (1x28x28), which also keeps
Quantus's ROAD usable (it indexes channel values as pixels and fails on RGB inputs).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from accel.errors import BadInput
from accel.evaluate import EvalBatch, deletion_insertion, get_metric
from accel.evaluate.flipping import pixel_flipping_curves, region_curves
from accel.evaluate.road import linear_imputation, road_curves
from accel.evaluate.suite import evaluate, markdown
from accel.registry import Observer
from tests.conftest import get_net

quantus = pytest.importorskip("quantus")
N = 6


@pytest.fixture(scope="module")
def fashion() -> EvalBatch:
    """6 Fashion-MNIST test images, their labels and saliency maps (tie-broken by a tiny seeded jitter, since
    Quantus orders with an unstable sort)."""
    import accel
    from accel.datasets import get

    net = get_net("fashion_cnn")
    items = list(get(f"fashion_mnist:test:{N}"))
    x = np.concatenate([net.preprocess(im).numpy() for im, _, _ in items])
    y = np.array([lab for _, lab, _ in items])
    jitter = np.random.default_rng(0).random((N, 28, 28)) * 1e-6
    maps = (
        np.stack([accel.run("saliency", net, x[i : i + 1], target=int(y[i])).data for i in range(N)]) + jitter
    )
    return EvalBatch(net, x, y, maps.astype(np.float32))


def q_call(metric, b: EvalBatch, a: np.ndarray | None = None, sl: slice = slice(None)):
    """A Quantus metric on the batch's torch module, images `sl`, maps `a` (the batch's by default)."""
    a = b.maps if a is None else a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(
            model=b.net.module, x_batch=b.x[sl], y_batch=b.targets[sl], a_batch=a[sl, None], device="cpu"
        )


def test_pixel_flipping_matches_quantus(fashion: EvalBatch) -> None:
    ours = pixel_flipping_curves(fashion, pixels_per_step=49, backend="torch")  # 16 steps
    q = np.array(q_call(quantus.PixelFlipping(features_in_step=49, disable_warnings=True), fashion))
    assert ours.shape == q.shape == (N, 16)
    assert np.abs(ours - q).max() < 1e-3
    auc = get_metric("pixel_flipping")(fashion, pixels_per_step=49, backend="torch")
    assert np.allclose(auc, np.trapezoid(q, dx=1, axis=1) / 15, atol=1e-3)  # Quantus's AUC / (S - 1)


def test_region_perturbation_matches_quantus(fashion: EvalBatch) -> None:
    # 28 px with 8 px patches: Quantus pads 2 px each side; 16 regions, the first 12 removed
    ours = region_curves(fashion, patch_size=8, regions=12, backend="torch")
    q = np.array(
        q_call(
            quantus.RegionPerturbation(patch_size=8, regions_evaluation=12, disable_warnings=True), fashion
        )
    )
    assert np.abs(ours - q).max() < 1e-3
    aopc = get_metric("region_perturbation")(fashion, patch_size=8, regions=12, backend="torch")
    assert np.allclose(aopc, q.mean(1), atol=1e-3)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_matches_quantus_without_noise(fashion: EvalBatch, order: str) -> None:
    ps = [5, 25, 50, 75, 95]
    ours = road_curves(fashion, order, ps, noise=0.0, backend="torch")
    a = (
        fashion.maps if order == "morf" else 1.0 - fashion.maps
    )  # Quantus ROAD is MoRF only: reverse the order
    q = q_call(quantus.ROAD(percentages=ps, noise=0.0, disable_warnings=True), fashion, a)
    assert np.abs(ours.mean(0) - np.array([q[p] for p in ps])).max() < 1e-3


def test_road_noise_draws_match_quantus(fashion: EvalBatch) -> None:
    ps = [20, 60, 90]
    b1 = EvalBatch(fashion.net, fashion.x[:2], fashion.targets[:2], fashion.maps[:2], seed=7)
    ours = road_curves(b1, "morf", ps, noise=0.3, score="correct", backend="torch")
    for i in range(2):
        np.random.seed(7)
        q = q_call(quantus.ROAD(percentages=ps, noise=0.3, disable_warnings=True), b1, sl=slice(i, i + 1))
        assert np.array_equal(ours[i], [q[p] for p in ps])
    assert np.array_equal(ours, road_curves(b1, "morf", ps, noise=0.3, backend="torch"))  # seeded


def test_imputation_matches_quantus_on_rgb() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40, 50)).astype(np.float32)
    idx = rng.permutation(40 * 50)[:1500]
    ours = x.reshape(3, -1).copy()
    ours[:, idx] = linear_imputation(x, idx)
    ref = noisy_linear_imputation(x, idx, noise=0.0).reshape(3, -1)
    assert np.abs(ours - ref).max() < 1e-5


def test_faithfulness_correlation_matches_quantus(fashion: EvalBatch) -> None:
    ours = get_metric("faithfulness_correlation")(fashion, runs=40, subset_size=60, backend="torch")
    q = []
    for i in range(N):
        np.random.seed(fashion.seed)
        base = np.full((1, 60), fashion.x[i].min())  # "black" as an array: Quantus then draws nothing else
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=40, subset_size=60, perturb_baseline=base, return_aggregate=False, disable_warnings=True
        )
        q.append(q_call(fc, fashion, sl=slice(i, i + 1))[0])
    assert np.abs(ours - np.array(q)).max() < 1e-3


def test_deletion_insertion_metrics_call_the_curves(fashion: EvalBatch) -> None:
    b = EvalBatch(fashion.net, fashion.x[:2], fashion.targets[:2], fashion.maps[:2])
    d = get_metric("deletion")(b, steps=10)
    ins = get_metric("insertion")(b, steps=10)
    ref = deletion_insertion(b.net, b.x[1:2], b.maps[1], int(b.targets[1]), steps=10, n_random=0)
    assert d[1] == pytest.approx(ref["deletion"]["auc"]) and ins[1] == pytest.approx(ref["insertion"]["auc"])


def test_metrics_refuse_bad_options(fashion: EvalBatch) -> None:
    with pytest.raises(BadInput, match="percentages"):
        get_metric("road_morf")(fashion, percentages=[0, 50])
    with pytest.raises(BadInput, match="pixels_per_step"):
        get_metric("pixel_flipping")(fashion, pixels_per_step=28 * 28)
    with pytest.raises(BadInput, match="baseline"):
        get_metric("region_perturbation")(fashion, baseline="purple")
    with pytest.raises(BadInput, match="subset_size"):
        get_metric("faithfulness_correlation")(fashion, subset_size=0)


class Stopper(Observer):
    """Records progress and asks to stop after `after` progress reports."""

    def __init__(self, after: int = 10**9) -> None:
        self.fracs: list[float] = []
        self.after = after

    def progress(self, frac: float, msg: str = "") -> None:
        self.fracs.append(frac)

    def should_stop(self) -> bool:
        return len(self.fracs) >= self.after


def test_suite_scores_methods_with_random_baseline(fashion: EvalBatch) -> None:
    obs = Stopper()
    metrics = ["pixel_flipping", "region_perturbation", "road_morf"]
    opts = {"road_morf": {"percentages": [30, 70]}, "region_perturbation": {"regions": 5}}
    r = evaluate(
        fashion.net, fashion.x[:3], ["saliency", "gradcam"], metrics, metric_options=opts, observer=obs
    )
    json.dumps(r, allow_nan=False)  # plain data
    assert not r["errors"] and not r["stopped"] and r["n_images"] == 3
    assert {(row["method"], row["metric"]) for row in r["table"]} == {
        (m, n) for m in ("saliency", "gradcam") for n in metrics
    }
    assert all(row["random_mean"] is not None and row["n"] == 3 for row in r["table"])
    assert obs.fracs == sorted(obs.fracs) and obs.fracs[-1] == pytest.approx(1.0)
    md = markdown(r)
    assert "pixel_flipping ↓" in md and "*random map*" in md and md.count("\n") == 5
    again = evaluate(fashion.net, fashion.x[:3], ["saliency"], metrics[:1], metric_options=opts)
    assert (
        again["scores"]["saliency"]["pixel_flipping"] == r["scores"]["saliency"]["pixel_flipping"]
    )  # deterministic


def test_suite_stops_and_refuses(fashion: EvalBatch) -> None:
    r = evaluate(
        fashion.net, fashion.x[:2], ["saliency", "gradcam"], ["pixel_flipping"], observer=Stopper(after=2)
    )
    assert r["stopped"] and "gradcam" not in r["timings"]
    with pytest.raises(BadInput, match="unknown method"):
        evaluate(fashion.net, fashion.x[:1], ["nope"], ["pixel_flipping"])
    with pytest.raises(BadInput, match="attribution"):
        evaluate(fashion.net, fashion.x[:1], ["filters"], ["pixel_flipping"])
    with pytest.raises(BadInput, match="n_random"):
        evaluate(fashion.net, fashion.x[:1], ["saliency"], ["pixel_flipping"], n_random=99)
    with pytest.raises(BadInput, match="unknown metric"):
        evaluate(fashion.net, fashion.x[:1], ["saliency"], ["nope"])


def test_suite_random_baseline_keeps_the_maps_mean(fashion: EvalBatch) -> None:
    """Random surrogates keep their map's mean, so a ratio metric's random baseline is its chance level (the
    region's share of the image), not a division by a near-zero sum."""
    masks = np.zeros((3, 28, 28), bool)
    masks[:, 7:21, 7:21] = True  # a quarter of the image
    r = evaluate(
        fashion.net, fashion.x[:3], ["saliency"], ["relevance_mass_accuracy"], masks=masks, n_random=4
    )
    (row,) = r["table"]
    assert 0.0 <= row["mean"] <= 1.0
    assert abs(row["random_mean"] - 0.25) < 0.1
