"""The inspect family: filters, activations, max-activating patches, neighbours, embeddings, metric learning.

Oracles: tiles rebuilt from the weights, activations recomputed with a hook, patches re-scored from the full
image and from the cropped field alone (pasted into noise), top-k checked against brute force, neighbour
accuracy in feature vs pixel space, t-SNE trustworthiness.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import accel
from accel import datasets, registry
from accel.errors import BadInput
from accel.fashion_mnist import find_fashion_mnist
from accel.methods.inspect import _common
from accel.methods.inspect.embedding import grid_layout, tsne
from accel.methods.inspect.max_patches import TopK
from accel.methods.inspect.neighbors import knn
from accel.taps import capture
from accel.zoo import MODELS_DIR

from .conftest import get_net

INSPECT = ("filters", "activations", "max_patches", "neighbors", "embedding", "metric_learning")


HAVE_FMNIST = find_fashion_mnist() is not None
HAVE_FCNN = (MODELS_DIR / "fashion_cnn.safetensors").exists() and (MODELS_DIR / "fashion_cnn.toml").exists()
needs_fashion = pytest.mark.skipif(
    not (HAVE_FMNIST and HAVE_FCNN),
    reason="needs Fashion-MNIST (Debian dataset-fashion-mnist) and models/fashion_cnn.safetensors",
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small single-image forwards: one torch thread is many times faster than two on shared, busy cores."""
    with _common.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def alexnet():
    return get_net("alexnet")


@pytest.fixture(scope="module")
def fcnn():
    if not (HAVE_FMNIST and HAVE_FCNN):
        pytest.skip("needs Fashion-MNIST and the fashion_cnn checkpoint")
    return get_net("fashion_cnn")


@pytest.fixture(scope="module")
def fashion_feats(fcnn):
    """fashion_cnn embeddings of the first 2,500 Fashion-MNIST test images (one runner pass, cached)."""
    return _common.dataset_features(fcnn, datasets.get("fashion_mnist:test:2500"))


def _tiles(grid: np.ndarray, rows: int, cols: int, th: int, tw: int, pad: int = 1) -> list[np.ndarray]:
    out = []
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (th + pad), pad + c * (tw + pad)
            out.append(grid[y : y + th, x : x + tw])
    return out


# ------------------------------------------------------------------------------------------------- filters


def test_alexnet_conv1_tiles(alexnet, artifacts) -> None:
    r = accel.run("filters", alexnet)
    assert r.kind == "grid" and r.data.dtype == np.uint8
    m = r.meta
    assert m["layer"] == "features.0" and m["style"] == "rgb" and m["kernel"] == [64, 3, 11, 11]
    assert (m["rows"], m["cols"], m["tile"]) == (8, 8, [33, 33])
    assert r.data.shape == (8 * 34 + 1, 8 * 34 + 1, 3)
    r.to_image().save(artifacts / "filters_alexnet_conv1.png")
    norms = r.extras["stats"]["norm"]
    assert np.all(np.diff(norms) <= 0)  # sorted by norm, strongest first
    tiles = _tiles(r.data, 8, 8, 33, 33)
    for t in tiles:  # per-filter min-max: every tile spans the full range and is not constant
        assert t.min() == 0 and t.max() == 255 and t.std() > 20
    # oracle: the first tile rebuilt from the weights of the strongest filter
    w = alexnet.module.features[0].weight.detach().numpy()
    o = int(r.extras["order"][0])
    assert np.isclose(np.linalg.norm(w[o]), norms[0])
    a = w[o].transpose(1, 2, 0)
    ref = ((a - a.min()) / (a.max() - a.min()) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_allclose(tiles[0][::3, ::3], ref, atol=1)
    # colour: a good share of first-layer filters are chromatic (colour blobs), as in the paper's figure
    chroma = [np.abs(t.astype(int) - t.mean(2, keepdims=True)).mean() for t in tiles]
    assert sum(c > 10 for c in chroma) >= 8


def test_filters_deeper_layer_grid(alexnet) -> None:
    r = accel.run("filters", alexnet, layer="features.3", max_filters=4, max_inputs=8, sort="none", zoom=2)
    assert r.meta["style"] == "per-input-channel" and (r.meta["rows"], r.meta["cols"]) == (4, 8)
    assert r.data.shape == (4 * 11 + 1, 8 * 11 + 1, 3)
    w = alexnet.module.features[3].weight.detach().numpy()
    scale = np.abs(w[0, :8]).max()
    ref = (np.clip(0.5 + 0.5 * w[0, 0] / scale, 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_allclose(r.data[1:11:2, 1:11:2, 0], ref, atol=1)
    assert list(r.extras["stats"]["index"]) == [0, 1, 2, 3]


@needs_fashion
def test_filters_grayscale_first_layer(fcnn) -> None:
    r = accel.run("filters", fcnn, max_filters=10)
    assert r.meta["style"] == "gray" and r.meta["shown"] == 10
    t = r.data[1 : 1 + r.meta["tile"][0], 1 : 1 + r.meta["tile"][1]]
    assert (t[..., 0] == t[..., 1]).all() and t.std() > 0
    with pytest.raises(BadInput, match="not a convolution"):
        accel.run("filters", fcnn, layer="features.1")


# ------------------------------------------------------------------------------------------------- activations


def test_activations_chelsea(alexnet, chelsea, artifacts) -> None:
    r = accel.run("activations", alexnet, chelsea, layer="features.11")
    assert r.kind == "grid" and r.meta["shape"] == [256, 13, 13]
    assert (r.meta["rows"], r.meta["cols"], r.meta["tile"]) == (16, 16, [26, 26])
    assert r.data.shape == (16 * 27 + 1, 16 * 27 + 1, 3)
    r.to_image().save(artifacts / "activations_alexnet_chelsea.png")
    with torch.no_grad(), capture(alexnet.module, ["features.11"]) as st:
        alexnet.module(alexnet.preprocess(chelsea))
    maps = st["features.11"][0].numpy()
    s = r.extras["stats"]
    for key in ("mean", "max", "frac_zero"):
        assert s[key].shape == (256,) and np.isfinite(s[key]).all()
    np.testing.assert_allclose(s["mean"], maps.mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["max"], maps.max((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(s["frac_zero"], (maps <= 0).mean((1, 2)))
    dead = r.extras["dead"]
    assert r.meta["dead_channels"] == len(dead) == int((maps.max((1, 2)) <= 0).sum())
    tiles = _tiles(r.data, 16, 16, 26, 26)
    assert all(tiles[c].max() == 0 for c in dead)  # dead channels are black on the shared scale
    live = [c for c in range(256) if c not in set(dead.tolist())]
    assert sum(tiles[c].std() > 0 for c in live) >= 0.9 * len(live)


def test_activations_sorting_and_bad_layers(alexnet, chelsea) -> None:
    r = accel.run(
        "activations", alexnet, chelsea, layer="features.4", sort="max", max_channels=16, scale="channel"
    )
    mx = r.extras["stats"]["max"]
    assert np.all(np.diff(mx[r.extras["order"]]) <= 0) and r.meta["shown"] == 16
    with pytest.raises(BadInput, match="unknown layer"):
        accel.run("activations", alexnet, chelsea, layer="features.99")
    with pytest.raises(BadInput, match="needs an input image"):
        accel.run("activations", alexnet, None)


# ------------------------------------------------------------------------------------------------- max patches


def _layer_out(net, x: torch.Tensor, layer: str) -> np.ndarray:
    with torch.no_grad(), capture(net.module, [layer]) as st:
        net.module(x)
    return st[layer].numpy()


@needs_fashion
@pytest.mark.parametrize("layer", ["features.9", "features.19"])
def test_max_patches_exact_fields(fcnn, layer: str) -> None:
    r = accel.run("max_patches", fcnn, None, layer=layer, top_channels=4, k=9, limit=500, batch_size=200)
    assert r.kind == "patches" and r.meta["images"] == 500
    li = fcnn.layer(layer)
    size = min(li.rf.size[0], 28)
    assert r.data.shape == (4, 9, size, size, 3) and r.data.dtype == np.uint8
    vals = r.extras["values"]
    assert np.isfinite(vals).all() and np.all(np.diff(vals, axis=1) <= 0)
    ds = datasets.get("fashion_mnist:test:500")
    x_all = torch.from_numpy(np.concatenate([b.x for b in ds.batches(fcnn, 500)]))
    acts = _layer_out(fcnn, x_all, layer)  # brute force oracle over all 500 images
    rng = np.random.default_rng(0)
    for u, c in enumerate(r.meta["channels"]):
        per_image = acts[:, c].reshape(500, -1).max(1)
        np.testing.assert_allclose(vals[u], np.sort(per_image)[::-1][:9], rtol=1e-4, atol=1e-5)
        assert len(set(r.extras["ids"][u])) == 9  # nine different images
        for j in range(9):
            key = r.extras["ids"][u][j]
            i, jj = r.extras["units"][u, j]
            top, left, bottom, right = r.extras["boxes"][u, j]
            x = fcnn.preprocess(ds.load(key).image)
            full = _layer_out(fcnn, x, layer)[0, c]
            assert np.isclose(full[i, jj], vals[u, j], rtol=1e-4, atol=1e-5)  # from the full image
            assert np.isclose(full.max(), vals[u, j], rtol=1e-4, atol=1e-5)
            crop = r.extras["crops"][u][j]
            np.testing.assert_array_equal(crop, x[0, :, top:bottom, left:right].numpy())
            noise = torch.from_numpy(rng.normal(0, 1, x.shape).astype(np.float32))
            noise[0, :, top:bottom, left:right] = torch.from_numpy(crop)
            alone = _layer_out(fcnn, noise, layer)[0, c, i, jj]  # from the field alone, in noise
            assert np.isclose(alone, vals[u, j], rtol=1e-4, atol=1e-4)
    img = r.to_image()
    assert img.width > 100 and np.asarray(img).std() > 10


@needs_fashion
def test_max_patches_chosen_channels_and_memory_bound(fcnn) -> None:
    r = accel.run("max_patches", fcnn, None, layer="features.9", channels="3, 0", k=4, limit=300)
    assert r.meta["channels"] == [3, 0] and r.data.shape[:2] == (2, 4)
    top = TopK(5, 64)
    rng = np.random.default_rng(0)
    for b in range(20):  # state stays (channels, k) however much is streamed
        top.update(rng.normal(size=(50, 64, 3, 3)).astype(np.float32), [f"{b}:{i}" for i in range(50)])
        assert top.vals.shape == top.ids.shape == top.pos.shape == (64, 5)
    assert top.seen == 1000
    with pytest.raises(BadInput, match="out of range"):
        accel.run("max_patches", fcnn, None, layer="features.9", channels="64", limit=50)
    with pytest.raises(BadInput, match="whole number"):
        accel.run("max_patches", fcnn, None, layer="features.9", channels="a,b", limit=50)
    with pytest.raises(BadInput, match="receptive field"):
        accel.run("max_patches", fcnn, None, layer="pool", limit=50)


# ------------------------------------------------------------------------------------------------- neighbours


def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(300, 16)), rng.normal(size=(20, 16))
    for metric in ("l2", "cosine"):
        idx, dist, used = knn(g, q, 5, metric, "numpy")
        if metric == "l2":
            d = np.linalg.norm(q[:, None] - g[None], axis=2)
        else:
            gn, qn = (
                g / np.linalg.norm(g, axis=1, keepdims=True),
                q / np.linalg.norm(q, axis=1, keepdims=True),
            )
            d = 1 - qn @ gn.T
        np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :5])
        np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :5], rtol=1e-4, atol=1e-5)
        try:
            fidx, _, _ = knn(g, q, 5, metric, "faiss")
            np.testing.assert_array_equal(fidx, idx)
        except BadInput:
            pass  # faiss-cpu not installed
    loo, _, _ = knn(g, g, 1, "l2", exclude=np.arange(len(g)))
    assert (loo[:, 0] != np.arange(len(g))).all()


@needs_fashion
def test_neighbors_fashion_feature_beats_pixels(fcnn, fashion_feats) -> None:
    fs = fashion_feats
    gal, qry = np.arange(2000), np.arange(2000, 2500)
    fi, _, _ = knn(fs.feats[gal], fs.feats[qry], 1, "cosine")
    pi, _, _ = knn(fs.pixels()[gal], fs.pixels()[qry], 1, "l2")
    acc_f = float((fs.labels[gal][fi[:, 0]] == fs.labels[qry]).mean())
    acc_p = float((fs.labels[gal][pi[:, 0]] == fs.labels[qry]).mean())
    print(f"\nFashion-MNIST 1-NN (2000 gallery, 500 queries): feature {acc_f:.3f}, pixel {acc_p:.3f}")
    assert acc_f >= acc_p + 0.03
    assert acc_f >= 0.85


@needs_fashion
def test_neighbors_method(fcnn) -> None:
    ds = datasets.get("fashion_mnist:test:500")
    item = ds.load("fashion_mnist:test:7")
    r = accel.run("neighbors", fcnn, item.image, limit=500, k=6)
    assert r.kind == "grid" and r.data.ndim == 3 and r.meta["gallery"] == 500
    f, p = r.extras["feature"], r.extras["pixel"]
    assert len(f["ids"]) == len(p["ids"]) == 6
    assert r.meta["excluded_self"] and item.id not in f["ids"] and item.id not in p["ids"]
    assert np.all(np.diff(f["dist"]) >= 0) and np.all(np.diff(p["dist"]) >= 0)
    assert (f["labels"] == item.label).mean() >= 0.5  # an easy query: most feature neighbours agree
    r2 = accel.run("neighbors", fcnn, item.image, limit=500, k=6)
    np.testing.assert_array_equal(r.data, r2.data)
    with pytest.raises(BadInput, match="only"):
        accel.run("neighbors", fcnn, item.image, limit=5, k=8)


def _coarse(label: int) -> int:
    """ImageNet's index ranges: 0-397 animals, 398-923 artifacts, 924+ food, plants, geology, people."""
    return 0 if label < 398 else (1 if label < 924 else 2)


def test_neighbors_imagenet_photos_semantic(lite0, imagenet_photos) -> None:
    fs = _common.dataset_features(lite0, datasets.get("foolbox:imagenet"))
    n = len(fs.feats)
    loo = np.arange(n)
    fi, _, _ = knn(fs.feats, fs.feats, 1, "cosine", exclude=loo)
    pi, _, _ = knn(fs.pixels(), fs.pixels(), 1, "l2", exclude=loo)
    labels = fs.labels
    # the only two photos sharing a label (both "jeep") are each other's nearest neighbour in feature space
    pairs = [i for i in range(n) if (labels == labels[i]).sum() > 1]
    assert len(pairs) == 2
    same_f = sum(labels[fi[i, 0]] == labels[i] for i in pairs)
    same_p = sum(labels[pi[i, 0]] == labels[i] for i in pairs)
    assert same_f == 2 and same_f > same_p
    g = np.array([_coarse(int(v)) for v in labels])
    coarse_f, coarse_p = (g[fi[:, 0]] == g).mean(), (g[pi[:, 0]] == g).mean()
    print(f"\nImageNet photos, 1-NN same coarse group: feature {coarse_f:.2f}, pixel {coarse_p:.2f}")
    assert coarse_f > coarse_p


# ------------------------------------------------------------------------------------------------- embedding


@needs_fashion
def test_tsne_trustworthiness(fashion_feats) -> None:
    from sklearn.manifold import trustworthiness

    x = fashion_feats.feats[:2000]
    pts, impl = tsne(x, 30.0, seed=0)
    tw = trustworthiness(x, pts, n_neighbors=10)
    print(f"\nt-SNE ({impl}) of 2000 fashion_cnn embeddings: trustworthiness {tw:.4f}")
    assert pts.shape == (2000, 2) and np.isfinite(pts).all()
    assert tw >= 0.9


@needs_fashion
def test_embedding_method_grid_and_determinism(fcnn) -> None:
    r = accel.run("embedding", fcnn, None, projection="pca", limit=300, grid=10, thumb=16)
    assert r.kind == "points" and r.data.shape == (300, 2) and np.isfinite(r.data).all()
    assert len(r.extras["labels"]) == len(r.extras["ids"]) == 300
    assert r.extras["grid_image"].shape == (160, 160, 3)
    cells = r.extras["grid_cells"]
    assert len({tuple(c) for c in cells}) == 100  # one image per cell
    t1 = accel.run("embedding", fcnn, None, projection="tsne", limit=150, grid=0, seed=3)
    t2 = accel.run("embedding", fcnn, None, projection="tsne", limit=150, grid=0, seed=3)
    t3 = accel.run("embedding", fcnn, None, projection="tsne", limit=150, grid=0, seed=4)
    np.testing.assert_array_equal(t1.data, t2.data)
    assert not np.array_equal(t1.data, t3.data)
    assert t1.to_image().size == (512, 512)


def test_grid_layout_is_an_optimal_bijection() -> None:
    rows, cols = 4, 5
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pts = np.stack([xx.ravel(), (rows - 1 - yy).ravel()], 1).astype(float)  # points exactly on a grid
    perm = np.random.default_rng(0).permutation(len(pts))
    cells = grid_layout(pts[perm], rows, cols)
    np.testing.assert_array_equal(cells, np.stack([yy.ravel(), xx.ravel()], 1)[perm])
    with pytest.raises(BadInput):
        grid_layout(np.zeros((30, 2)), rows, cols)


def test_umap_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from accel.methods.inspect.embedding import umap_2d

    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(BadInput, match="umap-learn"):
        umap_2d(np.zeros((10, 3)))


# ------------------------------------------------------------------------------------------------- metric learning


@needs_fashion
def test_metric_learning_improves_recall(fcnn) -> None:
    r = accel.run("metric_learning", fcnn, None, tap="features.12", limit=5000, test_fraction=0.3)
    m = r.meta
    print(
        f"\nmetric learning (features.12, 5000 images): recall@1 {m['recall@1_before']:.3f} -> {m['recall@1_after']:.3f}"
    )
    assert r.kind == "points" and r.data.shape == (1500, 2) and np.isfinite(r.data).all()
    assert m["recall@1_after"] > m["recall@1_before"] + 0.01
    losses = r.extras["losses"]
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------- every method


BAD = [
    ("filters", {"max_filters": 0}),
    ("filters", {"layer": "nope"}),
    ("filters", {"sort": "random"}),
    ("activations", {"layer": "nope"}),
    ("activations", {"zoom": -1}),
    ("max_patches", {"k": 0}),
    ("max_patches", {"dataset": "no/such/folder"}),
    ("max_patches", {"limit": -5}),
    ("neighbors", {"k": 0}),
    ("neighbors", {"metric": "manhattan"}),
    ("neighbors", {"tap": "nope"}),
    ("embedding", {"projection": "lda"}),
    ("embedding", {"perplexity": 1.0}),
    ("embedding", {"perplexity": float("nan")}),
    ("metric_learning", {"lr": float("nan")}),
    ("metric_learning", {"epochs": 0}),
    ("metric_learning", {"dataset": "samples"}),
]


@pytest.mark.parametrize(("name", "kw"), BAD, ids=[f"{n}-{next(iter(k))}" for n, k in BAD])
def test_bad_params(alexnet, chelsea, name: str, kw: dict) -> None:
    with pytest.raises(BadInput):
        accel.run(name, alexnet, chelsea, **kw)


def test_registered_and_deterministic(alexnet, chelsea) -> None:
    names = {s.name for s in registry.methods("inspect")}
    assert set(INSPECT) <= names
    for s in registry.methods("inspect"):
        if s.name in INSPECT:
            for info in s.param_infos():
                assert info.help, f"{s.name}.{info.name} has no help text"
    a = accel.run("filters", alexnet, layer="features.6", max_filters=8, max_inputs=4)
    b = accel.run("filters", alexnet, layer="features.6", max_filters=8, max_inputs=4)
    np.testing.assert_array_equal(a.data, b.data)
    c = accel.run("activations", alexnet, chelsea, layer="features.7")
    d = accel.run("activations", alexnet, chelsea, layer="features.7")
    np.testing.assert_array_equal(c.data, d.data)
    assert np.isfinite(c.extras["maps"]).all()
