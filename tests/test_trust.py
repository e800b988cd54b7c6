"""Trust checks (deletion/insertion, model-randomisation sanity check) and the SCOUTER head and method."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import accel
from accel import evaluate as M
from accel.errors import BadInput
from tests.conftest import get_net

tomllib = pytest.importorskip("tomllib")

MODELS = Path(__file__).resolve().parents[1] / "models"


# ---------------------------------------------------------------------------------------------------------------
# helpers: maps computed inline, so these tests do not depend on the attribution methods landing first


def input_saliency(net, img, target: int) -> np.ndarray:
    """|d score / d input|, max over channels (Simonyan et al.), on the preprocessed input."""
    x = (img if isinstance(img, torch.Tensor) else net.preprocess(img)).clone().requires_grad_(True)
    net.module(x)[0, target].backward()
    return x.grad.abs().amax(1)[0].numpy()


def inline_gradcam(net, img, target: int) -> np.ndarray:
    """Grad-CAM on the backbone's CAM layer, bilinearly upsampled to the input."""
    from accel.taps import capture

    x = net.preprocess(img).requires_grad_(True)  # the weights are frozen: the graph hangs off the input
    with torch.enable_grad(), capture(net.module, [net.cam_layer]) as st:
        score = net.module(x)[0, target]
        act = st[net.cam_layer]
        (grad,) = torch.autograd.grad(score, act)
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[0, 0].detach().numpy()


def registered(name: str) -> bool:
    return any(s.name == name for s in accel.list_methods("attribute"))


def predicted(net, img) -> int:
    with torch.no_grad():
        return int(net.module(net.preprocess(img)).argmax(1)[0])


@pytest.fixture(scope="module")
def fashion():
    return get_net("fashion_cnn")


@pytest.fixture(scope="module")
def fashion_items():
    """A few Fashion-MNIST test images as PIL images with their labels."""
    from accel.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    return [(Image.fromarray(x[i]).convert("RGB"), int(y[i])) for i in range(8)]


# ---------------------------------------------------------------------------------------------------------------
# deletion / insertion


def test_random_baseline_map_is_seeded() -> None:
    a, b, c = (M.random_baseline_map((9, 7), s) for s in (3, 3, 4))
    assert a.shape == (9, 7) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(BadInput):
        M.random_baseline_map((0, 7))


def test_matched_random_map_keeps_the_spectrum_not_the_place() -> None:
    """The surrogate has the map's power spectrum (same smoothness) but random phases (blobs move)."""
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 8.0) ** 2 + (xx - 20.0) ** 2) / 30.0).astype(np.float32)
    sur = M.random_baseline_map((32, 32), 5, like=blob)
    spec = lambda a: np.abs(np.fft.rfft2(a - a.mean()))  # noqa: E731
    np.testing.assert_allclose(spec(sur), spec(blob), atol=1e-4)
    assert np.array_equal(sur, M.random_baseline_map((32, 32), 5, like=blob))
    assert abs(M.compare_maps(sur, blob)["spearman"]) < 0.9
    flat = M.random_baseline_map((32, 32), 5, like=np.zeros((32, 32)))
    assert np.ptp(flat) > 0  # a constant map falls back to i.i.d. pixels
    with pytest.raises(BadInput, match="like"):
        M.random_baseline_map((32, 32), 0, like=np.zeros((8, 8)))


def naive_curve(net, x: np.ndarray, order: np.ndarray, base: np.ndarray, steps: int, mode: str, target: int):
    """One forward per step, plain torch: the oracle for the batched sweep."""
    c, h, w = x.shape
    probs = []
    for k in range(steps + 1):
        n = math.ceil(k * h * w / steps)
        img = (x if mode == "deletion" else base).reshape(c, -1).copy()
        src = base if mode == "deletion" else x
        img[:, order[:n]] = src.reshape(c, -1)[:, order[:n]]
        with torch.no_grad():
            p = torch.softmax(net.module(torch.from_numpy(img.reshape(1, c, h, w))), 1)[0, target]
        probs.append(float(p))
    return np.array(probs)


@pytest.mark.parametrize("backend,atol,random", [("torch", 1e-5, "pixel"), ("auto", 1e-4, "matched")])
def test_deletion_insertion_matches_naive_loop(
    fashion, fashion_items, backend: str, atol: float, random: str
) -> None:
    img, label = fashion_items[0]
    x = fashion.preprocess(img)[0].numpy()
    smap = input_saliency(fashion, img, label)
    steps = 7  # 784 pixels do not divide into 7 steps: exercises the rounding
    res = M.deletion_insertion(
        fashion, img, smap, label, steps=steps, baseline="black", backend=backend, n_random=1, random=random
    )
    assert res["random"]["kind"] == random
    black = fashion.normalize(torch.zeros(1, 3, 28, 28))[0].numpy()
    order = np.argsort(-smap.ravel(), kind="stable")
    rmap = M.random_baseline_map((28, 28), 0, like=smap if random == "matched" else None)
    rorder = np.argsort(-rmap.ravel(), kind="stable")
    for key, o in (("map", order), ("random", rorder)):
        for mode in ("deletion", "insertion"):
            want = naive_curve(fashion, x, o, black, steps, mode, label)
            got = res[mode]["curve"] if key == "map" else res["random"][mode]["curve"]
            np.testing.assert_allclose(got, want, atol=atol)
            frac = np.array([math.ceil(k * 784 / steps) / 784 for k in range(steps + 1)])
            auc = sum((frac[i + 1] - frac[i]) * (want[i] + want[i + 1]) / 2 for i in range(steps))
            got_auc = res[mode]["auc"] if key == "map" else res["random"][mode]["auc"]
            assert got_auc == pytest.approx(auc, abs=atol)
    np.testing.assert_allclose(res["fractions"], frac)
    # all four curves went through one sweep in batches, not one pass per copy, and the three images every curve
    # starts or ends on (the photo, the deletion and insertion baselines) were forwarded once, not once per curve
    assert res["meta"]["perturbations"] == 3 + 4 * (steps - 1)
    assert res["meta"]["passes"] < res["meta"]["perturbations"]


def test_deletion_insertion_output_states_direction(fashion, fashion_items) -> None:
    img, label = fashion_items[1]
    smap = input_saliency(fashion, img, label)
    res = M.deletion_insertion(fashion, img, smap, steps=10, n_random=2)  # target None: the predicted class
    assert res["target"] == predicted(fashion, img)
    assert res["direction"] == {"deletion": "lower is better", "insertion": "higher is better"}
    assert res["deletion"]["direction"] == "lower is better"
    assert res["insertion"]["direction"] == "higher is better"
    assert {r["curve"] for r in res["table"]} == {"deletion", "insertion"}
    assert "lower is better" in res["summary"] and "higher is better" in res["summary"]
    assert len(res["random"]["deletion"]["aucs"]) == 2
    # deletion starts from the intact image; Petsiuk insertion ends on it
    with torch.no_grad():
        p0 = float(torch.softmax(fashion.module(fashion.preprocess(img)), 1)[0, res["target"]])
    assert res["deletion"]["curve"][0] == pytest.approx(p0, abs=1e-4)
    assert res["insertion"]["curve"][-1] == pytest.approx(p0, abs=1e-4)
    assert res["fractions"][0] == 0.0 and res["fractions"][-1] == 1.0
    # a Result's target is picked up when none is given
    r = accel.Result("map", smap, meta={"target": {"index": 3, "label": "Dress"}})
    assert M.deletion_insertion(fashion, img, r, steps=2, n_random=0)["target"] == 3


def test_deletion_insertion_bad_input(fashion, fashion_items) -> None:
    img, label = fashion_items[0]
    smap = np.ones((28, 28), np.float32)
    for kw, msg in (
        ({"steps": 0}, "steps"),
        ({"target": 10}, "out of range"),
        ({"baseline": "purple"}, "baseline"),
        ({"baseline": 2.0}, "grey level"),
        ({"n_random": -1}, "n_random"),
        ({"random": "gaussian"}, "random"),
    ):
        with pytest.raises(BadInput, match=msg):
            M.deletion_insertion(fashion, img, smap, **{"target": label, **kw})
    with pytest.raises(BadInput, match="shape"):
        M.deletion_insertion(fashion, img, np.ones((14, 14)), label)
    with pytest.raises(BadInput, match="NaN"):
        M.deletion_insertion(fashion, img, np.full((28, 28), np.nan), label)


def test_good_map_beats_random_on_photos(lite0, imagenet_photos) -> None:
    """Grad-CAM for the predicted class, averaged over three photos: deletion lower, insertion higher than random."""
    rows = []
    for img, _ in imagenet_photos[:3]:
        t = predicted(lite0, img)
        res = M.deletion_insertion(lite0, img, inline_gradcam(lite0, img, t), t, steps=12, seed=0)
        rows.append([res["deletion"]["auc"], res["random"]["deletion"]["auc"]])
        rows[-1] += [res["insertion"]["auc"], res["random"]["insertion"]["auc"]]
    d, rd, i, ri = np.mean(rows, 0)
    assert d < rd, f"deletion AUC {d:.3f} should be below random {rd:.3f}"
    assert i > ri, f"insertion AUC {i:.3f} should be above random {ri:.3f}"


@pytest.mark.skipif(not registered("gradcam"), reason="gradcam method not registered yet")
def test_gradcam_method_beats_random(lite0, imagenet_photos) -> None:
    rows = []
    for img, _ in imagenet_photos[3:5]:
        t = predicted(lite0, img)
        res = M.deletion_insertion(lite0, img, accel.run("gradcam", lite0, img, target=t), t, steps=12)
        rows.append([res["deletion"]["auc"], res["random"]["deletion"]["auc"]])
        rows[-1] += [res["insertion"]["auc"], res["random"]["insertion"]["auc"]]
    d, rd, i, ri = np.mean(rows, 0)
    assert d < rd and i > ri


# ---------------------------------------------------------------------------------------------------------------
# model-randomisation sanity check


def test_layer_groups_top_down(lite0, fashion) -> None:
    g = M.layer_groups(lite0)
    names = [n for n, _ in g]
    assert names[0] == "_fc" and names[1] == "_conv_head" and names[-1] == "_conv_stem"
    assert names[2:-1] == [f"_blocks.{i}" for i in range(15, -1, -1)]
    assert "_bn1" in dict(g)["_conv_head"]  # BN joins its conv
    every = {n for n, m in lite0.module.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert every == {m for _, ms in g for m in ms}
    f = [n for n, _ in M.layer_groups(fashion)]
    assert f == ["fc", "features.17", "features.14", "features.10", "features.7", "features.3", "features.0"]


def _state_hash(net) -> str:
    h = hashlib.sha256()
    for k, v in net.module.state_dict().items():
        h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


def test_sanity_check_saliency_decorrelates(lite0, chelsea) -> None:
    """Adebayo et al.: saliency changes when the weights are randomised (acceptance: Spearman < 0.5 at the end)."""
    before = _state_hash(lite0)
    t = predicted(lite0, chelsea)
    method = "saliency" if registered("saliency") else input_saliency
    res = M.sanity_check(lite0, method, chelsea, target=t, max_points=4, seed=0)
    assert _state_hash(lite0) == before  # the cached backbone is never touched
    table = res["table"]
    assert [r["layer"] for r in table] == ["original", "_fc", "_blocks.11", "_blocks.5", "_conv_stem"]
    assert table[0]["spearman"] == 1.0 and table[0]["ssim"] == 1.0
    assert all(set(r) == {"layer", "spearman", "ssim"} for r in table)
    assert res["rows"][-1]["randomized"][-1] == "_bn0" and len(res["rows"][-1]["randomized"]) > 80
    assert res["final"]["spearman"] < 0.5
    assert res["final"]["spearman"] < table[1]["spearman"] + 0.1  # randomising deeper keeps it low
    assert res["passes"] and "passes" in res["verdict"] and res["insensitive_to"] == []
    assert_verdict_follows_numbers(res)
    assert len(res["maps"]) == 5 and res["maps"][0].shape == (224, 224)


def test_sanity_check_is_seeded_and_independent_mode(fashion, fashion_items) -> None:
    img, label = fashion_items[2]
    a = M.sanity_check(fashion, input_saliency, img, target=label, seed=1, max_points=None)
    b = M.sanity_check(fashion, input_saliency, img, target=label, seed=1, max_points=None)
    c = M.sanity_check(fashion, input_saliency, img, target=label, seed=2, max_points=None)
    assert len(a["table"]) == 1 + 7
    assert [r["spearman"] for r in a["table"]] == [r["spearman"] for r in b["table"]]
    assert [r["spearman"] for r in a["table"]] != [r["spearman"] for r in c["table"]]
    ind = M.sanity_check(fashion, input_saliency, img, target=label, layers="independent", max_points=None)
    assert all(len(r["randomized"]) <= 2 for r in ind["rows"][1:])  # one conv(+BN) group at a time
    for r in (a, ind):
        assert_verdict_follows_numbers(r)


def assert_verdict_follows_numbers(r: dict) -> None:
    """The verdict is whatever the numbers say, whichever way they go."""
    sp = [row["spearman"] for row in r["rows"][1:]]
    assert r["checks"]["decorrelates_at_full"] == (sp[-1] < M.SANITY_THRESHOLD)
    assert r["checks"]["sensitive_to_top_layer"] == (sp[0] < M.INSENSITIVE)
    lead = 0
    while lead < len(sp) and sp[lead] >= M.INSENSITIVE:
        lead += 1
    assert r["insensitive_to"] == [row["layer"] for row in r["rows"][1 : 1 + lead]]
    assert r["passes"] == (r["checks"]["decorrelates_at_full"] and r["checks"]["sensitive_to_top_layer"])
    assert ("FAILS" in r["verdict"]) != r["passes"]


@pytest.mark.skipif(not registered("guided_backprop"), reason="guided_backprop method not registered yet")
def test_sanity_check_reports_guided_backprop_truthfully(fashion, fashion_items) -> None:
    img, label = fashion_items[3]
    res = M.sanity_check(fashion, "guided_backprop", img, target=label, max_points=None)
    assert_verdict_follows_numbers(res)


@pytest.mark.skipif(not registered("guided_backprop"), reason="guided_backprop method not registered yet")
def test_guided_backprop_ignores_the_classifier(lite0, chelsea) -> None:
    """Adebayo et al.'s finding, reproduced: randomising the logits layer leaves guided backprop unchanged."""
    t = predicted(lite0, chelsea)
    res = M.sanity_check(lite0, "guided_backprop", chelsea, target=t, max_points=2)
    assert res["top"]["layer"] == "_fc" and res["top"]["spearman"] > 0.95
    assert res["insensitive_to"] == ["_fc"] and not res["passes"]
    assert "FAILS" in res["verdict"] and "_fc" in res["verdict"]
    assert_verdict_follows_numbers(res)


def test_sanity_check_bad_input(fashion, fashion_items) -> None:
    img, label = fashion_items[0]
    with pytest.raises(BadInput, match="layers"):
        M.sanity_check(fashion, input_saliency, img, target=label, layers="bottom-up")
    with pytest.raises(BadInput, match="max_points"):
        M.sanity_check(fashion, input_saliency, img, target=label, max_points=1)
    with pytest.raises(BadInput, match="unknown method"):
        M.sanity_check(fashion, "no_such_method", img, target=label)
    with pytest.raises(BadInput, match="out of range"):
        M.sanity_check(fashion, input_saliency, img, target=99)


def test_compare_maps_oracles() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    s = M.compare_maps(a, a)
    assert s["spearman"] == pytest.approx(1.0) and s["ssim"] == pytest.approx(1.0)
    assert M.compare_maps(a, 3 * a + 1)["spearman"] == pytest.approx(1.0)  # ranks, not values
    assert abs(M.compare_maps(a, rng.random((16, 16)))["spearman"]) < 0.2
    assert math.isnan(M.compare_maps(a, np.zeros((16, 16)))["spearman"])


# ---------------------------------------------------------------------------------------------------------------
# SCOUTER


@pytest.mark.parametrize("sign", ["positive", "negative"])
def test_scouter_checkpoint_and_card(sign: str) -> None:
    from safetensors import safe_open

    ckpt = MODELS / f"scouter_fashion_{sign}.safetensors"
    card_path = ckpt.with_suffix(".toml")
    assert ckpt.is_file() and card_path.is_file()
    with open(card_path, "rb") as f:
        card = tomllib.load(f)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == card["sha256"]
    with safe_open(str(ckpt), framework="pt") as f:
        assert f.metadata()["architecture"] == "accel.archs.scouter.ScouterHead"
        assert "slots" in f.keys()  # noqa: SIM118 - safe_open is not a dict
    assert card["sign"] == sign and card["backbone"] == "fashion_cnn"
    assert 0.85 <= card["test_accuracy"] <= 1.0
    assert card["plain_head_test_accuracy"] >= 0.9
    assert (
        "python -m accel.training.scouter" in card["training_command"]
        and f"--sign {sign}" in card["training_command"]
    )
    for key in ("epochs", "lambda_area", "dataset", "train_seconds"):
        assert key in card


def test_scouter_method_map(fashion, fashion_items) -> None:
    img, label = fashion_items[0]
    a = accel.run("scouter", fashion, img, target=label)
    b = accel.run("scouter", fashion, img, target=label)
    assert a.kind == "map" and a.data.shape == (28, 28) and a.data.dtype == np.float32
    assert np.isfinite(a.data).all() and a.data.min() >= 0.0 and a.data.max() <= 1.0
    assert np.array_equal(a.data, b.data)  # deterministic
    other = accel.run("scouter", fashion, img, target=(label + 1) % 10)
    assert not np.allclose(a.data, other.data)  # one slot per class
    assert a.meta["target"]["index"] == label and a.meta["explains"] == "why"
    assert a.extras["maps"].shape == (10, 28, 28)
    default = accel.run("scouter", fashion, img)
    assert default.meta["target"]["index"] == default.meta["prediction"]


def test_scouter_positive_and_negative_explain_differently(fashion, fashion_items, artifacts) -> None:
    """SCOUTER+ attends to the true class's evidence; SCOUTER- leaves the true class (nearly) unattended."""
    from accel.images import make_grid

    pos_mass, neg_mass, tiles = [], [], []
    for img, label in fashion_items:
        p = accel.run("scouter", fashion, img, target=label, sign="positive")
        n = accel.run("scouter", fashion, img, target=label, sign="negative")
        assert n.meta["explains"] == "why not"
        assert not np.allclose(p.data, n.data, atol=1e-3)
        pos_mass.append(p.data.mean())
        neg_mass.append(n.data.mean())
        other = int(np.argmax(n.extras["attention"].mean((1, 2))))  # the class with most evidence against it
        vmax = float(max(p.data.max(), n.extras["maps"].max()))
        tiles.append(np.asarray(img))  # per item: photo, why (+), why not (-) true class, why not other class
        for m in (p.data, n.data, n.extras["maps"][other]):
            tiles.append(np.asarray(accel.Result("map", m, image=img).overlay(0.5, vmin=0.0, vmax=vmax)))
    grid = make_grid(tiles, ncols=8, pad=1)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(
        artifacts / "scouter_fashion_pos_neg.png"
    )
    assert np.mean(pos_mass) > 2 * np.mean(neg_mass)


def test_scouter_bad_params(fashion, lite0, fashion_items, tmp_path) -> None:
    img, _ = fashion_items[0]
    with pytest.raises(BadInput, match="out of range"):
        accel.run("scouter", fashion, img, target=10)
    with pytest.raises(BadInput, match="sign"):
        accel.run("scouter", fashion, img, sign="sideways")
    with pytest.raises(BadInput, match="does not exist"):
        accel.run("scouter", fashion, img, checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(BadInput, match="no trained SCOUTER head"):
        accel.run("scouter", lite0, img)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="safetensors"):
        accel.run("scouter", fashion, img, checkpoint=str(bogus))
    neg = MODELS / "scouter_fashion_negative.safetensors"
    with pytest.raises(BadInput, match="sign"):
        accel.run("scouter", fashion, img, checkpoint=str(neg), sign="positive")


@pytest.mark.parametrize("steps", [1, 9])
def test_many_maps_in_one_sweep_score_as_each_map_alone(fashion, fashion_items, steps) -> None:
    """Compare scores several maps in one sweep whose shared end points are forwarded once: every curve, the random
    ones included, equals that map scored alone (steps=1: curves made of end points only)."""
    img, label = fashion_items[2]
    maps = [input_saliency(fashion, img, label), np.random.default_rng(3).random((28, 28)).astype(np.float32)]
    many = M.deletion_insertion_many(fashion, img, maps, [label, None], steps=steps, n_random=2)
    for m, t, got in zip(maps, [label, None], many, strict=True):
        alone = M.deletion_insertion(fashion, img, m, t, steps=steps, n_random=2)
        assert got["target"] == alone["target"]
        for mode in ("deletion", "insertion"):
            assert len(got[mode]["curve"]) == steps + 1
            np.testing.assert_allclose(got[mode]["curve"], alone[mode]["curve"], atol=1e-6)
            np.testing.assert_allclose(
                got["random"][mode]["curve"], alone["random"][mode]["curve"], atol=1e-6
            )
    assert many[0]["meta"]["perturbations"] == 3 + 2 * 3 * 2 * (
        steps - 1
    )  # 2 maps x (map + 2 random) x 2 modes
