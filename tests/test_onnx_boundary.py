"""The ONNX boundary: ONNX Runtime's own exceptions become convlens errors, allocation failures halve the batch,
NaN outputs are refused, and user graphs run in a sandbox process with a timeout and a memory cap.

Every graph here is real (built with onnx.helper) and runs in the real ONNX Runtime: one asks for 4 TiB, one
loops 2**62 times, one computes NaN, one needs ~200 MiB per image.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as T
from onnx import helper as h
from PIL import Image

import accel
from accel.errors import BadInput, ResourceLimit
from accel.runtime import sandbox
from accel.runtime.runner import Runner
from accel.runtime.session import OrtAllocationError, make_session, run_session
from accel.zoo import Backbone, Preproc
from tests.conftest import get_net

TIB4 = 4 * 2**40


def _model(nodes, inits=(), out_shape=("N", 3), in_shape=("N", 3, 8, 8), ir=8) -> onnx.ModelProto:
    x = h.make_tensor_value_info("input", T.FLOAT, list(in_shape))
    y = h.make_tensor_value_info("y", T.FLOAT, list(out_shape))
    m = h.make_model(
        h.make_graph(list(nodes), "g", [x], [y], initializer=list(inits)),
        opset_imports=[h.make_opsetid("", 17)],
    )
    m.ir_version = ir
    onnx.checker.check_model(m)
    return m


def _pool() -> list:
    """input (N,3,8,8) -> 'f' (N,3): global average pool, flattened (a tiny classifier body)."""
    return [h.make_node("GlobalAveragePool", ["input"], ["p"]), h.make_node("Flatten", ["p"], ["f"])]


def classifier() -> onnx.ModelProto:
    """A valid (N,3,8,8) -> (N,3) classifier."""
    w = h.make_tensor("w", T.FLOAT, [1, 3], [1.0, 2.0, 3.0])
    return _model([*_pool(), h.make_node("Mul", ["f", "w"], ["y"])], [w])


def four_tib() -> onnx.ModelProto:
    """Asks ONNX Runtime for a 2**20 x 2**20 float tensor (4 TiB) whatever the batch."""
    shape = h.make_tensor("shape", T.INT64, [2], [1 << 20, 1 << 20])
    return _model(
        [
            *_pool(),
            h.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
            h.make_node("Expand", ["s", "shape"], ["e"]),
            h.make_node("ReduceSum", ["e"], ["t"], keepdims=0),
            h.make_node("Add", ["f", "t"], ["y"]),
        ],
        [shape],
    )


def per_image_mib(mib: int) -> onnx.ModelProto:
    """Needs `mib` MiB per image: each of the 192 input values is expanded to a row, then reduced back (max), so the
    output (N,192) equals the flattened input."""
    cols = mib * 2**20 // (192 * 4)
    return _model(
        [
            h.make_node("Reshape", ["input", "s3"], ["r"]),
            h.make_node("Expand", ["r", "big"], ["e"]),
            h.make_node("ReduceMax", ["e"], ["m"], axes=[2], keepdims=0),
            h.make_node("Identity", ["m"], ["y"]),
        ],
        [h.make_tensor("s3", T.INT64, [3], [0, 192, 1]), h.make_tensor("big", T.INT64, [3], [1, 192, cols])],
        out_shape=("N", 192),
    )


def endless_loop(trips: int = 2**62) -> onnx.ModelProto:
    """A Loop of `trips` iterations adding 1 to a counter, then added to the class scores."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [
            h.make_tensor_value_info("i", T.INT64, []),
            h.make_tensor_value_info("cond_in", T.BOOL, []),
            h.make_tensor_value_info("v_in", T.FLOAT, [1]),
        ],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [1])],
        [h.make_tensor("one", T.FLOAT, [1], [1.0])],
    )
    inits = [
        h.make_tensor("trips", T.INT64, [], [trips]),
        h.make_tensor("cond", T.BOOL, [], [True]),
        h.make_tensor("v0", T.FLOAT, [1], [0.0]),
    ]
    return _model(
        [
            *_pool(),
            h.make_node("Loop", ["trips", "cond", "v0"], ["v"], body=body),
            h.make_node("Add", ["f", "v"], ["y"]),
        ],
        inits,
    )


def nan_scores() -> onnx.ModelProto:
    """log(-1 - |x|): NaN for every input."""
    one = h.make_tensor("one", T.FLOAT, [], [1.0])
    return _model(
        [
            *_pool(),
            h.make_node("Abs", ["f"], ["a"]),
            h.make_node("Add", ["a", "one"], ["b"]),
            h.make_node("Neg", ["b"], ["c"]),
            h.make_node("Log", ["c"], ["y"]),
        ],
        [one],
    )


def bad_reshape() -> onnx.ModelProto:
    """Reshapes the (N,3,8,8) input to (7,5): fails inside ONNX Runtime at run time."""
    return _model(
        [h.make_node("Reshape", ["input", "sh"], ["y"])], [h.make_tensor("sh", T.INT64, [2], [7, 5])]
    )


def _save(m: onnx.ModelProto, folder: Path, name: str) -> Path:
    p = folder / name
    onnx.save(m, str(p))
    return p


class _SessionRunner(Runner):
    """The runner contract over a real in-process ONNX Runtime session of a crafted graph (the in-process
    boundary: `run_session` converts its exceptions, `_forward_safe` halves on allocation failures)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, batch_size: int) -> None:
        net = Backbone(path.stem, None, Preproc(8, 9), None, has_head=True, onnx_path=path)
        super().__init__(net, ["logits"], batch_size)
        self.session = make_session(path, ("CPUExecutionProvider",))[0]

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        return run_session(self.session, {"input": x}, f"running {self.net.name}")


@pytest.fixture()
def fresh_sandbox():
    """No sandbox host running at the start, and none left at the end."""
    sandbox.shutdown()
    yield sandbox
    sandbox.shutdown()


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- in process


def test_ort_exceptions_become_badinput_or_allocation_errors(tmp_path):
    """ONNX Runtime's own exception types (not RuntimeError subclasses) are converted at the session boundary:
    a run-time failure is a BadInput with a clean one-line message, 4 TiB an OrtAllocationError (MemoryError),
    a file ONNX Runtime cannot open a BadInput naming it."""
    import onnxruntime as ort

    sess = make_session(_save(bad_reshape(), tmp_path, "reshape.onnx"), ("CPUExecutionProvider",))[0]
    with pytest.raises(Exception) as raw:  # what ONNX Runtime itself raises: none of the usual types
        sess.run(None, {"input": _x(1)})
    assert not isinstance(raw.value, (RuntimeError, ValueError, MemoryError)), type(raw.value).__mro__
    with pytest.raises(BadInput, match=r"^running m: ONNX Runtime failed \(in the Reshape node: ") as e:
        run_session(sess, {"input": _x(1)}, "running m")
    assert "onnxruntime_src" not in str(e.value) and "\n" not in str(e.value)
    assert "requested shape:{7,5}" in str(e.value)

    big = make_session(_save(four_tib(), tmp_path, "big.onnx"), ("CPUExecutionProvider",))[0]
    with pytest.raises(OrtAllocationError, match=r"could not allocate memory \(4\.0 TiB requested\)") as e:
        run_session(big, {"input": _x(1)}, "running big")
    assert isinstance(e.value, MemoryError) and e.value.requested == TIB4

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(BadInput, match=r"^junk\.onnx: no ONNX Runtime provider could start a session") as e:
        make_session(junk, ("CPUExecutionProvider",))
    assert "\\x" not in str(e.value)  # no bytes of the file echoed
    assert issubclass(ort.capi.onnxruntime_pybind11_state.Fail, Exception)


def test_allocation_failure_goes_through_batch_halving_in_process(tmp_path):
    """The 4 TiB graph in an in-process session: the runner halves 8 -> 4 -> 2 -> 1 (a warning each), then
    refuses with a BadInput that says one image does not fit, and how much was asked."""
    r = _SessionRunner(_save(four_tib(), tmp_path, "big.onnx"), batch_size=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(BadInput, match=r"big: one image does not fit in memory .*4\.0 TiB requested"):
            r.run(_x(8))
    halvings = [str(w.message) for w in seen if "halving batch size" in str(w.message)]
    assert halvings == [f"allocation failed; halving batch size to {n} and retrying" for n in (4, 2, 1)]
    assert r.meta["batch_halvings"] == 3 and r.batch_size == 1


def test_nan_outputs_are_refused_on_every_path(tmp_path, fresh_sandbox):
    """A graph whose scores are NaN: refused at load (the sandboxed probe), by an in-process runner, and a torch
    module with NaN outputs is refused by the torch runner too."""
    path = _save(nan_scores(), tmp_path, "nan.onnx")
    with pytest.raises(BadInput, match=r"output 'logits' holds NaN or inf \(3 of 3 values\)"):
        accel.load(path)
    with pytest.raises(BadInput, match="NaN or inf"):
        _SessionRunner(path, 4).run(_x(3))

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(-1 - x.mean((1, 2, 3)).abs())[:, None].repeat(1, 3)

    net = Backbone("broken", Broken(), Preproc(8, 9), ["a", "b", "c"])
    with pytest.raises(BadInput, match="broken: the model's output 'logits' holds NaN"):
        accel.runner(net, ["logits"], backend="torch").run(_x(2))


# ----------------------------------------------------------------------------------------------- the sandbox


def test_four_tib_graph_is_refused_at_load_naming_the_memory_cap(tmp_path, fresh_sandbox):
    path = _save(four_tib(), tmp_path, "big.onnx")
    with pytest.raises(ResourceLimit, match=r"4\.0 TiB requested.*CONVLENS_ONNX_MAX_MB") as e:
        accel.load(path)
    assert "\n" not in str(e.value)


def test_sandbox_process_has_the_address_space_cap(tmp_path, fresh_sandbox, monkeypatch):
    """The host runs under RLIMIT_AS = CONVLENS_ONNX_MAX_MB (read from /proc), and a changed cap restarts it."""
    monkeypatch.setenv("CONVLENS_ONNX_MAX_MB", "1536")
    net = accel.load(_save(classifier(), tmp_path, "ok.onnx"))
    (pid,) = sandbox.host_pids()
    assert _address_space_cap(pid) == 1536 * 2**20
    monkeypatch.setenv("CONVLENS_ONNX_MAX_MB", "2048")
    assert net.predict(Image.new("RGB", (8, 8), (0, 0, 255)), top=1)[0][0] == "2"
    (pid2,) = sandbox.host_pids()
    assert pid2 != pid and not _alive(pid) and _address_space_cap(pid2) == 2048 * 2**20


def test_idle_hosts_are_stopped_and_restart_on_demand(tmp_path, fresh_sandbox):
    """An idle host is stopped (its memory goes back to the system); the next request reopens the graph in a
    fresh host transparently."""
    net = accel.load(_save(classifier(), tmp_path, "ok.onnx"))
    (pid,) = sandbox.host_pids()
    assert sandbox.reap_idle(idle_s=3600) == 0 and sandbox.host_pids() == [pid]
    assert sandbox.reap_idle(idle_s=0) == 1 and sandbox.host_pids() == [] and not _alive(pid)
    assert net.predict(Image.new("RGB", (8, 8), (0, 255, 0)), top=1)[0][0] == "1"
    assert len(sandbox.host_pids()) == 1 and sandbox.host_pids()[0] != pid


def _address_space_cap(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    return int(line.split()[3])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_batch_dependent_allocation_halves_in_the_sandbox(tmp_path, fresh_sandbox, monkeypatch):
    """~200 MiB per image under a 1280 MiB cap: the probe (1 image) loads, a batch of 8 fails inside the
    sandbox, the runner halves until it fits, and the outputs are exact."""
    monkeypatch.setenv("CONVLENS_ONNX_MAX_MB", "1280")
    net = accel.load(_save(per_image_mib(200), tmp_path, "wide.onnx"))
    r = accel.runner(net, ["logits"], batch_size=8)
    x = _x(8)
    with pytest.warns(UserWarning, match="halving batch size"):
        out = r.run(x)["logits"]
    assert r.meta["batch_halvings"] >= 1 and r.batch_size <= 4
    np.testing.assert_allclose(out, x.reshape(8, 192), rtol=1e-6, atol=1e-6)


def test_endless_loop_is_stopped_and_the_server_stays_responsive(tmp_path, fresh_sandbox, monkeypatch):
    """A Loop of 2**62 iterations: stopped at CONVLENS_ONNX_TIMEOUT_S with a ResourceLimit naming it, its
    process killed; meanwhile another user's graph (other host) and torch keep answering at normal speed."""
    monkeypatch.setenv("CONVLENS_ONNX_TIMEOUT_S", "3")
    good = accel.load(_save(classifier(), tmp_path, "good.onnx"))
    img = Image.new("RGB", (8, 8), (0, 0, 255))
    assert good.predict(img, top=1)[0][0] == "2"
    loop_path = _save(endless_loop(), tmp_path, "loop.onnx")
    result: dict = {}

    def load_loop() -> None:
        t0 = time.perf_counter()
        try:
            accel.load(loop_path)
        except BaseException as e:  # noqa: BLE001 - recorded for the asserts
            result["error"] = e
        result["took"] = time.perf_counter() - t0

    th = threading.Thread(target=load_loop)
    th.start()
    time.sleep(1.0)  # the loop is running in its host now
    pids = sandbox.host_pids()
    answers = []
    fc = get_net("fashion_cnn")
    while th.is_alive() and len(answers) < 5:
        t0 = time.perf_counter()
        assert good.predict(img, top=1)[0][0] == "2"
        fc.predict(Image.new("RGB", (28, 28)), top=1)
        answers.append(time.perf_counter() - t0)
    th.join(timeout=60)
    assert answers and max(answers) < 1.0, answers  # answered while the loop ran, not after it
    err = result["error"]
    assert isinstance(err, ResourceLimit), repr(err)
    assert "loop.onnx" in str(err) and "CONVLENS_ONNX_TIMEOUT_S" in str(err) and "3 s" in str(err)
    assert 3.0 <= result["took"] < 15.0
    killed = [p for p in pids if p not in sandbox.host_pids()]
    assert len(killed) == 1 and not _alive(killed[0])
    assert good.predict(img, top=1)[0][0] == "2"  # still served
    with pytest.raises(ResourceLimit, match="CONVLENS_ONNX_TIMEOUT_S"):
        accel.load(loop_path)  # the next attempt starts a fresh host and is stopped again


def test_short_loop_runs_and_fixed_batch_graphs_are_padded(tmp_path, fresh_sandbox):
    """A Loop of 3 iterations is fine; a graph with a fixed batch of 2 serves batches of any size."""
    net = accel.load(_save(endless_loop(3), tmp_path, "three.onnx"))
    x = _x(5)
    got = accel.runner(net, ["logits"]).run(x)["logits"]
    np.testing.assert_allclose(got, x.mean((2, 3)) + 3.0, rtol=1e-5, atol=1e-5)
    m = classifier()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    fixed = accel.load(_save(m, tmp_path, "fixed2.onnx"))
    r = accel.runner(fixed, ["logits"])
    assert r.fixed_batch == 2 and r.batch_size == 2
    np.testing.assert_allclose(r.run(x)["logits"], x.mean((2, 3)) * [1, 2, 3], rtol=1e-5, atol=1e-5)


def test_static_refusals_external_data_and_damaged_metadata(tmp_path, fresh_sandbox):
    """Weights kept outside the file (which would be read from a server path) and a damaged convlens record
    (asking for a huge resize) are refused before anything runs; messages name the user's file."""
    m = classifier()
    w = m.graph.initializer[0]
    w.ClearField("float_data")
    w.data_location = T.EXTERNAL
    e = w.external_data.add()
    e.key, e.value = "location", "weights.bin"
    (tmp_path / "weights.bin").write_bytes(np.ones(3, np.float32).tobytes())
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(BadInput, match="ext.onnx: the model keeps weights in external data files"):
        accel.load(p)
    for bad, why in (
        (
            '{"size": 8, "resize": 80000, "mean": [0,0,0], "std": [1,1,1], "scale": 1, "channels": "RGB"}',
            "resize",
        ),
        (
            '{"size": 8, "resize": 9, "mean": [0,0,0], "std": [0,1,1], "scale": 1, "channels": "RGB"}',
            "mean/std",
        ),
        (
            '{"size": 16, "resize": 18, "mean": [0,0,0], "std": [1,1,1], "scale": 1, "channels": "RGB"}',
            "size",
        ),
        ("not json", "not JSON"),
    ):
        m = classifier()
        prop = m.metadata_props.add()
        prop.key, prop.value = "convlens.preproc", bad
        with pytest.raises(BadInput, match=f"meta.onnx: its convlens preprocessing record is damaged.*{why}"):
            accel.load(_save(m, tmp_path, "meta.onnx"))
    assert sandbox.host_pids() == []  # nothing reached ONNX Runtime


def test_convlens_export_of_lite0_runs_sandboxed_and_overhead(
    tmp_path, fresh_sandbox, chelsea, record_property
):
    """A user ONNX file of efficientnet_lite0 (a convlens export): predicts like the torch model, runs in the
    sandbox, and the sandbox's per-batch overhead against an in-process session on the same file is measured."""
    from accel.runtime.export import export_backbone

    lite0 = get_net("efficientnet_lite0")
    src = export_backbone(lite0, ["logits"])  # the cached export (built once per cache)
    path = tmp_path / "lite0.onnx"
    shutil.copy(src, path)
    net = accel.load(path)
    r = accel.runner(net, ["logits"])
    assert r.sandboxed and r.meta["sandbox"] == {
        "timeout_s": "CONVLENS_ONNX_TIMEOUT_S",
        "max_mb": "CONVLENS_ONNX_MAX_MB",
    }
    assert net.predict(chelsea, top=1)[0][0] == lite0.predict(chelsea, top=1)[0][0]
    sess = make_session(path, ("CPUExecutionProvider",))[0]
    rows = []
    for n in (1, 8):
        x = lite0.preprocess_batch([chelsea] * n).numpy()
        a, b = [], []
        for _ in range(5):  # alternate, so load from other processes hits both alike
            t0 = time.perf_counter()
            want = run_session(sess, {"input": x}, "in-process")[0]
            a.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = r.run(x)["logits"]
            b.append(time.perf_counter() - t0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        ina, sbx = statistics.median(a), statistics.median(b)
        rows.append(
            f"batch {n}: in-process {ina * 1e3:.1f} ms, sandbox {sbx * 1e3:.1f} ms (+{(sbx - ina) * 1e3:.1f} ms)"
        )
        assert sbx - ina < max(0.25, 0.5 * ina), rows[-1]
    record_property("summary_line", "sandbox overhead on a lite0 ONNX file: " + "; ".join(rows))


# -- the one export + parity + session path for modules that are not backbones (fast-style networks) ------------


class _TracesDifferently(torch.nn.Module):
    """Doubles its input when traced for export, returns it as is in eager mode: every export disagrees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if torch.jit.is_tracing() else x


def test_verified_graph_rebuilds_a_disagreeing_cache_entry_and_refuses_a_fresh_one(tmp_path):
    from accel.runtime import export as ex

    spec = ex.GraphSpec(
        example=(torch.rand(1, 3, 8, 8),),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
    )
    probes = [np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32) for h, w in ((8, 8), (12, 16))]
    conv = torch.nn.Conv2d(3, 2, 3).eval()
    target = tmp_path / "conv.onnx"
    got = ex.verified_graph(conv, target, spec, probes)
    assert got.path == target and got.parity <= ex.PARITY_RTOL and ex.recorded_problem(target) is None
    assert ex.verified_graph(conv, target, spec, probes) is got  # opened and checked once per process
    # another network's graph recorded under this name (a stale or planted cache entry): rebuilt, then used
    ex.export_module(torch.nn.Conv2d(3, 2, 3).eval(), spec, target, rebuild=True)
    with pytest.warns(UserWarning, match="failed its parity check"):
        again = ex.verified_graph(conv, target, spec, probes, providers=("CPUExecutionProvider",))
    assert again.parity <= ex.PARITY_RTOL
    # a module whose fresh export disagrees too is refused, and its graph is not left in the cache
    sly = tmp_path / "sly.onnx"
    with (
        pytest.warns(UserWarning, match="rebuilding it"),
        pytest.raises(ex.ParityError, match="also after rebuilding"),
    ):
        ex.verified_graph(_TracesDifferently(), sly, spec, probes)
    assert not sly.exists()
