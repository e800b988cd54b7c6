"""Concept discovery (CRAFT-style) and concept maps: the maths of the parts (NNLS coefficients, Sobol indices, the
receptive-field placement, occlusion through the rest of the network), consistency between discover and
concept_map, determinism by seed, the observer, bounded collection, and BadInput for bad parameters.

The planted-concept acceptance (top crops contain the stamp, the map's peak is inside it) takes minutes: it is
measured by scripts/eval_concepts_discovery.py, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import accel
from accel.errors import BadInput
from accel.methods.concepts import discover as disc
from accel.methods.concepts._factor import (
    cell_ranges,
    cells_to_input,
    coefficients,
    fit_basis,
    logits_with,
    pooled_cells,
    random_boxes,
    sobol_total,
    tail,
)
from accel.registry import SILENT
from accel.taps import capture
from tests.conftest import get_net

DS = "fashion_mnist:test"
BAG = 8
SMALL = {"dataset": DS, "limit": 400, "k": 4, "crops": 4, "top": 5, "importance_images": 6, "batch_size": 200}


@pytest.fixture(scope="module")
def net() -> accel.Backbone:
    return get_net("fashion_cnn")


@pytest.fixture(scope="module")
def bag(net: accel.Backbone):
    """A Bag image of the test split (not necessarily among the streamed ones)."""
    from accel import datasets

    return next(it.image for it in datasets.get(DS, 200) if it.label == BAG)


@pytest.fixture(scope="module")
def occl(net: accel.Backbone, bag) -> accel.Result:
    return accel.run("discover", net, bag, target=BAG, importance="occlusion", **SMALL)


# ---------------------------------------------------------------------------------------------------- the parts


def test_coefficients_recover_a_nonnegative_mixture() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((3, 20)).astype(np.float32)
    u = rng.random((50, 3)).astype(np.float32)
    got = coefficients(u @ w, w)
    assert got.min() >= 0
    np.testing.assert_allclose(got, u, atol=2e-3)


def test_fit_basis_is_seeded_and_reconstructs() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((120, 3)) @ rng.random((3, 16))
    u1, w1, err = fit_basis(a, 3, seed=0)
    u2, w2, _ = fit_basis(a, 3, seed=0)
    assert np.array_equal(w1, w2) and np.array_equal(u1, u2)
    assert err < 0.02 and u1.min() >= 0 and w1.min() >= 0


def test_sobol_total_indices_of_an_additive_function() -> None:
    """f(m) = sum a_i m_i with m ~ U[0,1]^k: ST_i = a_i^2 / sum_j a_j^2 (each term's variance is a_i^2 / 12)."""
    a = np.array([3.0, 1.0, 0.0, 2.0])
    st = sobol_total(lambda m: m @ a, 4, 4000, np.random.default_rng(0))
    np.testing.assert_allclose(st, a**2 / (a**2).sum(), atol=0.03)


def test_random_boxes_fit_and_have_the_asked_side() -> None:
    b = random_boxes(np.random.default_rng(0), 500, 28, 28, 0.5)
    assert (b[:, 2] - b[:, 0] == 14).all() and (b[:, 3] - b[:, 1] == 14).all()
    assert b.min() >= 0 and b[:, 2:].max() <= 28


def test_cells_sit_at_their_field_centres(net: accel.Backbone) -> None:
    """A single active cell peaks on the pixel at its exact receptive field's centre; a constant map stays so."""
    li = net.layer("features.12")  # 14x14, stride 2, field 14
    for i, j in [(0, 0), (5, 9), (13, 13), (7, 2)]:
        cells = np.zeros(li.out_shape[1:], np.float32)
        cells[i, j] = 1.0
        m = cells_to_input(cells, li.rf, 28, 28)
        cy, cx = li.rf.center(i, j)
        py, px = np.unravel_index(np.argmax(m), m.shape)
        assert abs(py - np.clip(cy, 0, 27)) <= 0.5 and abs(px - np.clip(cx, 0, 27)) <= 0.5
    flat = cells_to_input(np.full(li.out_shape[1:], 2.5, np.float32), li.rf, 28, 28)
    np.testing.assert_allclose(flat, 2.5, rtol=1e-6)


def test_crops_pool_the_cells_centred_in_them(net: accel.Backbone) -> None:
    li = net.layer("features.19")  # 7x7 cells, stride 4, centres at 1.5 + 4 i
    boxes = np.array([[0, 0, 28, 28], [0, 0, 14, 14], [10, 20, 11, 21], [4, 8, 12, 16]])
    r = cell_ranges(li.rf, 7, 7, boxes)
    assert r.tolist() == [[0, 7, 0, 7], [0, 4, 0, 4], [2, 3, 5, 6], [1, 3, 2, 4]]
    maps = np.random.default_rng(0).random((2, 5, 7, 7)).astype(np.float32)
    got = pooled_cells(maps, np.array([1, 0]), r[[0, 3]])
    np.testing.assert_allclose(got[0], maps[1].mean((1, 2)), rtol=1e-6)
    np.testing.assert_allclose(got[1], maps[0, :, 1:3, 2:4].mean((1, 2)), rtol=1e-6)


def test_the_tail_equals_the_hooked_network(net: accel.Backbone) -> None:
    x = torch.randn(3, 1, 28, 28)
    for layer in ("features.19", "features.9"):
        with torch.no_grad(), capture(net.module, [layer]) as st:
            net.module(x)
        a = st[layer] * 1.5
        np.testing.assert_allclose(
            logits_with(net, layer, x, a, tail(net, layer)), logits_with(net, layer, x, a), atol=1e-5
        )


# ---------------------------------------------------------------------------------------------------- discover


def test_discover_shapes_and_order(occl: accel.Result) -> None:
    k, top = SMALL["k"], SMALL["top"]
    assert occl.kind == "patches" and occl.data.shape == (k, top, 14, 14, 3) and occl.data.dtype == np.uint8
    imp = occl.extras["importance"]
    assert imp.shape == (k,) and (np.diff(imp) <= 0).all()  # most important first
    assert occl.extras["basis"].shape == (k, 128) and occl.extras["basis"].min() >= 0
    vals = occl.extras["top_values"]
    assert vals.shape == (k, top) and (np.diff(vals, axis=1) <= 0).all()
    assert occl.extras["top_boxes"].shape == (k, top, 4) and len(occl.extras["top_ids"][0]) == top
    assert occl.extras["maps"].shape == (k, 28, 28) and occl.extras["maps"].min() >= 0
    assert occl.meta["layer"] == "features.19" and occl.meta["target"]["index"] == BAG
    assert occl.meta["crops"] == occl.meta["class_images"] * SMALL["crops"]
    assert occl.to_image().width > 0


def test_occlusion_importance_is_the_logit_drop(net: accel.Backbone, occl: accel.Result) -> None:
    """After features.19 the network is GAP + linear, so removing concept c changes logit t by
    fc_w[t] . mean_ij(U_c(i,j) W_c), averaged over the importance images: recomputed here by hand."""
    con = disc.discover(net, BAG, disc.DiscoverParams(target=BAG, importance="occlusion", **SMALL), SILENT)
    maps = con.crops.maps  # (m, C, 7, 7)
    m, c, h, w = maps.shape
    u = coefficients(maps.transpose(0, 2, 3, 1).reshape(-1, c), con.basis).reshape(m, h * w, -1)
    fc = net.module.fc.weight.detach().numpy()[BAG]
    want = np.einsum("mpk,kc,c->k", u, con.basis, fc) / (m * h * w)
    np.testing.assert_allclose(occl.extras["importance"], want, rtol=1e-3, atol=1e-4)


def test_sobol_is_deterministic_by_seed(net: accel.Backbone) -> None:
    kw = {**SMALL, "importance": "sobol", "designs": 8, "importance_images": 3, "crop_mode": "resize"}
    disc.forget()
    a = accel.run("discover", net, None, target=BAG, seed=3, **kw)
    disc.forget()
    b = accel.run("discover", net, None, target=BAG, seed=3, **kw)
    c = accel.run("discover", net, None, target=BAG, seed=4, **kw)
    assert np.array_equal(a.extras["basis"], b.extras["basis"])
    assert np.array_equal(a.extras["importance"], b.extras["importance"])
    assert np.array_equal(a.data, b.data) and a.extras["top_ids"] == b.extras["top_ids"]
    assert not np.array_equal(a.extras["top_boxes"], c.extras["top_boxes"])
    assert a.extras["importance"].min() >= 0


def test_collection_is_bounded_and_stops(net: accel.Backbone) -> None:
    seen: list[float] = []

    class StopAfterTwo(accel.Observer):
        def progress(self, frac: float, msg: str = "") -> None:
            seen.append(frac)

        def should_stop(self) -> bool:
            return len(seen) >= 2

    kw = {**SMALL, "limit": 2000, "batch_size": 100, "importance": "occlusion"}
    res = accel.run("discover", net, None, target=BAG, observer=StopAfterTwo(), **kw)
    assert res.meta["stopped"] and res.meta["images_seen"] == 200
    assert all(0 <= f <= 1 for f in seen) and seen == sorted(seen)
    capped = accel.run("discover", net, None, target=BAG, **{**kw, "max_crops": 40})
    assert capped.meta["crops"] == 40 and not capped.meta["stopped"]


@pytest.mark.parametrize(
    "params, words",
    [
        ({"k": 1}, "must be >= 2"),
        ({"k": 65}, "must be <= 64"),
        ({"crop": 0.05}, "must be >= 0.1"),
        ({"limit": 20}, "need at least 16 crops"),
        ({"layer": "pool"}, "no spatial extent"),
        ({"layer": "features.17"}, "negative activations"),
        ({"select": "label", "dataset": "samples"}, "has no labels"),
        ({"target": 10}, "target"),
    ],
)
def test_discover_refuses_bad_parameters(net: accel.Backbone, params: dict, words: str) -> None:
    with pytest.raises(BadInput, match=None) as e:
        accel.run("discover", net, None, **{**SMALL, "target": BAG, **params})
    assert words in str(e.value)


def test_discover_needs_a_class_or_an_image(net: accel.Backbone) -> None:
    with pytest.raises(BadInput, match="pass a `target`"):
        accel.run("discover", net, None, **SMALL)


# ---------------------------------------------------------------------------------------------------- concept_map


def test_concept_map_of_a_basis_file_matches_discover(net, bag, occl, tmp_path: Path) -> None:
    f = tmp_path / "basis.npz"
    np.savez(f, basis=occl.extras["basis"], layer=np.array("features.19"))
    for i in range(SMALL["k"]):
        m = accel.run("concept_map", net, bag, target=BAG, concepts=str(f), index=i)
        assert m.kind == "map" and m.data.shape == (28, 28) and m.data.dtype == np.float32
        np.testing.assert_allclose(m.data, occl.extras["maps"][i], atol=1e-4)
        assert m.meta["layer"] == "features.19" and m.meta["kind"] == "nmf"


def test_gradient_weighted_cav_map_is_exact(net, bag, tmp_path: Path) -> None:
    """After features.19 (GAP + linear) d logit_t / d a(i,j) = fc_w[t] / 49: the gradient-weighted CAV map's cells
    are <a(i,j), v> <fc_w[t], v> / (49 |v|^2)."""
    v = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    f = tmp_path / "cav.npy"
    np.save(f, v)
    pres = accel.run("concept_map", net, bag, concepts=str(f), layer="features.19", backend="torch")
    grad = accel.run(
        "concept_map", net, bag, concepts=str(f), layer="features.19", target=3, weighting="gradient"
    )
    x = net.preprocess(bag)
    with torch.no_grad(), capture(net.module, ["features.19"]) as st:
        net.module(x)
    a = st["features.19"][0].numpy()
    vhat = v / np.linalg.norm(v)
    proj = np.einsum("chw,c->hw", a, vhat)
    np.testing.assert_allclose(pres.extras["cells"], proj, rtol=1e-4, atol=1e-4)
    fc = net.module.fc.weight.detach().numpy()[3]
    np.testing.assert_allclose(grad.extras["cells"], proj * (fc @ vhat) / 49, rtol=1e-3, atol=1e-5)
    assert grad.meta["target"]["index"] == 3 and pres.meta["concept"] == "cav"


def test_flat_cav_cells_sum_to_the_projection(net, bag, tmp_path: Path) -> None:
    """A TCAV-style flattened CAV (C*h*w): each cell gets its own slice, and the cells add up to <a, v>/|v|."""
    v = np.random.default_rng(1).standard_normal(128 * 49).astype(np.float32)
    np.save(tmp_path / "flat.npy", v)
    m = accel.run("concept_map", net, bag, concepts=str(tmp_path / "flat.npy"), layer="features.19")
    with torch.no_grad(), capture(net.module, ["features.19"]) as st:
        net.module(net.preprocess(bag))
    a = st["features.19"][0].numpy().ravel()
    assert m.meta["kind"] == "cav (flat)"
    np.testing.assert_allclose(m.extras["cells"].sum(), a @ v / np.linalg.norm(v), rtol=1e-4)


def test_concept_map_fits_a_cav_for_a_concept_set(net, bag) -> None:
    m = accel.run("concept_map", net, bag, concepts="set:checkerboard", layer="features.16")
    assert m.data.shape == (28, 28) and np.isfinite(m.data).all()
    assert 0.5 <= m.meta["cav_accuracy"] <= 1 and m.meta["kind"] == "cav"
    with pytest.raises(BadInput):
        accel.run("concept_map", net, bag, concepts="set:no_such_set_xyz")


def test_concept_map_discovers_when_given_no_file(net, bag, occl) -> None:
    """With no file it discovers the class's concepts itself (same declared parameters -> the same concept 0)."""
    m = accel.run("concept_map", net, bag, target=BAG, dataset=DS, limit=200, k=3)
    assert m.meta["source"] == "discover" and m.data.shape == (28, 28) and m.data.min() >= 0


@pytest.mark.parametrize(
    "make, params, words",
    [
        (None, {"concepts": "/nonexistent/c.npy"}, "does not exist"),
        (lambda p: p.write_text("not an array"), {}, "not a .npy/.npz"),
        (lambda p: np.save(p, np.ones(64, np.float32)), {}, "has 64 channels"),
        (lambda p: np.save(p, np.ones((3, 128), np.float32)), {"index": 3}, "index 3 >= the 3 concepts"),
        (lambda p: np.save(p, np.full(128, np.nan, np.float32)), {}, "finite"),
        (lambda p: np.save(p, np.ones(128, np.float32)), {"layer": "fc"}, "not a (C,H,W) feature map"),
    ],
)
def test_concept_map_refuses_bad_concepts(net, bag, tmp_path: Path, make, params, words) -> None:
    f = tmp_path / "c.npy"
    if make is not None:
        make(f)
    with pytest.raises(BadInput) as e:
        accel.run("concept_map", net, bag, **{"concepts": str(f), **params})
    assert words in str(e.value)
