"""Byte-level fuzzing of ONNX files (issue 16 item 7): arbitrary short byte strings and structured mutations of
real ONNX protobufs (an exported fashion_cnn graph and hand-built graphs: a classifier, a convlens-stamped one,
a short Loop, NaN scores, a failing Reshape, a 4 TiB request, a feature map).

Property: a result or a BadInput, in bounded time and memory. Every input goes through the static checks
(parse, structure, input, weights, convlens metadata); every `FULL_EVERY`-th input that passes them also takes
the whole user path, `accel.load(path)` (probe forward pass in the sandbox) then `net.predict` on a tiny image,
because a sandboxed load costs a session start and two round trips to the sandbox process (tens of ms), which
would put 4,000 inputs far past the slice's time.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from PIL import Image

import accel
from accel import zoo
from accel.runtime import sandbox
from tests.conftest import get_net
from tests.fuzzkit import byte_inputs, fuzz, scaled
from tests.test_onnx_boundary import bad_reshape, classifier, endless_loop, four_tib, nan_scores

FULL_EVERY = 4  # share of statically valid inputs that also load (sandbox probe) and predict
N = 4000


def _stamped() -> onnx.ModelProto:
    """The classifier with a convlens preprocessing record and labels, as convlens' own exports carry."""
    m = classifier()
    for k, v in (
        (
            "convlens.preproc",
            '{"size": 8, "resize": 9, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], '
            '"scale": 1.0, "channels": "RGB"}',
        ),
        ("convlens.labels", '["cat", "dog", "bird"]'),
    ):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    return m


def _feature_map() -> onnx.ModelProto:
    """A headless graph: one 3x3 convolution, (N,3,8,8) -> (N,2,6,6)."""
    w = h.make_tensor("w", T.FLOAT, [2, 3, 3, 3], [0.1 * (i % 7 - 3) for i in range(54)])
    x = h.make_tensor_value_info("input", T.FLOAT, ["N", 3, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 2, 6, 6])
    g = h.make_graph([h.make_node("Conv", ["input", "w"], ["y"])], "g", [x], [y], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    from accel.runtime.export import export_backbone

    folder = tmp_path_factory.mktemp("onnx-seeds")
    fashion = export_backbone(
        get_net("fashion_cnn"), ["logits"], out=folder / "fashion_cnn.onnx"
    ).read_bytes()
    built = [
        classifier(),
        _stamped(),
        endless_loop(3),
        nan_scores(),
        bad_reshape(),
        four_tib(),
        _feature_map(),
    ]
    return [fashion, *(m.SerializeToString() for m in built)]


def test_fuzz_onnx_files(seeds, tmp_path, monkeypatch, record_property):
    monkeypatch.setenv("CONVLENS_ONNX_TIMEOUT_S", "2")  # a mutated Loop count must not hold the slice up
    monkeypatch.setenv("CONVLENS_ONNX_MAX_MB", "1024")  # a mutated shape must not take this machine's memory
    sandbox.shutdown()
    path = tmp_path / "fuzzed.onnx"
    img = Image.new("RGB", (8, 8), (40, 120, 200))
    counts = {"static_ok": 0, "full": 0, "predicted": 0}

    def target(data: bytes) -> None:
        path.write_bytes(data)
        if not data:
            accel.load(path)  # "is empty"
        zoo.onnx_static(Path(path))
        counts["static_ok"] += 1
        if counts["static_ok"] % FULL_EVERY:
            return
        counts["full"] += 1
        net = accel.load(path)
        net.predict(img, top=3)
        counts["predicted"] += 1

    try:
        rep = fuzz("onnx", target, byte_inputs(seeds), N)
    finally:
        sandbox.shutdown()
    record_property(
        "summary_line",
        f"onnx fuzz: {rep.tried} inputs, {counts['static_ok']} passed the static checks, {counts['full']} took "
        f"the full path (load + sandboxed probe + predict), {counts['predicted']} predicted",
    )
    rep.assert_clean()
    assert rep.tried == scaled(N)
    assert counts["full"] >= 50 and counts["predicted"] >= 10  # the sandboxed path was really exercised
