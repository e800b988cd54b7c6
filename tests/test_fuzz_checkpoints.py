"""Byte-level fuzzing of the checkpoint boundary (issue 16 item 7): arbitrary short byte strings and structured
mutations of real checkpoints (the packaged fashion_cnn safetensors, zip and legacy torch.save files, safetensors
with edited headers), each written to a file and loaded with `accel.load(path, arch="fashion_cnn")`.

The property: a Backbone or a BadInput, in bounded time (fuzzkit) and memory (peak RSS checked here)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as st_save

import accel
from accel import zoo
from tests.fuzzkit import byte_inputs, fuzz

ARCH = "fashion_cnn"
SUFFIXES = (".pt", ".safetensors", ".pth", ".bin")


def _torch_bytes(obj: object, **kw: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _edit_header(data: bytes, edit) -> bytes:
    """A safetensors file with its JSON header rewritten by `edit` (the tensor bytes unchanged)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data[8 + n :]


def _seeds() -> list[bytes]:
    """Real checkpoints in every format the loader reads, small ones first (so mutations stay quick)."""
    torch.manual_seed(0)
    small = {
        "conv.weight": torch.randn(4, 1, 3, 3),
        "conv.bias": torch.zeros(4),
        "bn.running_var": torch.ones(4),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    full = {k: v.clone() for k, v in accel.load(ARCH).module.state_dict().items()}
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in full.items()}
    st_small = st_save({k: v.contiguous() for k, v in small.items()})

    def f8(h: dict) -> None:
        h["conv.weight"]["dtype"] = "F8_E4M3"

    def huge(h: dict) -> None:
        h["conv.bias"]["shape"] = [1 << 20, 1 << 20]

    def shifted(h: dict) -> None:
        h["conv.bias"]["data_offsets"] = [o + 4 for o in h["conv.bias"]["data_offsets"]]

    def meta(h: dict) -> None:
        h["__metadata__"] = {"format": "pt", "note": ["not", "a", "string"]}

    return [
        (zoo.MODELS_DIR / "fashion_cnn.safetensors").read_bytes(),  # the real packaged checkpoint
        _torch_bytes(small),  # zip-based torch.save
        _torch_bytes(small, _use_new_zipfile_serialization=False),  # legacy, non-zip pickle
        _torch_bytes(half),  # the real weights as a zip .pt in float16
        st_small,
        *(_edit_header(st_small, e) for e in (f8, huge, shifted, meta)),
    ]


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_fuzz_checkpoint_loading() -> None:
    seeds = _seeds()
    accel.load(ARCH)  # warm: imports, the packaged model, its architecture signature
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # probe passes on a 28x28 network: threads only add overhead
    before = _vm_hwm_mib()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            count = [0]

            def target(data: bytes) -> object:
                count[0] += 1
                path = Path(tmp) / f"fuzz{SUFFIXES[count[0] % len(SUFFIXES)]}"
                path.write_bytes(data)
                return accel.load(path, arch=ARCH)

            rep = fuzz("checkpoints", target, byte_inputs(seeds), 5000)
    finally:
        torch.set_num_threads(threads)
    grew = _vm_hwm_mib() - before
    rep.assert_clean()
    assert rep.tried == rep.ok + rep.refused
    assert rep.ok > 0 and rep.refused > 0, rep.line()  # both sides of the boundary were exercised
    assert grew < 1024, f"peak RSS grew by {grew:.0f} MiB while fuzzing"
