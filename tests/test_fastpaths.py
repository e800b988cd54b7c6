"""Fast paths give the same answers as the plain loops: sweeps, incremental occlusion, drill-down, batching."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import accel
from accel.errors import BadInput
from accel.runtime.incremental import IncrementalOcclusion, drill_down, supports_incremental
from accel.runtime.sweep import Masks, Occlusion, Reveal
from tests.conftest import get_net


@pytest.fixture(scope="module")
def alex_x(chelsea):
    net = get_net("alexnet")
    return net, net.preprocess(chelsea).numpy()


def test_sweeps_equal_a_naive_loop(alex_x):
    net, x = alex_x
    r = accel.runner(net, ["embedding"], backend="onnxruntime", batch_size=5)
    rng = np.random.default_rng(0)
    masks = (rng.random((7, 224, 224)) > 0.5).astype(np.float32)
    order = np.argsort(-rng.random(224 * 224))
    for pert in (
        Occlusion(224, 224, (64, 64), (48, 48), baseline=0.3),
        Masks(masks, baseline=0.0),
        Reveal(order, steps=6, mode="deletion"),
        Reveal(order, steps=6, mode="insertion", baseline=-1.0),
    ):
        fast = r.sweep(x, pert)["embedding"]
        naive = []
        for k in range(pert.n):
            xk = x[0].copy()
            if isinstance(pert, Occlusion):
                top, left = pert.positions[k]
                xk[:, top : top + 64, left : left + 64] = 0.3
            elif isinstance(pert, Masks):
                xk = xk * masks[k]
            else:
                cnt = pert.counts[k]
                flat = xk.reshape(3, -1)
                base = np.full_like(flat, pert.baseline)
                if pert.mode == "deletion":
                    flat[:, order[:cnt]] = base[:, order[:cnt]]
                else:
                    base[:, order[:cnt]] = flat[:, order[:cnt]]
                    flat = base
                xk = flat.reshape(3, 224, 224)
            with torch.no_grad():
                naive.append(net.module(torch.from_numpy(xk[None])).numpy()[0])
        assert np.abs(fast - np.stack(naive)).max() < 1e-4, type(pert).__name__
    reduced = r.sweep(x, Occlusion(224, 224, (64, 64), (80, 80)), reduce=lambda o: o["embedding"][:, 0])
    assert reduced.shape == (9,)


def test_occlusion_geometry_and_errors():
    occ = Occlusion(224, 224, (32, 32), (8, 8))
    assert occ.n == 625 and occ.grid == (25, 25)
    assert occ.coverage().max() == 16
    with pytest.raises(BadInput, match="larger than the image"):
        Occlusion(224, 224, (300, 300), (8, 8))
    with pytest.raises(BadInput, match="stride"):
        Occlusion(224, 224, (32, 32), (0, 8))


@pytest.mark.parametrize("name,split", [("alexnet", None), ("alexnet", "features.8"), ("fashion_cnn", None)])
def test_incremental_occlusion_equals_plain_sweep(name, split, chelsea):
    net = get_net(name)
    assert supports_incremental(net)
    x = net.preprocess(chelsea).numpy()
    s = net.pre.size
    w, st = (8, 3) if s == 28 else (32, 24)
    occ = Occlusion(s, s, (w, w), (st, st), baseline=0.5)
    taps = ["logits"] if net.has_head else ["embedding"]
    plain = accel.runner(net, taps, backend="onnxruntime").sweep(x, occ)[taps[0]]
    inc = IncrementalOcclusion(net, taps, split=split)
    fast = inc.sweep(x, occ)[taps[0]]
    assert fast.shape == plain.shape
    assert np.abs(fast - plain).max() < 1e-4


def test_incremental_occlusion_on_efficientnet_lite_equals_plain_sweep(lite0, chelsea):
    """Crop mode keeps TF-SAME padding aligned (crops are multiples of the split's stride): exact on Lite."""
    x = lite0.preprocess(chelsea).numpy()
    occ = Occlusion(224, 224, (32, 32), (48, 48), baseline=0.0)
    plain = accel.runner(lite0, ["logits"], backend="onnxruntime").sweep(x, occ)["logits"]
    inc = IncrementalOcclusion(lite0, ["logits"])
    assert len(inc.cuts) > 1  # the cost model picks several crop stages on Lite
    fast = inc.sweep(x, occ)["logits"]
    assert np.abs(fast - plain).max() < 1e-4
    single = IncrementalOcclusion(lite0, ["logits"], split="_blocks.4").sweep(x, occ)["logits"]
    assert np.abs(single - plain).max() < 1e-4
    with pytest.raises(BadInput, match="mode='crop'"):
        IncrementalOcclusion(lite0, ["logits"], mode="layerwise")


@pytest.mark.parametrize(
    "name,stages",
    [
        ("alexnet", ["features.0", "features.3", "features.6"]),
        ("alexnet", ["features.2", "features.5", "features.8", "features.10"]),
        ("fashion_cnn", None),
    ],
)
def test_staged_incremental_occlusion_equals_plain_sweep(name, stages, chelsea):
    """Crop stages chained through several cuts (baseline image, windows clipped at the border) stay exact."""
    net = get_net(name)
    x = net.preprocess(chelsea).numpy()
    s = net.pre.size
    w, st = (7, 3) if s == 28 else (40, 23)
    base = np.random.default_rng(1).normal(size=x.shape[1:]).astype(np.float32)  # a blur-like image baseline
    occ = Occlusion(s, s, (w, w), (st, st), baseline=base)
    taps = ["logits"] if net.has_head else ["embedding"]
    plain = accel.runner(net, taps, backend="onnxruntime").sweep(x, occ)[taps[0]]
    inc = IncrementalOcclusion(net, taps, stages=stages)
    if stages:
        assert inc.cuts == stages and inc.split == stages[-1]
    ticks: list[float] = []
    fast = inc.sweep(x, occ, progress=lambda f, msg: ticks.append(f))[taps[0]]
    assert np.abs(fast - plain).max() < 1e-4
    assert ticks == sorted(ticks) and ticks[-1] == pytest.approx(1.0)
    torch_fast = IncrementalOcclusion(net, taps, stages=stages, backend="torch").sweep(x, occ)[taps[0]]
    assert np.abs(torch_fast - plain).max() < 1e-4


def test_stage_cuts_are_checked(alex_x):
    net, _ = alex_x
    with pytest.raises(BadInput, match="network order"):
        IncrementalOcclusion(net, ["embedding"], stages=["features.6", "features.3"])
    with pytest.raises(BadInput, match="not one of the chain layers"):
        IncrementalOcclusion(net, ["embedding"], stages=["features.3", "classifier.1"])
    with pytest.raises(BadInput, match="last of stages"):
        IncrementalOcclusion(net, ["embedding"], stages=["features.3", "features.6"], split="features.3")
    with pytest.raises(BadInput, match="one split"):
        IncrementalOcclusion(net, ["embedding"], stages=["features.3", "features.6"], mode="layerwise")


def test_incremental_refuses_unsupported_backbones():
    net = get_net("resnet18")
    assert not supports_incremental(net)
    with pytest.raises(BadInput, match="features/pool"):
        IncrementalOcclusion(net, ["logits"])


def test_drill_down_with_full_refinement_is_the_full_map(alex_x):
    net, x = alex_x
    r = accel.runner(net, ["embedding"], backend="onnxruntime")

    def score(occ: Occlusion) -> np.ndarray:
        return r.sweep(x, occ, reduce=lambda o: o["embedding"][:, 3])

    full = score(Occlusion(224, 224, (48, 48), (32, 32))).reshape(6, 6)
    d = drill_down(score, 224, 224, 48, 32, coarse_stride=64, refine=1.0)
    assert np.abs(d["map"] - full).max() < 1e-5 and d["windows"] == 36
    part = drill_down(score, 224, 224, 48, 32, coarse_stride=64, refine=0.5)
    assert part["windows"] == 18  # the budget: half of the fine grid (the coarse windows are fine ones here)
    sel = part["refined"]
    assert sel.sum() == 18 and np.abs(part["map"][sel] - full[sel]).max() < 1e-5
    assert sel.ravel()[full.argmax()]  # the adaptive rounds find the strongest window
    with pytest.raises(BadInput):
        drill_down(score, 224, 224, 48, 32, refine=0.0)


def test_drill_down_is_adaptive_and_interpolates():
    """On a known smooth map with one peak, drill-down spends its budget around the peak, finds it exactly,
    interpolates the rest between evaluated windows, and reports progress up to 1."""
    fine = Occlusion(224, 224, (32, 32), (8, 8))
    rr, cc = np.meshgrid(np.arange(25) * 8.0, np.arange(25) * 8.0, indexing="ij")
    truth = np.exp(-((rr - 136) ** 2 + (cc - 56) ** 2) / (2 * 30.0**2)) + 0.001 * rr  # peak at window (17, 7)
    calls: list[int] = []

    def score(occ: Occlusion) -> np.ndarray:
        calls.append(occ.n)
        return np.array([truth[r // 8, c // 8] for r, c in occ.positions])

    seen: list[float] = []
    d = drill_down(score, 224, 224, 32, 8, refine=0.2, progress=lambda f, msg: seen.append(f))
    assert d["full_windows"] == fine.n == 625
    assert d["windows"] == sum(calls) == 125 and d["refined"].sum() == 125
    assert calls[0] == 49 and len(calls) >= 3  # the coarse 7x7 grid first, then adaptive rounds
    assert d["refined"][17, 7] and d["map"][17, 7] == truth[17, 7]
    assert np.array_equal(d["coarse"], truth[::4, ::4])
    # evaluated windows cluster around the peak: the refined share near it is far above the share far from it
    near = (np.abs(np.arange(25)[:, None] - 17) <= 4) & (np.abs(np.arange(25)[None] - 7) <= 4)
    assert d["refined"][near].mean() > 3 * d["refined"][~near].mean()
    # unevaluated windows carry a linear interpolation of their neighbours, not a blocky copy
    assert d["map"][2, 2] == pytest.approx(truth[2, 2], abs=0.02)
    assert np.abs(d["map"] - truth).max() < 0.1
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_batch_halving_on_allocation_failure(alex_x, monkeypatch):
    net, x = alex_x
    r = accel.runner(net, ["embedding"], backend="torch", batch_size=8)
    real = r._forward

    def flaky(batch):
        if len(batch) > 2:
            raise RuntimeError("Failed to allocate memory for requested buffer of size 123456")
        return real(batch)

    monkeypatch.setattr(r, "_forward", flaky)
    xs = np.repeat(x, 7, axis=0)
    with pytest.warns(UserWarning, match="halving batch size"):
        out = r.run(xs)["embedding"]
    assert out.shape == (7, 256) and r.batch_size <= 2 and r.meta["batch_halvings"] >= 1
    ref = accel.runner(net, ["embedding"], backend="torch").run(xs)["embedding"]
    assert np.abs(out - ref).max() < 1e-5
    r.batch_size = 8
    with pytest.warns(UserWarning, match="halving batch size"):
        sw = r.sweep(x, Occlusion(224, 224, (64, 64), (80, 80)))["embedding"]
    assert sw.shape == (9, 256)


def test_int8_reports_its_accuracy_cost(lite0):
    r = accel.runner(lite0, ["logits"], backend="onnxruntime", precision="int8")
    cost = r.meta["accuracy_cost"]
    assert r.meta["precision"] == "int8" and cost["held_out_images"] >= 10
    assert 0.8 <= cost["top1_agreement"] <= 1.0
    assert cost["max_abs_diff"]["logits"] > 0  # quantization changes numbers, and says by how much
    with pytest.raises(BadInput, match="GPU providers only"):
        accel.runner(lite0, ["logits"], backend="onnxruntime", precision="fp16")
    with pytest.raises(BadInput, match="ONNX Runtime backend only"):
        accel.runner(lite0, ["logits"], backend="torch", precision="int8")


def test_fold_pads_is_exact_and_leaves_unfoldable_pads(tmp_path):
    """Zero Pads fold into the Conv they feed (asymmetric SAME padding included); reflect Pads stay."""
    import onnx
    import onnxruntime as ort
    import torch.nn.functional as F

    from accel.runtime.graphopt import fold_pads

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.b = torch.nn.Conv2d(4, 4, 5, stride=2, groups=4)
            self.c = torch.nn.Conv2d(4, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(F.pad(x, [0, 1, 2, 0]))  # asymmetric, added to the Conv's own padding
            x = self.b(F.pad(x, [1, 2, 1, 2]))  # TF-SAME shape for k=5, s=2
            return self.c(F.pad(x, [1, 1, 1, 1], mode="reflect"))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 37, 30)
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["input"], opset_version=17, dynamo=False)
    assert fold_pads(path) == 2
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Pad") == 1 and ops.count("Conv") == 3
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[
        0
    ]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() < 1e-5


def test_exported_efficientnet_lite_has_no_pad_nodes(lite0, chelsea):
    """SAME padding lives in the Conv nodes of the export (each Pad cost two NCHWc reorders in ORT)."""
    import onnx

    from accel.runtime.export import export_backbone

    ops = [n.op_type for n in onnx.load(str(export_backbone(lite0, ["logits"]))).graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 49
    x = lite0.preprocess(chelsea)
    got = accel.runner(lite0, ["logits"], backend="onnxruntime").run(x.numpy())["logits"]
    with torch.no_grad():
        want = lite0.module(x).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_int8_incremental_reports_its_accuracy_cost(lite0, chelsea):
    """Every stage and the tail quantized: the cost on held-out photos is in meta, the map ranks like fp32's."""
    from scipy.stats import spearmanr

    x = lite0.preprocess(chelsea).numpy()
    occ = Occlusion(224, 224, (32, 32), (24, 24), baseline=0.0)
    q = IncrementalOcclusion(lite0, ["logits"], precision="int8")
    cost = q.meta["accuracy_cost"]
    assert cost["held_out_images"] >= 4 and 0.5 <= cost["top1_agreement"] <= 1.0
    assert 0 < cost["max_abs_diff"]["logits"] < 10
    t = 281
    fp = IncrementalOcclusion(lite0, ["logits"]).sweep(x, occ)["logits"][:, t]
    got = q.sweep(x, occ)["logits"][:, t]
    # Measured on the raw target logit over these 64 windows: 0.887 on an AVX-512 VNNI CPU; 0.745 on an AVX2 CPU
    # without VNNI, where int8 weights are 7-bit (reduce_range; full 8-bit weights saturate there: 0.56).
    from accel.runtime.quantize import cpu_has_vnni

    assert spearmanr(fp, got)[0] > (0.8 if cpu_has_vnni() else 0.7)
    with pytest.raises(BadInput, match="int8 incremental"):
        IncrementalOcclusion(lite0, ["logits"], precision="int8", backend="torch")


# ------------------------------------------------------------------------------ cached stage graphs, verified on open


def _stage_files(inc: IncrementalOcclusion) -> list:
    parts = [f"stage{st.lo}_{st.hi}" for st in inc.stages] + [f"tail{inc.k}"]
    return [inc.stage_path(p) for p in parts]


def _bump_one_weight(path) -> None:
    """A valid graph that differs from the built one in one weight: the first value of its largest initializer
    (a conv kernel), +1.0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    a = numpy_helper.to_array(init).copy()
    a.reshape(-1)[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(m, str(path))


@pytest.mark.parametrize("tamper", ["flip_bytes", "one_weight", "one_weight_and_its_record"])
def test_tampered_stage_is_detected_and_rebuilt(tamper, chelsea, tmp_path, monkeypatch):
    """A cached stage that was altered (bytes flipped; a valid graph with one weight changed; the same with a
    matching SHA-256 record forged beside it) is detected on open, rebuilt with a warning, never used: the map
    afterwards equals the clean one to 1e-6."""
    from accel.runtime import export as incr
    from accel.runtime.stages import stage_session

    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))  # a private cache: no other test sees the damage
    net = get_net("fashion_cnn")
    x = net.preprocess(chelsea).numpy()
    occ = Occlusion(28, 28, (7, 7), (3, 3), baseline=0.5)
    first = IncrementalOcclusion(net, ["logits"])
    clean = first.sweep(x, occ)["logits"]
    files = _stage_files(first)
    assert all(f.exists() and incr.recorded_problem(f) is None for f in files)
    victim = max(files[:-1], key=lambda f: f.stat().st_size)  # the stage with the most weights
    if tamper == "flip_bytes":
        data = bytearray(victim.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        _bump_one_weight(victim)
        # had it been used, the map would be wrong: run the sweep once with the tampered graph swapped in
        k = files.index(victim)
        first.stages[k].sess = stage_session(victim)
        wrong = first.sweep(x, occ)["logits"]
        assert np.abs(wrong - clean).max() > 1e-3
        if tamper == "one_weight_and_its_record":
            incr.write_record(victim)
            assert incr.recorded_problem(victim) is None  # the hash alone cannot see it now
    expected = {
        "flip_bytes": "does not match the SHA-256",
        "one_weight": "does not match the SHA-256",
        "one_weight_and_its_record": "disagrees with the torch model",
    }[tamper]
    with pytest.warns(UserWarning, match=rf"cached stage {victim.name} .*rebuilding it"):
        again = IncrementalOcclusion(net, ["logits"])
    assert [r["file"] for r in again.meta["rebuilt_stages"]] == [victim.name]
    assert expected in again.meta["rebuilt_stages"][0]["problem"]
    assert incr.recorded_problem(victim) is None  # rebuilt, with a fresh record
    after = again.sweep(x, occ)["logits"]
    assert np.abs(after - clean).max() <= 1e-6
    # the next open finds everything in order: nothing rebuilt, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = IncrementalOcclusion(net, ["logits"])
    assert quiet.meta["rebuilt_stages"] == []


def test_stage_without_record_is_rebuilt_and_stale_temporaries_are_removed(chelsea, tmp_path, monkeypatch):
    """A stage whose SHA-256 record is missing is not trusted; temporaries of a killed builder (dead pid) are
    removed when the next build starts, those of a live process are left alone."""
    import subprocess
    import sys

    from accel.runtime import export as incr

    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    net = get_net("fashion_cnn")
    inc = IncrementalOcclusion(net, ["logits"])
    folder = inc.stage_path("x").parent
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = folder / f".incr-{net.name}-stage-1_0-act-v4.onnx.{dead_pid}-1.tmp"
    live = folder / f".incr-{net.name}-stage-1_0-act-v4.onnx.{os.getppid()}-1.tmp"
    stale.write_bytes(b"half a graph")
    live.write_bytes(b"being written")
    victim = _stage_files(inc)[0]
    incr.record_path(victim).unlink()
    with pytest.warns(UserWarning, match="has no recorded SHA-256"):
        again = IncrementalOcclusion(net, ["logits"])
    assert [r["file"] for r in again.meta["rebuilt_stages"]] == [victim.name]
    assert not stale.exists() and live.exists()
    x = net.preprocess(chelsea).numpy()
    occ = Occlusion(28, 28, (7, 7), (7, 7))
    assert np.abs(again.sweep(x, occ)["logits"] - inc.sweep(x, occ)["logits"]).max() <= 1e-6
