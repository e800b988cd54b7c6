"""Two runners, one answer: ONNX Runtime and torch agree on every tap; exports are cached and checked."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import accel
from accel.errors import BadInput
from accel.runtime import cache as cache_mod
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
            # 1e-4 relative to the tap's largest value when that exceeds 1 (the product's own parity rule), else
            # 1e-4 absolute: fp32 rounding grows with magnitude (EfficientNet block outputs reach |x| ~ 40, VGG19's
            # Caffe-scale activations 1e3-1e4, AlexNet features.7 ~ 54, where an AVX2-only CPU's kernels differ
            # from torch's by 1.2e-4 = 2.3e-6 relative).
            bound = 1e-4 * max(1.0, float(np.abs(b[t]).max()))
            assert d <= bound, f"{name} tap {t} batch {bs}: max abs diff {d} > {bound}"
    assert set(ort_r.meta["parity_max_abs"]) == set(taps)


def test_runner_accepts_images_and_batches_automatically(lite0, imagenet_photos):
    photos = [img for img, _ in imagenet_photos[:5]]
    r = accel.runner(lite0, ["logits"], backend="torch", batch_size=2)
    out = r.run(photos)
    assert out["logits"].shape == (5, 1000)
    assert r.passes == 3 and r.last_passes == 3
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


def test_cache_key_changes_with_taps_and_weights(lite0):
    k1 = export_mod.export_key(lite0, ["logits"], 17)
    assert k1 != export_mod.export_key(lite0, ["logits", "embedding"], 17)
    assert k1 != export_mod.export_key(lite0, ["logits"], 18)
    other = get_net("efficientnet_lite1")
    assert k1 != export_mod.export_key(other, ["logits"], 17)


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
import threading
x = torch.ones(16, 3, 224, 224)
conv = torch.nn.Conv2d(3, 96, 3, padding=1)
def passes(n):
    with torch.no_grad():
        for _ in range(n):
            conv(x)  # a 294 MiB activation per pass, freed after each
def in_thread(n):  # a fresh thread per call, as the dashboard runs every script and job
    t = threading.Thread(target=passes, args=(n,))
    t.start()
    t.join()
passes(1)  # warm: the first pass faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
passes(5)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
in_thread(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    in_thread(1)
thread_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "thread_faults": thread_faults, "state": state}))
"""


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc heap tuning is Linux-only")
def test_allocator_tuning_stops_per_forward_page_faults(tmp_path):
    """With glibc's defaults each large activation is a fresh mmap that faults in again every forward; after
    tune_allocator() the freed blocks are reused (the CLI and the dashboard tune; torch eager 1.4-2.2x faster), in
    the main thread and in fresh threads alike."""
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
    assert tuned["state"]["arena_max"] == 1
    assert default["faults"] > 4 * pages  # faulted in again on (nearly) every pass
    assert tuned["faults"] < pages // 4  # reused
    # threads of their own (each script run, each job) reuse the tuned main heap too
    assert default["thread_faults"] > 4 * pages
    assert tuned["thread_faults"] < pages // 4, tuned


def test_allocator_tuning_can_be_turned_off(monkeypatch):
    from accel.runtime import alloc

    monkeypatch.setattr(alloc, "_STATE", {})
    monkeypatch.setenv("CONVLENS_TUNE_MALLOC", "0")
    assert alloc.tune_allocator() == {"applied": False, "reason": "CONVLENS_TUNE_MALLOC=0"}
    assert alloc.allocator_state()["applied"] is False


_ARENA_SCRIPT = """
import json, sys
import numpy as np
import accel
from accel.runtime.alloc import tune_allocator
state = tune_allocator() if sys.argv[1] == "tuned" else {}
net = accel.load("fashion_cnn")
r = accel.runner(net, ["logits"], backend="onnxruntime")
r.run(np.zeros((2, *net.input_shape), np.float32))
print(json.dumps({"arena": r.session.get_session_options().enable_cpu_mem_arena}))
"""


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc heap tuning is Linux-only")
def test_pooled_sessions_keep_their_arena_unless_the_heap_is_tuned():
    """A pooled ONNX Runtime session drops its CPU arena (which never shrinks) only where malloc reuses freed blocks
    (a tuned heap: the dashboard, the CLI); on glibc's default heap (library users, the bench) it keeps it: there,
    malloc'd activations are fresh mmaps faulted in on every run (lite0 1.3-1.6x slower per image)."""
    import json
    import subprocess
    import sys

    def run(mode: str) -> dict:
        env = dict(os.environ, CONVLENS_TUNE_MALLOC="1", OMP_NUM_THREADS="1")
        out = subprocess.run(
            [sys.executable, "-c", _ARENA_SCRIPT, mode], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("default")["arena"] == 1 and run("tuned")["arena"] == 0


# ----------------------------------------------------------------------------------------------- export cache: verified on read


def _fresh_cache(tmp_path, monkeypatch):
    """An empty export cache for this test, and an empty runner pool (so nothing is reused from elsewhere)."""
    from accel.runtime import pool as runner_mod

    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    runner_mod.clear_pool()
    return cache_mod.cache_dir()


def _fashion_batch(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 28, 28)).astype(np.float32)


def test_tampered_export_is_detected_rebuilt_and_equal_to_a_clean_one(tmp_path, monkeypatch):
    """Bytes flipped in a cached export: the SHA-256 check catches them on the next open, the graph is rebuilt
    (with a warning) and parity-checked, and its outputs equal the clean export's to 1e-6."""
    import copy

    from accel.runtime.session import make_session

    _fresh_cache(tmp_path, monkeypatch)
    net = get_net("fashion_cnn")
    taps = ["logits", "embedding"]
    x = _fashion_batch()
    r = accel.runner(net, taps, backend="onnxruntime")
    clean = r.run(x)
    path = export_mod.cache_path(net, taps)
    assert str(path) == r.meta["onnx"] and export_mod.recorded_problem(path) is None
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64, 8):  # inside the weights
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    sess = make_session(path, ("CPUExecutionProvider",))[0]  # the damage matters: it changes the outputs
    assert np.abs(sess.run(None, {"input": x})[0] - clean["logits"]).max() > 1e-3
    assert "does not match the SHA-256" in export_mod.recorded_problem(path)

    from accel.runtime import pool as runner_mod

    runner_mod.clear_pool()
    with pytest.warns(UserWarning, match="does not match the SHA-256 recorded"):
        r2 = accel.runner(copy.deepcopy(net), taps, backend="onnxruntime")
    assert export_mod.recorded_problem(path) is None and r2.meta["parity_rel"] < 1e-4
    again = r2.run(x)
    for t in taps:
        assert np.abs(again[t] - clean[t]).max() <= 1e-6, t


def test_consistent_but_wrong_export_fails_parity_and_is_rebuilt(tmp_path, monkeypatch):
    """A cached graph whose sidecar matches but whose weights are not the model's (an old or foreign file): the
    parity check refuses it, it is rebuilt with a warning, and the rebuilt graph agrees with a clean one."""
    import copy

    from accel.runtime import pool as runner_mod

    _fresh_cache(tmp_path, monkeypatch)
    net = get_net("fashion_cnn")
    x = _fashion_batch()
    clean = accel.runner(net, ["logits"], backend="onnxruntime").run(x)["logits"]
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.module.fc.bias += 0.25
    other._hash = None
    wrong = export_mod.export_backbone(other, ["logits"], out=tmp_path / "wrong.onnx")
    target = export_mod.cache_path(net, ["logits"])
    target.write_bytes(wrong.read_bytes())
    export_mod.write_record(target)
    assert export_mod.recorded_problem(target) is None  # the hash cannot tell; parity must
    runner_mod.clear_pool()
    with pytest.warns(UserWarning, match="failed its parity check"):
        r = accel.runner(net, ["logits"], backend="onnxruntime")
    assert r.meta["rebuilt_export"] and runner_mod.pool_info()["rebuilt_exports"] >= 1
    assert np.abs(r.run(x)["logits"] - clean).max() <= 1e-6


class _ExportsDifferently(torch.nn.Module):
    """Behaves one way in torch and another inside torch.onnx.export: every export of it disagrees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.conv(x).mean((2, 3)))
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


def test_export_that_keeps_disagreeing_is_refused_as_badinput(tmp_path, monkeypatch):
    """Rebuilt once, still disagreeing: `backend="onnxruntime"` refuses with ParityError (a BadInput, not a
    RuntimeError); `backend="auto"` then falls back to torch with a warning, without exporting again."""
    from accel.runtime.runner import ParityError
    from accel.zoo import Backbone, Preproc

    _fresh_cache(tmp_path, monkeypatch)
    net = Backbone("sly", _ExportsDifferently(), Preproc(8, 8, (0.5,), (0.5,), 1.0, "L"), ["a", "b", "c"])
    with pytest.warns(UserWarning, match="rebuilding it"), pytest.raises(ParityError, match="disagrees") as e:
        accel.runner(net, ["logits"], backend="onnxruntime")
    assert isinstance(e.value, BadInput) and not isinstance(e.value, RuntimeError)
    assert "also after rebuilding" in str(e.value)
    built = export_mod.cache_path(net, ["logits"]).stat().st_mtime_ns
    with pytest.warns(UserWarning, match="using torch") as seen:
        r = accel.runner(net, ["logits"], backend="auto")
    assert r.backend == "torch" and len(seen) == 1
    assert (
        export_mod.cache_path(net, ["logits"]).stat().st_mtime_ns == built
    )  # refused once: not exported again


# ----------------------------------------------------------------------------------------------- concurrency


def test_threads_on_a_cold_cache_export_each_graph_once(tmp_path, monkeypatch):
    """8 threads (deep copies of one backbone, as dashboard sessions hold them) ask for the same and different
    exports on an empty cache at once: no errors, one file per key, every file valid with its hash, no
    temporaries left, one ONNX Runtime session per (taps, options)."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    import onnx

    from accel.runtime.session import sessions_started

    cache = _fresh_cache(tmp_path, monkeypatch)
    net = get_net("fashion_cnn")
    wants = [["logits"], ["embedding"], ["logits", "embedding"]]
    jobs = [(copy.deepcopy(net), wants[i % 3]) for i in range(8)]
    s0 = sessions_started()
    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(accel.runner, n, t, backend="onnxruntime") for n, t in jobs]
        runners = [f.result() for f in futs]  # re-raises any error
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 3, files
    for f in files:
        assert export_mod.recorded_problem(f) is None
        onnx.checker.check_model(str(f))
    assert not list(cache.glob(".*.tmp"))
    assert sessions_started() - s0 == 3
    by_taps: dict = {}
    for r, (_, t) in zip(runners, jobs):
        assert by_taps.setdefault(tuple(t), r) is r  # one shared runner per key
    x = _fashion_batch()
    want = TorchRunner(net, ["logits", "embedding"]).run(x)
    got = by_taps[("logits", "embedding")].run(x)
    assert all(np.abs(got[t] - want[t]).max() < 1e-4 for t in want)


_EXPORT_SCRIPT = """
import sys, accel
from accel.runtime.export import export_backbone
print(export_backbone(accel.load("fashion_cnn"), ["logits", "embedding"]))
"""


def test_two_processes_exporting_the_same_graph(tmp_path):
    """Two processes export the same graph into one empty cache at once: both succeed, one valid file."""
    import subprocess
    import sys

    env = dict(os.environ, CONVLENS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    files = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(files) == 1 and export_mod.recorded_problem(files[0]) is None
    assert not list((tmp_path / "cache" / "onnx").glob(".*.tmp"))


def test_temporaries_of_killed_exports_are_cleaned_on_the_next_start(tmp_path, monkeypatch):
    """Temporaries whose process is gone (or that are hours old) are removed when a process first uses the
    cache, and beside an `--out` file when it is exported again; live or foreign files stay."""
    import subprocess
    import sys
    import time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = gone.pid
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "cache" / "onnx"
    d.mkdir(parents=True)
    stale = d / f".fashion_cnn-0123.onnx.{dead}-140000.tmp"
    live = d / f".fashion_cnn-4567.onnx.{os.getppid()}-1.tmp"  # another running process: still at work
    old = d / f".fashion_cnn-89ab.onnx.{os.getppid()}-2.tmp"
    unrelated = d / ".notes.tmp"
    for f in (stale, live, old, unrelated):
        f.write_bytes(b"\0" * 4096)
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    cache_mod._CLEANED.discard(str(d))
    assert cache_mod.cache_dir() == d
    assert not stale.exists() and not old.exists() and live.exists() and unrelated.exists()

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    left = out_dir / f".m.onnx.{dead}-7.tmp"  # what a killed `convlens export --out out/m.onnx` leaves
    foreign = out_dir / f".n.onnx.{dead}-7.tmp"  # not this target's: not ours to judge
    left.write_bytes(b"\0" * 4096)
    foreign.write_bytes(b"\0" * 4096)
    p = export_mod.export_backbone(get_net("fashion_cnn"), ["logits"], out=out_dir / "m.onnx")
    assert p.exists() and not left.exists() and foreign.exists()
    assert sorted(f.name for f in out_dir.iterdir()) == [".n.onnx." + f"{dead}-7.tmp", "m.onnx"]


# ----------------------------------------------------------------------------------------------- the runner pool


def test_pool_shares_one_session_per_weights_taps_and_options(tmp_path, monkeypatch):
    """Copies of one backbone share one runner (one ONNX Runtime session) per (taps, options); the pool holds
    no caller's torch module; it is bounded, least recently used first out; new weights get a new runner."""
    import copy

    from accel.runtime import pool as runner_mod
    from accel.runtime.session import sessions_started

    _fresh_cache(tmp_path, monkeypatch)
    net = get_net("fashion_cnn")
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    s0 = sessions_started()
    ra = accel.runner(a, ["logits"], backend="onnxruntime")
    assert accel.runner(b, ["logits"], backend="onnxruntime") is ra
    assert accel.runner(net, ["logits"]) is ra  # "auto" takes the same pooled runner
    assert sessions_started() - s0 == 1
    assert (
        ra.net.module is None and a.module is not None
    )  # the pooled view drops the module, callers keep theirs
    rb = accel.runner(b, ["logits", "embedding"], backend="onnxruntime")
    rc = accel.runner(b, ["logits"], backend="onnxruntime", batch_size=3)
    assert len({id(ra), id(rb), id(rc)}) == 3 and sessions_started() - s0 == 3
    changed = copy.deepcopy(net)
    with torch.no_grad():
        next(iter(changed.module.parameters())).add_(0.01)
    changed._hash = None  # the convention for edited weights: a new hash
    assert accel.runner(changed, ["logits"], backend="onnxruntime") is not ra
    monkeypatch.setattr(runner_mod, "POOL_MAX", 2)
    runner_mod.clear_pool()
    first = accel.runner(a, ["logits"], backend="onnxruntime")
    accel.runner(a, ["embedding"], backend="onnxruntime")
    accel.runner(a, ["logits"], backend="onnxruntime")  # touched: now the most recent
    accel.runner(a, ["logits", "embedding"], backend="onnxruntime")  # evicts "embedding", not "logits"
    info = runner_mod.pool_info()
    assert info["size"] == 2 and info["evicted"] >= 1
    assert accel.runner(b, ["logits"], backend="onnxruntime") is first


def test_last_passes_is_per_thread_on_a_shared_runner(tmp_path, monkeypatch):
    """Two threads sweep and run on one pooled runner at once; each sees its own pass count in last_passes,
    and `passes` is the exact total."""
    import threading

    from accel.runtime.sweep import Occlusion

    _fresh_cache(tmp_path, monkeypatch)
    net = get_net("fashion_cnn")
    r = accel.runner(net, ["logits"], backend="onnxruntime", batch_size=2)
    p0 = r.passes
    x = _fashion_batch(1)
    errors: list[str] = []

    def runs() -> None:
        for _ in range(15):
            r.run(_fashion_batch(9))
            if r.last_passes != 5:
                errors.append(f"run: {r.last_passes}")

    def sweeps() -> None:
        occ = Occlusion(28, 28, (14, 14), (7, 7))  # 9 windows -> 5 passes of 2
        for _ in range(15):
            r.sweep(x, occ, reduce=lambda o: o["logits"][:, 0])
            if r.last_passes != 5:
                errors.append(f"sweep: {r.last_passes}")
        r.run(x)
        if r.last_passes != 1:
            errors.append(f"single: {r.last_passes}")

    ts = [threading.Thread(target=f) for f in (runs, sweeps, runs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:5]
    assert r.passes - p0 == 3 * 15 * 5 + 1


# ----------------------------------------------------------------------------------------------- fair use


def test_occlusion_window_cap_refuses_before_any_work(lite0, chelsea, monkeypatch):
    """Window 1 / stride 1 on 224 px is 50,176 forward passes: refused at once with the setting's name; the cap
    is a setting, and drill_down counts the share of windows it evaluates."""
    import time

    from accel.errors import ResourceLimit
    from accel.methods.attribute.occlusion import windows_planned
    from accel.runtime import pool as runner_mod

    before = runner_mod.pool_info()
    t0 = time.perf_counter()
    with pytest.raises(ResourceLimit, match="CONVLENS_MAX_WINDOWS") as e:
        accel.run("occlusion", lite0, chelsea, window=1, stride=1)
    assert time.perf_counter() - t0 < 2.0 and "50,176" in str(e.value) and "20,000" in str(e.value)
    assert runner_mod.pool_info() == before  # no runner was even asked for
    assert windows_planned(224, 224, 1, 1, "plain", 0.3) == 50_176
    assert windows_planned(224, 224, 32, 8, "drill_down", 0.3) == round(0.3 * 625)
    assert windows_planned(224, 224, 32, 32, "drill_down", 0.3) == 49  # stride >= window: the full map
    monkeypatch.setenv("CONVLENS_MAX_WINDOWS", "40")
    with pytest.raises(ResourceLimit, match="49 occluded copies.*CONVLENS_MAX_WINDOWS=49"):
        accel.run("occlusion", lite0, chelsea, window=32, stride=32, backend="torch")
    res = accel.run("occlusion", lite0, chelsea, window=56, stride=56, backend="torch")  # 16 windows
    assert res.meta["windows"] == 16
    monkeypatch.setenv("CONVLENS_MAX_WINDOWS", "many")
    with pytest.raises(BadInput, match="CONVLENS_MAX_WINDOWS='many' is not a number"):
        accel.run("occlusion", lite0, chelsea, window=56, stride=56, backend="torch")


def test_killed_cli_export_leaves_a_temporary_that_the_next_export_removes(tmp_path):
    """A real `convlens export --out X` killed (SIGKILL) while writing: it leaves `.X.<pid>-<thread>.tmp` beside
    X and no X; the next export to X removes it and writes a valid X."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import onnx

    exe = shutil.which("convlens", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the convlens console script is not installed in this environment")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    env = dict(os.environ, CONVLENS_CACHE=str(tmp_path / "cache"))
    p = subprocess.Popen([exe, "export", "--model", "fashion_cnn", "--out", str(out)], env=env)
    left: list = []
    deadline = time.monotonic() + 240
    while p.poll() is None and time.monotonic() < deadline:
        left = list(out.parent.glob(".m.onnx.*.tmp"))
        if left:
            os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    p.wait(timeout=60)
    if not left:
        pytest.skip("the export finished before it could be killed mid-write")
    assert p.returncode == -signal.SIGKILL and not out.exists() and all(f.exists() for f in left)
    export_mod.export_backbone(get_net("fashion_cnn"), ["logits"], out=out)
    assert [f.name for f in out.parent.iterdir()] == ["m.onnx"]
    onnx.checker.check_model(str(out))


def test_check_file_parity_of_an_out_file(tmp_path):
    """The parity check for an exported file itself (what `convlens export --out` should report): a faithful
    export passes with its per-tap differences, another model's graph is refused with ParityError."""
    import copy

    from accel.runtime.export import ParityError, check_file_parity

    net = get_net("fashion_cnn")
    good = export_mod.export_backbone(net, ["logits", "embedding"], out=tmp_path / "good.onnx")
    meta = check_file_parity(net, ["logits", "embedding"], good)
    assert set(meta["parity_max_abs"]) == {"logits", "embedding"} and meta["parity_rel"] < 1e-4
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.module.fc.bias += 0.5
    other._hash = None
    wrong = export_mod.export_backbone(other, ["logits", "embedding"], out=tmp_path / "wrong.onnx")
    with pytest.raises(ParityError, match="disagrees with torch on tap 'logits'"):
        check_file_parity(net, ["logits", "embedding"], wrong)
