"""The checkpoint boundary (issue 16 item 2, issue 17 item 5): dtypes and devices, NaN outputs, size caps before
anything is allocated, and one BadInput for every failure, through the API and the CLI. Real torch.save /
safetensors files and the real fashion_cnn architecture throughout."""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

import accel
from accel import zoo
from accel.errors import BadInput, ResourceLimit, UntrustedFile

ROOT = Path(__file__).resolve().parent.parent
ARCH = "fashion_cnn"
W = "features.0.weight"  # the first conv of fashion_cnn: (32, 1, 3, 3) float32
FLOATS = "float weights (float16, bfloat16, float32 or float64) are needed"
GREY = Image.new("RGB", (28, 28), (120, 120, 120))


def _sd() -> dict[str, torch.Tensor]:
    """A fresh copy of the packaged fashion_cnn weights (a real, loadable state dict)."""
    return {k: v.clone() for k, v in accel.load(ARCH).module.state_dict().items()}


def _pt(path: Path, obj: object, **kw: object) -> Path:
    torch.save(obj, path, **kw)
    return path


def _st(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    path.write_bytes(st_save({k: v.contiguous() for k, v in sd.items()}))
    return path


def _with(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    sd = _sd()
    sd[key] = value
    return sd


def _rezip(data: bytes, edit_pickle) -> bytes:
    """A torch.save zip with its data.pkl rewritten by `edit_pickle` (every other record copied as is)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            body = src.read(info)
            z.writestr(info.filename, edit_pickle(body) if info.filename.endswith("data.pkl") else body)
    return out.getvalue()


# -- torch.save files written by hand: declared sizes, storage locations and bombs -------------------------------


class _Storage:
    def __init__(self, key: str, numel: int, location: str = "cpu") -> None:
        self.key, self.numel, self.location = key, numel, location


class _Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2 over a persistent storage, with any shape and stride."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.shape, self.stride = storage, shape, stride

    def __reduce__(self):
        args = (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, obj.location, obj.numel)
        return None


def _data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _zeros_deflate(n_mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of `n_mib` MiB of zeros, built from one independently compressed 1 MiB block repeated
    (a full flush makes each copy self-contained), and the CRC-32 of the data it inflates to."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    crc, mib = 0, bytes(1 << 20)
    for _ in range(n_mib):
        crc = zlib.crc32(mib, crc)
    return block * n_mib + b"\x03\x00", crc  # 03 00: an empty final block


def _write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written record by record: (name, body, method, crc, declared uncompressed size) — the declared size
    may lie, which zipfile's writer would not allow."""
    out, central = bytearray(), bytearray()
    for name, body, method, crc, usize in entries:
        n = name.encode()
        head = struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(body), usize, len(n), 0
        )
        central += (
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0x21,
                crc,
                len(body),
                usize,
                len(n),
                0,
                0,
                0,
                0,
                0,
                len(out),
            )
            + n
        )
        out += head + n + body
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def _stored(name: str, body: bytes) -> tuple[str, bytes, int, int, int]:
    return (name, body, 0, zlib.crc32(body), len(body))


def _bomb(path: Path, *, gib: int = 2, lie: bool = False) -> Path:
    """A torch.save-format .pt of ~2 MB whose one tensor is `gib` GiB of zeros, deflated. With `lie`, the zip
    directory declares 28 bytes for that record (and the pickle 7 floats) while the stream still inflates to GiBs."""
    numel = 7 if lie else (gib << 30) // 4
    stream, crc = _zeros_deflate(gib << 10)
    usize = 28 if lie else gib << 30
    pkl = _data_pkl({W: _Tensor(_Storage("0", numel), (numel,), (1,))})
    return _write_zip(
        path,
        [
            _stored("archive/data.pkl", pkl),
            _stored("archive/byteorder", b"little"),
            _stored("archive/version", b"3\n"),
            ("archive/data/0", stream, 8, crc, usize),
        ],
    )


# -- dtypes and devices ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_float_checkpoints_load_converted_to_the_parameter_dtype(tmp_path, dtype, fmt) -> None:
    ref = _sd()
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ref.items()}
    path = (_pt if fmt == "pt" else _st)(tmp_path / f"w.{fmt}", sd)
    net = accel.load(path, arch=ARCH)
    got = net.module.state_dict()
    for k, v in ref.items():
        assert got[k].dtype == v.dtype, k  # float32 parameters stay float32; the int64 counters stay int64
        assert torch.equal(got[k], sd[k].to(v.dtype)), k
    tol = {torch.float16: 1e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-6)
    p_ref = dict(accel.load(ARCH).predict(GREY, top=10))
    p_got = dict(net.predict(GREY, top=10))
    assert max(abs(p_ref[c] - p_got[c]) for c in p_ref) < tol


@pytest.mark.parametrize("location", ["cuda:0", "mps", "xla:1"])
def test_tensors_saved_on_other_devices_load_on_the_cpu(tmp_path, location) -> None:
    raw = io.BytesIO()
    torch.save(_sd(), raw)
    moved = _rezip(raw.getvalue(), lambda pkl: pkl.replace(b"X\x03\x00\x00\x00cpu", _unicode(location)))
    assert moved != raw.getvalue()
    path = tmp_path / "gpu.pt"
    path.write_bytes(moved)
    net = accel.load(path, arch=ARCH)
    assert {p.device.type for p in net.module.parameters()} == {"cpu"}
    assert net.predict(GREY, top=1) == accel.load(ARCH).predict(GREY, top=1)


def _unicode(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


REFUSED_FOR_FLOAT = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]
EXOTIC = [
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.uint16,
    torch.uint32,
    torch.uint64,
]


@pytest.mark.parametrize("dtype", REFUSED_FOR_FLOAT, ids=str)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_integer_and_bool_weights_are_refused_by_name(tmp_path, dtype, fmt) -> None:
    sd = _with(W, _sd()[W].mul(10).to(dtype))
    path = (_pt if fmt == "pt" else _st)(tmp_path / f"w.{fmt}", sd)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(BadInput) as e:
        accel.load(path, arch=ARCH)
    assert str(e.value) == f"w.{fmt}: tensor '{W}' is {name}; {FLOATS}"


@pytest.mark.parametrize("dtype", EXOTIC, ids=str)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_exotic_dtypes_are_refused_by_name(tmp_path, dtype, fmt) -> None:
    if fmt == "safetensors" and dtype == torch.float8_e4m3fnuz:
        pytest.skip("safetensors has no code for float8_e4m3fnuz tensors in this version")
    sd = _with(W, _sd()[W].to(dtype))
    path = (_pt if fmt == "pt" else _st)(tmp_path / f"w.{fmt}", sd)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(
        BadInput, match=re.escape(f"w.{fmt}: tensor '{W}' is {name}, which convlens cannot load; {FLOATS}")
    ):
        accel.load(path, arch=ARCH)


def test_complex_quantized_sparse_and_meta_tensors_are_refused(tmp_path) -> None:
    w = _sd()[W]
    cases = {
        "complex": (
            w.to(torch.complex64),
            f"tensor '{W}' is complex (complex64); network weights must be real",
        ),
        "quantized": (
            torch.quantize_per_tensor(w, 0.01, 0, torch.qint8),
            f"tensor '{W}' is quantized (qint8); {FLOATS} (call .dequantize() before saving)",
        ),
        "sparse": (w.to_sparse(), f"tensor '{W}' is sparse_coo; only dense tensors are supported"),
        "meta": (
            torch.empty_like(w, device="meta"),
            f"tensor '{W}' is on the meta device, so it holds no values",
        ),
    }
    for name, (value, words) in cases.items():
        path = _pt(tmp_path / f"{name}.pt", _with(W, value))
        with pytest.raises(BadInput) as e:
            accel.load(path, arch=ARCH)
        assert str(e.value).startswith(f"{name}.pt: {words}"), str(e.value)
    # complex through safetensors too (C64 is a safetensors dtype)
    with pytest.raises(BadInput, match=f"tensor '{W}' is complex64, which convlens cannot load"):
        accel.load(_st(tmp_path / "c.safetensors", _with(W, w.to(torch.complex64))), arch=ARCH)


def test_integer_buffers_stay_integer(tmp_path) -> None:
    k = "features.1.num_batches_tracked"
    net = accel.load(_pt(tmp_path / "i32.pt", _with(k, torch.tensor(5, dtype=torch.int32))), arch=ARCH)
    counter = net.module.state_dict()[k]
    assert counter.dtype == torch.int64 and int(counter) == 5
    with pytest.raises(BadInput) as e:
        accel.load(_pt(tmp_path / "f.pt", _with(k, torch.tensor(5.0))), arch=ARCH)
    assert str(e.value) == (
        f"f.pt: tensor '{k}' is float32; an integer buffer (int64, like BatchNorm's step counter) is needed"
    )


# -- NaN and overflow --------------------------------------------------------------------------------------------


def test_finite_weights_that_overflow_are_refused_by_the_probe(tmp_path) -> None:
    sd = {k: (v * 1e30 if v.is_floating_point() and "running_var" not in k else v) for k, v in _sd().items()}
    assert all(torch.isfinite(v).all() for v in sd.values())
    with pytest.raises(
        BadInput, match=r"^huge\.pt: the network's outputs are NaN or infinite on a probe image"
    ):
        accel.load(_pt(tmp_path / "huge.pt", sd), arch=ARCH)


def test_float64_values_too_large_for_float32_are_refused(tmp_path) -> None:
    sd = {k: (v.double() if v.is_floating_point() else v) for k, v in _sd().items()}
    sd[W][0, 0, 0, 0] = 1e300
    with pytest.raises(BadInput) as e:
        accel.load(_pt(tmp_path / "big.pt", sd), arch=ARCH)
    assert str(e.value) == (
        "big.pt: weights contain NaN or inf in 1 tensor(s) (1 only after conversion to float32: values too large "
        f"for it), e.g. [\"'{W}'\"]"
    )


def test_predict_refuses_non_finite_scores_for_torch_and_onnx_backbones(tmp_path) -> None:
    from accel.runtime.export import export_backbone
    from accel.runtime.runner import onnx_logits

    net = accel.load(ARCH)
    with torch.no_grad():
        net.module.fc.bias[3] = float("nan")
    net._hash = None
    msg = r"gives NaN or infinite class scores for this image, so there are no probabilities to show"
    with pytest.raises(BadInput, match=msg):
        net.predict(GREY)
    onnx_path = export_backbone(net, ["logits"], out=tmp_path / "nan.onnx")
    onx = zoo.Backbone("nan_onnx", None, net.pre, net.labels, onnx_path=onnx_path, engine=onnx_logits)
    with pytest.raises(BadInput, match=r"NaN or inf"):  # the ONNX runner may refuse first, in its own words
        onx.predict(GREY)


@pytest.mark.parametrize("top", [0, -3, 2.5, True])
def test_predict_refuses_top_below_one(top) -> None:
    with pytest.raises(BadInput, match=r"asks for no classes; pass a whole number of at least 1"):
        accel.load(ARCH).predict(GREY, top=top)
    assert len(accel.load(ARCH).predict(GREY, top=50)) == 10  # more than the head has: all of them


# -- size caps, before anything is read --------------------------------------------------------------------------


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


_RSS_PROBE = """
import sys, accel
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
accel.load("fashion_cnn")
idle = hwm()
try:
    accel.load(sys.argv[1], arch="fashion_cnn")
    print("LOADED")
except accel.BadInput as e:
    print(type(e).__name__, e)
print(idle, hwm())
"""


def _peak_rss(path: Path, **env: str) -> tuple[str, float, float]:
    """Load `path` in a fresh process: (the outcome line, idle VmHWM in MiB, peak VmHWM in MiB)."""
    r = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    outcome, nums = r.stdout.strip().splitlines()[-2:]
    idle, peak = (int(n) / 1024 for n in nums.split())
    return outcome, idle, peak


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return _bomb(tmp_path_factory.mktemp("bomb") / "bomb.pt")


def test_the_bomb_is_real(bomb) -> None:
    """The fixture is what the issue describes: ~2 MB on disk, a valid zip whose record inflates to 2 GiB."""
    assert bomb.stat().st_size < 3 << 20
    with zipfile.ZipFile(bomb) as z:
        info = z.getinfo("archive/data/0")
        assert info.file_size == 2 << 30 and info.compress_type == zipfile.ZIP_DEFLATED
        with z.open(info) as f:
            first = f.read(1 << 20)
    assert first == bytes(1 << 20)


def test_compressed_bomb_is_refused_before_inflating(bomb, record_property) -> None:
    outcome, idle, peak = _peak_rss(bomb)
    assert outcome.startswith(
        "ResourceLimit bomb.pt: its records decompress to 2,048.0 MiB, over the cap of 2,048"
    )
    assert "CONVLENS_MAX_CHECKPOINT_MB=2049" in outcome
    assert peak - idle < 1024, f"peak RSS grew by {peak - idle:.0f} MiB refusing the bomb"
    record_property(
        "summary_line", f"checkpoint bomb (2 MB .pt, 2 GiB declared): refused, RSS +{peak - idle:.0f} MiB"
    )
    # with the size cap raised, the compression ratio still refuses it, naming its own setting
    outcome, idle, peak = _peak_rss(bomb, CONVLENS_MAX_CHECKPOINT_MB="8192")
    assert outcome.startswith(
        "ResourceLimit bomb.pt: its 2.0 MiB decompress to 2,048 MiB, a compression ratio of"
    )
    assert "CONVLENS_MAX_CHECKPOINT_RATIO=" in outcome
    assert peak - idle < 1024


def test_bomb_whose_directory_lies_is_read_only_as_far_as_declared(tmp_path) -> None:
    """The directory declares 28 bytes while the stream inflates to 2 GiB: the reader stops at 28 bytes (the 7
    floats the pickle asks for), so memory stays flat, and the one-tensor state dict is refused as a misfit."""
    outcome, idle, peak = _peak_rss(_bomb(tmp_path / "liar.pt", lie=True))
    assert outcome.startswith(
        "BadInput liar.pt does not fit architecture 'fashion_cnn': 31 missing key(s)"
    ), outcome
    assert peak - idle < 1024, f"peak RSS grew by {peak - idle:.0f} MiB"


def test_tensor_declared_by_stride_is_bounded(tmp_path) -> None:
    """One stored float viewed as 10^12 elements (stride 0): loads as a view, refused before anything touches it."""
    path = _write_zip(
        tmp_path / "stride0.pt",
        [
            _stored("archive/data.pkl", _data_pkl({W: _Tensor(_Storage("0", 1), (10**6, 10**6), (0, 0))})),
            _stored("archive/byteorder", b"little"),
            _stored("archive/version", b"3\n"),
            _stored("archive/data/0", bytes(4)),
        ],
    )
    before = _hwm_kib()
    with pytest.raises(ResourceLimit, match=r"^stride0\.pt: its tensors take 3,814,697.3 MiB, over the cap"):
        accel.load(path, arch=ARCH)
    assert _hwm_kib() - before < 200 << 10


def test_legacy_pickle_declaring_a_huge_storage_is_refused(tmp_path) -> None:
    class _Legacy(_TorchPickler):
        def persistent_id(self, obj: object):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, None)
            return None

    def dump(obj: object, cls: type[pickle.Pickler] = pickle.Pickler) -> bytes:
        buf = io.BytesIO()
        cls(buf, protocol=2).dump(obj)
        return buf.getvalue()

    numel = 1 << 40  # 4 TiB of floats
    sysinfo = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    data = dump(0x1950A86A20F9469CFC6C) + dump(1001) + dump(sysinfo)
    data += dump({W: _Tensor(_Storage("k", numel), (numel,), (1,))}, _Legacy) + dump(["k"])
    data += numel.to_bytes(8, "little") + bytes(16)
    path = tmp_path / "legacy.pt"
    path.write_bytes(data)
    before = _hwm_kib()
    with pytest.raises(
        BadInput, match=r"^legacy\.pt: not a readable PyTorch checkpoint, truncated or corrupt"
    ):
        accel.load(path, arch=ARCH)
    assert _hwm_kib() - before < 200 << 10


def test_safetensors_header_is_bounded_before_reading(tmp_path) -> None:
    import json

    def st_file(header: dict, payload: bytes = b"") -> bytes:
        h = json.dumps(header).encode()
        return len(h).to_bytes(8, "little") + h + payload

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(
        st_file({W: {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4]}}, bytes(4))
    )
    with pytest.raises(ResourceLimit) as e:
        accel.load(huge, arch=ARCH)
    assert str(e.value).startswith(
        "huge.safetensors: its tensors declare 4,194,304.0 MiB, over the cap of 2,048"
    )
    assert "CONVLENS_MAX_CHECKPOINT_MB" in str(e.value)
    f8 = tmp_path / "f8.safetensors"
    f8.write_bytes(st_file({W: {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)))
    with pytest.raises(BadInput, match=f"tensor '{W}' is float8_e4m3fn, which convlens cannot load"):
        accel.load(f8, arch=ARCH)
    unknown = tmp_path / "u.safetensors"
    unknown.write_bytes(st_file({W: {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)))
    with pytest.raises(BadInput, match="has the dtype code 'Q4_K', which safetensors does not define"):
        accel.load(unknown, arch=ARCH)
    long_header = tmp_path / "long.safetensors"
    long_header.write_bytes((17 << 20).to_bytes(8, "little") + b"{" + b" " * (17 << 20))
    with pytest.raises(BadInput, match=r"its header takes 17 MiB, more than 16 MiB"):
        accel.load(long_header, arch=ARCH)
    short = tmp_path / "short.safetensors"
    short.write_bytes((1 << 29).to_bytes(8, "little") + b"{}")
    with pytest.raises(BadInput, match="its header length does not fit in the file"):
        accel.load(short, arch=ARCH)


def test_caps_are_settings_named_in_the_message(tmp_path, monkeypatch) -> None:
    pt = _pt(tmp_path / "w.pt", _sd())
    st = _st(tmp_path / "w.safetensors", _sd())
    monkeypatch.setenv("CONVLENS_MAX_CHECKPOINT_TENSORS", "10")
    with pytest.raises(
        ResourceLimit,
        match=r"^w\.pt: its zip archive holds \d+ records, over the cap of 10 .*"
        r"CONVLENS_MAX_CHECKPOINT_TENSORS=",
    ):
        accel.load(pt, arch=ARCH)
    with pytest.raises(ResourceLimit, match=r"^w\.safetensors: it declares 38 tensors, over the cap of 10"):
        accel.load(st, arch=ARCH)
    monkeypatch.delenv("CONVLENS_MAX_CHECKPOINT_TENSORS")
    monkeypatch.setenv("CONVLENS_MAX_CHECKPOINT_MB", "0.5")
    for path in (pt, st):
        with pytest.raises(
            ResourceLimit, match=r"1\.1 MiB, over the cap of 0\.5 .*CONVLENS_MAX_CHECKPOINT_MB=2"
        ):
            accel.load(path, arch=ARCH)
    monkeypatch.setenv("CONVLENS_MAX_CHECKPOINT_MB", "2")
    assert accel.load(pt, arch=ARCH).pretrained and accel.load(st, arch=ARCH).pretrained
    from accel import limits

    rows = {r["env"]: r for r in limits.table()}
    assert rows["CONVLENS_MAX_CHECKPOINT_MB"]["default"] == 2048
    assert rows["CONVLENS_MAX_CHECKPOINT_RATIO"]["default"] == 100


# -- every failure a BadInput with words, never the file's bytes ------------------------------------------------


def test_unknown_formats_are_named_without_echoing_bytes(tmp_path) -> None:
    cases = {
        "png.pt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "it looks like a PNG image"),
        "h5.pt": (
            b"\x89HDF\r\n\x1a\n" + bytes(100),
            "it looks like an HDF5 file (a Keras/TensorFlow .h5 model",
        ),
        "page.pth": (b"<!DOCTYPE html><html><body>403</body></html>", "it looks like HTML text"),
        "notes.pt": (b"weights: see the wiki\n" * 5, "it looks like plain text"),
        "noise.pt": (
            bytes(np.random.default_rng(1).integers(0, 256, 999, dtype=np.uint8)),
            "it is binary data",
        ),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInput) as e:
            accel.load(tmp_path / name, arch=ARCH)
        msg = str(e.value)
        assert msg.startswith(f"{name}: not a PyTorch checkpoint or safetensors file ({words}"), msg
        assert "first bytes" not in msg and " 89 " not in msg and "\\x" not in msg


def test_pickles_that_need_code_are_untrusted_and_corrupt_ones_are_not(tmp_path) -> None:
    class Shell:
        def __reduce__(self):
            return (os.system, ("true",))

    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(Shell(), protocol=4))
    with pytest.raises(UntrustedFile, match=r"^raw\.pth: refusing to load .*it calls (posix|os)\.system"):
        accel.load(raw, arch=ARCH)
    legacy = io.BytesIO()
    torch.save(_sd(), legacy, _use_new_zipfile_serialization=False)
    broken = bytearray(legacy.getvalue())
    broken[40] = 0xEE  # an opcode no pickle defines, inside the sys-info record
    (tmp_path / "broken.pt").write_bytes(bytes(broken))
    with pytest.raises(BadInput) as e:
        accel.load(tmp_path / "broken.pt", arch=ARCH)
    assert not isinstance(e.value, UntrustedFile), str(e.value)
    assert str(e.value).startswith("broken.pt: not a readable PyTorch checkpoint")


def test_display_name_and_odd_paths(tmp_path) -> None:
    stored = _pt(tmp_path / "upload-0123abcd.pt", _with(W, _sd()[W].to(torch.int8)))
    with pytest.raises(BadInput) as e:
        accel.load(stored, arch=ARCH, display_name="my weights.pt")
    assert str(e.value).startswith("my weights.pt: tensor ") and "upload-" not in str(e.value)
    with pytest.raises(BadInput, match="is a folder; pass a checkpoint file"):
        accel.load(tmp_path, arch=ARCH)
    with pytest.raises(BadInput, match="expected a model name, a file path or an nn.Module, got int"):
        accel.load(3)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="unknown model"):
        accel.load("x" * 5000)


def test_zip_without_torch_records_and_damaged_directory(tmp_path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weights.npy", b"\x93NUMPY")
    (tmp_path / "npz.pt").write_bytes(buf.getvalue())
    with pytest.raises(BadInput, match="a zip archive without the data.pkl record that torch.save writes"):
        accel.load(tmp_path / "npz.pt", arch=ARCH)
    good = io.BytesIO()
    torch.save(_sd(), good)
    data = bytearray(good.getvalue())
    end = data.rindex(b"PK\x05\x06")
    data[end + 16 : end + 20] = struct.pack("<L", len(data) * 3)  # the directory offset points past the end
    (tmp_path / "dir.pt").write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"^dir\.pt: not a readable PyTorch checkpoint, truncated or corrupt"):
        accel.load(tmp_path / "dir.pt", arch=ARCH)


# -- the CLI: exit 2 and one line on stderr ----------------------------------------------------------------------


def test_cli_bad_checkpoints_exit_2_with_one_line(tmp_path, bomb) -> None:
    from accel.images import sample_image

    img = tmp_path / "photo.png"
    sample_image("chelsea").save(img)
    big = {k: (v * 1e30 if v.is_floating_point() and "running_var" not in k else v) for k, v in _sd().items()}
    cases = {
        "int8.pt": (
            _pt(tmp_path / "int8.pt", _with(W, _sd()[W].to(torch.int8))),
            re.escape(f"is int8; {FLOATS}"),
        ),
        "meta.pt": (
            _pt(tmp_path / "meta.pt", _with(W, torch.empty(32, 1, 3, 3, device="meta"))),
            "meta device",
        ),
        "f8.safetensors": (
            _st(tmp_path / "f8.safetensors", _with(W, _sd()[W].to(torch.float8_e5m2))),
            "float8_e5m2",
        ),
        "huge.pt": (_pt(tmp_path / "huge.pt", big), "outputs are NaN or infinite on a probe image"),
        "bomb.pt": (bomb, "over the cap of 2,048 .* CONVLENS_MAX_CHECKPOINT_MB=2049"),
    }
    cmd = [sys.executable, "-m", "accel.cli", "predict", str(img), "--arch", ARCH, "--model"]
    procs = {
        name: subprocess.Popen(
            [*cmd, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (path, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2, (name, proc.returncode, err[-1500:])
        assert len(lines) == 1 and lines[0].startswith("convlens: error: "), (name, err)
        assert re.search(cases[name][1], lines[0]), (name, lines[0])
        assert "nan%" not in out


def test_whole_pickled_model_needs_trust(tmp_path) -> None:
    path = _pt(tmp_path / "model.pt", accel.load(ARCH).module)
    with pytest.raises(
        UntrustedFile, match=r"^model\.pt: refusing to load .*it calls accel\.archs\.fashion_cnn"
    ):
        accel.load(path, arch=ARCH)
    net = accel.load(path, arch=ARCH, trust=True)
    assert net.predict(GREY, top=3) == accel.load(ARCH).predict(GREY, top=3)


def test_uploaded_bytes_are_stored_once_under_their_hash(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from accel.store import save_upload_to

    data = (zoo.MODELS_DIR / "fashion_cnn.safetensors").read_bytes()
    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: save_upload_to(tmp_path, data, ".SAFETENSORS"), range(16)))
    (path,) = paths
    assert path.name.startswith("upload-") and path.suffix == ".safetensors" and path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    assert accel.load(path, arch=ARCH, display_name="mine.safetensors").name == f"{ARCH}@mine.safetensors"
    with pytest.raises(BadInput, match="unsupported upload type '.exe'"):
        save_upload_to(tmp_path, data, ".exe")
    with pytest.raises(BadInput, match=r"the uploaded file is empty \(0 bytes\)"):
        save_upload_to(tmp_path, b"", ".pt")
