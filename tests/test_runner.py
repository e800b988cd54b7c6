"""Two runners, one answer: ONNX Runtime and torch agree on every tap; exports are cached and checked."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import accel
from accel.errors import BadInput
from accel.runtime import export as export_mod
from accel.runtime.runner import OrtRunner, TorchRunner, auto_batch_size
from tests.conftest import get_net


def _taps(net) -> list[str]:
    """logits/embedding plus a spread of layers from first to last (every activation and block output)."""
    base = (["logits"] if net.has_head else []) + ["embedding"]
    if net.name.startswith("efficientnet"):
        acts = [li.name for li in net.layers() if li.kind == "relu6"]
        layers = acts[::3] + [f"_blocks.{i}" for i in range(0, 16, 3)] + ["_act_head"]
    else:
        layers = [li.name for li in net.layers() if li.kind in ("relu", "maxpool2d")]
    return base + layers


@pytest.mark.parametrize("name", ["efficientnet_lite0", "alexnet", "vgg16", "vgg19"])
def test_ort_matches_torch_on_real_photos(name, imagenet_photos):
    net = get_net(name)
    taps = _taps(net)
    ort_r = accel.runner(net, taps, backend="onnxruntime")
    tor_r = accel.runner(net, taps, backend="torch")
    assert ort_r.backend == "onnxruntime" and ort_r.meta["provider"] == "CPUExecutionProvider"
    assert tor_r.backend == "torch"
    photos = [img for img, _ in imagenet_photos[:7]]
    for bs in (1, 7):
        x = net.preprocess_batch(photos[:bs])
        a, b = ort_r.run(x), tor_r.run(x)
        for t in taps:
            assert a[t].shape == b[t].shape and a[t].shape[0] == bs, t
            d = float(np.abs(a[t] - b[t]).max())
            # Activations, embeddings and logits: 1e-4 absolute. Un-activated block outputs of EfficientNet
            # reach |x| ~ 40 and VGG19 (Caffe convention, 0..255 inputs) reaches |x| ~ 1e3-1e4, where fp32
            # rounding alone exceeds 1e-4; there the bound is 1e-4 relative to the tap's largest value.
            relative = t.startswith("_blocks.") or name == "vgg19"
            bound = 1e-4 * (max(1.0, float(np.abs(b[t]).max())) if relative else 1.0)
            assert d <= bound, f"{name} tap {t} batch {bs}: max abs diff {d} > {bound}"
    assert set(ort_r.meta["parity_max_abs"]) == set(taps)


def test_runner_accepts_images_and_batches_automatically(lite0, imagenet_photos):
    photos = [img for img, _ in imagenet_photos[:5]]
    r = accel.runner(lite0, ["logits"], backend="torch", batch_size=2)
    out = r.run(photos)
    assert out["logits"].shape == (5, 1000)
    assert r.passes == 3
    seen = []
    r.run(photos, progress=lambda f, msg: seen.append(f))
    assert seen[-1] == 1.0 and len(seen) == 3


def test_auto_backend_prefers_onnxruntime(lite0):
    r = accel.runner(lite0, ["logits"])
    assert r.backend == "onnxruntime"
    assert r.meta["parity_rel"] < 1e-4
    assert (
        any("skipped" in f or "Execution" in f for f in r.meta["provider_failures"])
        or not r.meta["provider_failures"]
    )


def test_export_cache_is_reused_and_rebuilt_when_corrupt(lite0):
    p1 = export_mod.export_backbone(lite0, ["logits", "_act_head"])
    m1 = os.stat(p1).st_mtime_ns
    p2 = export_mod.export_backbone(lite0, ["logits", "_act_head"])
    assert p1 == p2 and os.stat(p2).st_mtime_ns == m1
    p1.write_bytes(b"corrupt" * 100)
    with pytest.warns(UserWarning, match="corrupt"):
        p3 = export_mod.export_backbone(lite0, ["logits", "_act_head"])
    assert p3 == p1
    r = OrtRunner(lite0, ["logits", "_act_head"])
    x = lite0.normalize(torch.rand(1, 3, 224, 224))
    assert np.abs(r.run(x)["logits"] - TorchRunner(lite0, ["logits"]).run(x)["logits"]).max() < 1e-4


def test_cache_key_changes_with_taps_and_weights(lite0):
    k1 = export_mod.export_key(lite0, ["logits"], 17)
    assert k1 != export_mod.export_key(lite0, ["logits", "embedding"], 17)
    assert k1 != export_mod.export_key(lite0, ["logits"], 18)
    other = get_net("efficientnet_lite1")
    assert k1 != export_mod.export_key(other, ["logits"], 17)


def test_export_that_disagrees_is_refused(chelsea):
    net = accel.load("alexnet")
    taps = ["embedding"]
    net.weights_hash()
    export_mod.export_backbone(net, taps)  # export (or reuse) for the pristine weights
    with torch.no_grad():
        net.module.features[0].bias += 0.5  # module changes, but the cached hash (and export) do not
    with pytest.raises(RuntimeError, match="disagrees with torch"):
        accel.runner(net, taps, backend="onnxruntime")
    with pytest.warns(UserWarning, match="using torch"):
        r = accel.runner(net, taps, backend="auto")
    assert r.backend == "torch"


def test_bad_taps_and_inputs(lite0):
    with pytest.raises(BadInput, match="unknown layer"):
        accel.runner(lite0, ["nope"], backend="torch")
    with pytest.raises(BadInput, match="at least one tap"):
        accel.runner(lite0, [], backend="torch")
    with pytest.raises(BadInput, match="no classifier head"):
        accel.runner(get_net("vgg16"), ["logits"], backend="torch").run(
            np.zeros((1, 3, 224, 224), np.float32)
        )
    r = accel.runner(lite0, ["logits"], backend="torch")
    with pytest.raises(BadInput, match="expects a batch of shape"):
        r.run(np.zeros((1, 3, 100, 100), np.float32))
    x = np.zeros((1, 3, 224, 224), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        r.run(x)
    with pytest.raises(BadInput, match="backend must be"):
        accel.runner(lite0, ["logits"], backend="tpu")


def test_batch_size_follows_memory_budget(lite0, monkeypatch):
    from accel.runtime.runner import max_auto_batch

    big = auto_batch_size(lite0, 8 * 2**30)
    small = auto_batch_size(lite0, 10 * 2**20)
    assert big == max_auto_batch() and small == 1
    monkeypatch.setenv("CONVLENS_MEMORY_BUDGET_MB", "1")
    assert accel.runner(lite0, ["logits"], backend="torch").batch_size == 1


def test_gpu_provider_failure_falls_back_to_cpu_and_is_recorded(tmp_path, monkeypatch):
    """Make the engine believe a GPU driver exists: TensorRT and CUDA then really try to start here (their
    libraries are missing), fail, and the session falls back to the CPU provider with each failure recorded."""
    import onnxruntime as ort

    from accel.runtime import session as sess_mod

    if sess_mod.gpu_driver_present():
        pytest.skip("a real NVIDIA driver is present: GPU providers would start, nothing to fall back from")
    gpu = [
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        if p in ort.get_available_providers()
    ]
    if not gpu:
        pytest.skip("this onnxruntime build has no GPU providers to fail")
    net = get_net("fashion_cnn")
    path = export_mod.export_backbone(net, ["logits"])
    monkeypatch.setattr(sess_mod, "gpu_driver_present", lambda: True)
    sess, provider, failures = sess_mod.make_session(path)
    assert provider == "CPUExecutionProvider"
    assert [f.split(":")[0] for f in failures] == gpu, failures
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        want = net.module(torch.from_numpy(x)).numpy()
    got = sess.run(None, {name: x})[0]
    assert np.abs(got - want).max() < 1e-4


def test_io_binding_path_equals_plain_run(chelsea):
    """The IO-binding forward (default on GPU providers) gives the same outputs as session.run; exercised here on
    the CPU provider with host OrtValues."""
    from accel.runtime.runner import OrtRunner

    net = get_net("efficientnet_lite0")
    x = net.preprocess_batch([chelsea, chelsea.rotate(90)]).numpy()
    bound = OrtRunner(net, ["logits", "embedding"], io_binding=True)
    plain = OrtRunner(net, ["logits", "embedding"])
    assert bound.meta["io_binding"] and not plain.meta["io_binding"]  # CPU provider: off unless asked
    a, b = bound.run(x), plain.run(x)
    for t in ("logits", "embedding"):
        assert a[t].shape == b[t].shape and np.array_equal(a[t], b[t])


def test_fp16_copy_and_gpu_provider_options(tmp_path, monkeypatch):
    """fp16 for GPU providers: the converted graph keeps float32 I/O and holds fp16 weights; TensorRT options
    cache engines under the convlens cache and follow the fp16 switch. fp16 on the CPU provider is refused."""
    import onnx

    from accel.runtime.quantize import to_fp16
    from accel.runtime.session import provider_options

    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path))
    net = get_net("fashion_cnn")
    src = export_mod.export_backbone(net, ["logits"])
    half = to_fp16(src)
    m = onnx.load(str(half))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {i.data_type for i in m.graph.initializer if len(i.dims) == 4}  # conv kernels
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert to_fp16(src) == half  # cached
    # The fp16 copy really runs (the CPU provider executes it, slowly) and its cost is what the runner reports.
    from accel.runtime.quantize import accuracy_cost
    from accel.runtime.session import make_session

    x = np.random.default_rng(0).random((8, *net.input_shape), dtype=np.float32)
    ref = make_session(src, ("CPUExecutionProvider",))[0].run(None, {"input": x})
    got = make_session(half, ("CPUExecutionProvider",))[0].run(None, {"input": x})
    cost = accuracy_cost(ref, got, ["logits"])
    assert 0 < cost["max_abs_diff"]["logits"] < 5e-2 and cost["top1_agreement"] == 1.0
    trt = provider_options("TensorrtExecutionProvider", fp16=True)
    assert trt["trt_fp16_enable"] == "True" and trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path))
    assert provider_options("TensorrtExecutionProvider")["trt_fp16_enable"] == "False"
    assert provider_options("CUDAExecutionProvider")["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert provider_options("CPUExecutionProvider") == {}
    with pytest.raises(BadInput, match="fp16 is offered on GPU providers only"):
        accel.runner(
            net, ["logits"], backend="onnxruntime", precision="fp16", providers=("CPUExecutionProvider",)
        )


_FAULTS_SCRIPT = """
import json, resource, sys, torch
from accel.runtime.alloc import tune_allocator
state = tune_allocator() if sys.argv[1] == "tuned" else {}
x = torch.ones(16, 3, 224, 224)
conv = torch.nn.Conv2d(3, 96, 3, padding=1)
with torch.no_grad():
    conv(x)  # warm: the first pass faults its pages in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        conv(x)  # a 294 MiB activation per pass, freed after each
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "state": state}))
"""


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc heap tuning is Linux-only")
def test_allocator_tuning_stops_per_forward_page_faults(tmp_path):
    """With glibc's defaults each large activation is a fresh mmap that faults in again every forward; after
    tune_allocator() the freed blocks are reused (the CLI and the dashboard tune; torch eager 1.4-2.2x faster)."""
    import json
    import subprocess
    import sys

    def faults(mode: str) -> dict:
        env = dict(os.environ, CONVLENS_TUNE_MALLOC="1", OMP_NUM_THREADS="1")
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, tuned = faults("default"), faults("tuned")
    pages = 16 * 96 * 224 * 224 * 4 // 4096  # one activation's 4 KiB pages
    assert tuned["state"]["applied"] is True and tuned["state"]["mmap_threshold_mb"] == 512
    assert default["faults"] > 4 * pages  # faulted in again on (nearly) every pass
    assert tuned["faults"] < pages // 4  # reused


def test_allocator_tuning_can_be_turned_off(monkeypatch):
    from accel.runtime import alloc

    monkeypatch.setattr(alloc, "_STATE", {})
    monkeypatch.setenv("CONVLENS_TUNE_MALLOC", "0")
    assert alloc.tune_allocator() == {"applied": False, "reason": "CONVLENS_TUNE_MALLOC=0"}
    assert alloc.allocator_state()["applied"] is False
