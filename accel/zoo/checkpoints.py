"""User checkpoints: state dicts read without running code from them (torch weights_only or safetensors), bounded
by the size caps before reading, refused by name when a dtype or value is unusable, fitted to an architecture by
name, shape and dtype, and probed once so that a loaded network never predicts from NaN."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone, file_sha256
from ..errors import BadInput, ResourceLimit, UntrustedFile
from .budget import (
    FLOAT_DTYPES,
    FLOATS_TEXT,
    INT_DTYPES,
    check_budget,
    dtype_name,
    key_text,
    over_cap,
    unusable_dtype,
)
from .packaged import ZOO
from .torchvision import build_torchvision


def _sniff_checkpoint(path: Path) -> str:
    """What a weight file holds, from its first bytes: "safetensors", "zip" (torch.save), "pickle" or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


# Formats people upload by mistake, recognised by their magic bytes (the message names the format, never the bytes).
_NOT_CHECKPOINTS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"\x1f\x8b", "a gzip file (decompress it first)"),
    (0, b"\x89HDF", "an HDF5 file (a Keras/TensorFlow .h5 model, not PyTorch)"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
    (0, b"GGUF", "a GGUF file (llama.cpp)"),
    (4, b"TFL3", "a TensorFlow Lite model"),
    (0, b"%PDF", "a PDF document"),
    (257, b"ustar", "a tar archive"),
)


def _what_it_looks_like(path: Path) -> str:
    """A phrase naming what a non-checkpoint file seems to be (text, an image, another framework's model...)."""
    with open(path, "rb") as f:
        head = f.read(512)
    for offset, magic, what in _NOT_CHECKPOINTS:
        if head[offset : offset + len(magic)] == magic:
            return f"it looks like {what}"
    text: str | None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", errors="replace") if len(head) == 512 else None
    if (
        text
        and "\x00" not in text
        and sum(ord(c) < 32 and c not in "\t\n\r" for c in text) <= len(text) // 50
    ):
        low = text.lstrip().lower()
        if low.startswith(("<!doctype html", "<html")) or "<body" in low or "<head" in low:
            return "it looks like HTML text (perhaps an error page saved instead of the file)"
        if low.startswith(("{", "[")):
            return "it looks like JSON text"
        return "it looks like plain text"
    return "it is binary data in no format convlens knows"


def _label(path: Path, label: str | None) -> str:
    """How messages name a checkpoint: the user's own file name when the caller knows it, else the path's name."""
    return label or path.name


def _why(e: BaseException) -> str:
    """A library exception as a short cause, without echoing bytes of the file."""
    if isinstance(e, UnicodeDecodeError):
        return "a string in it is not valid text"
    if isinstance(e, EOFError):
        return "it ends too early"
    if isinstance(e, KeyError):
        return "a record it refers to is missing"
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"b'[^']*'|b\"[^\"]*\"|\\x[0-9a-fA-F]{2}|0x[0-9a-fA-F]{3,}", "...", first)[:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _pickle_calls(path: Path) -> str | None:
    """The first Python object outside torch that a pickle file imports (module.name), found by reading its
    opcodes (each pickle in turn, as legacy torch.save files hold several) without running any."""
    with open(path, "rb") as f:
        stream = io.BytesIO(f.read(1 << 20))
    strings: list[str] = []
    try:
        for _ in range(8):
            if stream.tell() >= len(stream.getbuffer()):
                break
            for op, arg, _pos in pickletools.genops(stream):
                name = None
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    name = arg.replace(" ", ".")
                elif op.name == "STACK_GLOBAL":
                    name = ".".join(strings[-2:]) if len(strings) >= 2 else "a Python object"
                elif isinstance(arg, str):
                    strings.append(arg)
                if name and not name.startswith("torch.") and name != "collections.OrderedDict":
                    return name
    except Exception:  # noqa: BLE001 - a damaged or cut-off opcode stream: what was found so far stands
        return None
    return None


def _untrusted(label: str, calls: str | None = None) -> UntrustedFile:
    """The refusal of a pickle that needs code; `calls` (a name read from the file) is shown only if it looks
    like a dotted Python name."""
    ok = calls is not None and len(calls) <= 80 and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", calls)
    what = f"it calls {calls}" if ok else "it builds Python objects the safe loader does not allow"
    return UntrustedFile(
        f"{label}: refusing to load — unpickling it could run arbitrary code ({what}). Only plain "
        "state dicts load by default; if you trust its author, pass trust=True (CLI: --trust), or "
        "convert it to .safetensors"
    )


_NEEDS_CODE = ("reduce for unrecognized function", "Can only create new object", "Can only build")


def _torch_load(path: Path, kind: str, trust: bool, label: str) -> Any:
    """torch.load with weights_only (unless `trust`), every failure turned into a BadInput subclass."""
    try:
        # torch comments on odd files (pickle protocol, sparse tensors) with warnings; the error says enough
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        text = str(e)
        glob = re.search(r"GLOBAL (\S+)", text)
        if glob:
            raise _untrusted(label, glob.group(1)) from None
        if any(w in text for w in _NEEDS_CODE):
            raise _untrusted(label) from None
        calls = _pickle_calls(path) if kind == "pickle" else None
        if calls:
            raise _untrusted(label, calls) from None
        raise BadInput(f"{label}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
    except MemoryError:
        raise ResourceLimit(
            f"{label}: reading it ran out of memory; it declares more data than this machine can hold"
        ) from None
    except Exception as e:  # noqa: BLE001 - corrupt archives surface as many exception types
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint, truncated or corrupt ({_why(e)})"
        ) from None


def read_safetensors(path: Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (header already bounded); any failure is a BadInput."""
    from safetensors.torch import load_file

    label = _label(path, label)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error, OSError, ValueError, TypeError...
        raise BadInput(f"{label}: not a valid safetensors file ({_why(e)})") from None


def read_state_dict(path: Path, trust: bool, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without running code from it (unless `trust`).

    Sizes are bounded before reading; only dense CPU tensors of dtypes a network can use come back."""
    label = _label(path, label)
    try:
        kind = _sniff_checkpoint(path)
        if kind == "unknown" and path.suffix.lower() == ".safetensors":
            kind = "safetensors"
        if kind == "unknown" and not trust:
            raise BadInput(
                f"{label}: not a PyTorch checkpoint or safetensors file ({_what_it_looks_like(path)}); "
                "expected a state dict saved with torch.save or safetensors"
            )
        check_budget(path, kind, label)
    except OSError as e:
        raise BadInput(f"{label}: cannot read the file ({e.strerror or type(e).__name__})") from None
    obj = read_safetensors(path, label) if kind == "safetensors" else _torch_load(path, kind, trust, label)
    if isinstance(obj, nn.Module):  # only with trust=True: a whole pickled model, whose own code runs here
        try:
            obj = obj.state_dict()
        except Exception as e:  # noqa: BLE001 - the model's own code
            raise BadInput(f"{label}: the pickled model's state_dict() failed ({_why(e)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        got = "an empty dict" if isinstance(obj, dict) and not obj else type(obj).__name__
        if isinstance(obj, dict) and obj:
            got = "a dict that also holds non-tensors"
        raise BadInput(f"{label}: expected a state dict (name -> tensor), got {got}")
    over_cap(label, "checkpoint_tensors", len(obj), f"it holds {len(obj):,} tensors")
    total = 0
    for k, v in obj.items():
        if v.layout != torch.strided:
            raise BadInput(
                f"{label}: tensor {key_text(k)} is {str(v.layout).removeprefix('torch.')}; only dense tensors are "
                "supported (call .to_dense() before saving)"
            )
        if v.is_quantized:
            raise BadInput(
                f"{label}: tensor {key_text(k)} is quantized ({dtype_name(v.dtype)}); float weights "
                f"({FLOATS_TEXT}) are needed (call .dequantize() before saving)"
            )
        if v.device.type == "meta":
            raise BadInput(
                f"{label}: tensor {key_text(k)} is on the meta device, so it holds no values (the model was saved "
                "before its weights existed); save the real weights"
            )
        if v.is_complex():
            raise BadInput(
                f"{label}: tensor {key_text(k)} is complex ({dtype_name(v.dtype)}); network weights must be real"
            )
        if v.dtype not in (*FLOAT_DTYPES, *INT_DTYPES, torch.bool):
            raise unusable_dtype(label, k, dtype_name(v.dtype))
        total += v.numel() * v.element_size()
    over_cap(label, "checkpoint_mb", total / 2**20, f"its tensors take {total / 2**20:,.1f} MiB")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _check_finite(
    sd: dict[str, torch.Tensor], fname: str, raw: dict[str, torch.Tensor] | None = None
) -> None:
    """Refuse NaN or inf in float weights; `raw` (before conversion) tells overflow on conversion from damage."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        grew = [k for k in bad if raw is not None and k in raw and bool(torch.isfinite(raw[k]).all())]
        why = (
            f" ({len(grew)} only after conversion to {dtype_name(sd[grew[0]].dtype)}: values too large for it)"
            if grew
            else ""
        )
        raise BadInput(
            f"{fname}: weights contain NaN or inf in {len(bad)} tensor(s){why}, e.g. {[key_text(k) for k in bad[:3]]}"
        )


def _outputs(out: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return []


def _probe_outputs(net: Backbone, label: str) -> None:
    """One forward pass on a grey and a noise image: the outputs must be finite (weights can be finite yet overflow)."""
    module = net.require_module("probing a checkpoint")
    s = net.pre.size
    gen = torch.Generator().manual_seed(0)
    x01 = torch.cat([torch.full((1, 3, s, s), 0.5), torch.rand(1, 3, s, s, generator=gen)])
    try:
        with torch.no_grad():
            outs = _outputs(module(net.normalize(x01)))
    except Exception as e:  # noqa: BLE001 - an arbitrary architecture's forward pass
        raise BadInput(
            f"{label}: the network fails on a probe image with these weights ({_why(e)})"
        ) from None
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in outs):
        raise BadInput(
            f"{label}: the network's outputs are NaN or infinite on a probe image (grey and noise), although every "
            "weight is finite: the weights overflow (values far too large) or are damaged; check the checkpoint"
        )


_SIGNATURES: dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}


def _build_arch(arch: str) -> Backbone:
    """A fresh backbone of architecture `arch` (a zoo or torchvision name) to receive a checkpoint's weights."""
    if arch in ZOO:
        return ZOO[arch].build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_torchvision(arch, pretrained=False)


def _arch_signature(arch: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in `arch`'s state dict, built once per architecture, so a
    checkpoint that does not fit is refused without building the network again."""
    if arch not in _SIGNATURES:
        module = _build_arch(arch).require_module("loading a checkpoint")
        _SIGNATURES[arch] = {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}
    return _SIGNATURES[arch]


def _fit_to(
    sd: dict[str, torch.Tensor], sig: dict[str, tuple[tuple[int, ...], torch.dtype]], arch: str, label: str
) -> None:
    """Refuse a state dict whose names, shapes or dtypes do not fit architecture `arch`; fills missing
    BatchNorm step counters (checkpoints from before PyTorch 0.4.1) in place."""
    for k, (shape, dtype) in sig.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros(shape, dtype=dtype)
    missing = [k for k in sig if k not in sd]
    extra = [k for k in sd if k not in sig]
    if missing or extra:
        raise BadInput(
            f"{label} does not fit architecture {arch!r}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(extra)} unexpected key(s) {[key_text(k)[1:-1] for k in extra[:3]]}. Is it a checkpoint for a "
            "different architecture?"
        )
    wrong = [k for k, (shape, _) in sig.items() if tuple(sd[k].shape) != shape]
    if wrong:
        k = wrong[0]
        raise BadInput(
            f"{label} does not fit architecture {arch!r}: {len(wrong)} tensor(s) have the wrong shape, "
            f"e.g. {k}: {tuple(sd[k].shape)} vs {sig[k][0]}"
        )
    for k, (_, want) in sig.items():
        have = sd[k].dtype
        if want.is_floating_point:
            if have not in FLOAT_DTYPES:
                raise BadInput(
                    f"{label}: tensor {key_text(k)} is {dtype_name(have)}; float weights ({FLOATS_TEXT}) are needed"
                )
        elif want == torch.bool:
            if have != torch.bool:
                raise BadInput(
                    f"{label}: tensor {key_text(k)} is {dtype_name(have)}; a bool buffer is needed"
                )
        elif have not in INT_DTYPES:
            raise BadInput(
                f"{label}: tensor {key_text(k)} is {dtype_name(have)}; an integer buffer "
                f"({dtype_name(want)}, like BatchNorm's step counter) is needed"
            )


def from_checkpoint(path: Path, arch: str | None, trust: bool, label: str | None = None) -> Backbone:
    """A backbone of architecture `arch` with a user's state dict: read safely, fitted by name, shape and dtype,
    converted to each parameter's dtype, and probed once so that it never predicts from NaN."""
    label = _label(path, label)
    if not arch:
        raise BadInput(
            f"{label}: a state dict needs an architecture name, e.g. accel.load('{path}', arch='resnet18') "
            "(CLI: --arch resnet18)"
        )
    sd = read_state_dict(path, trust, label)
    sig = _arch_signature(arch)
    _fit_to(sd, sig, arch, label)
    fitted = {k: sd[k].to(device="cpu", dtype=sig[k][1]) for k in sig}
    _check_finite(fitted, label, sd)
    net = _build_arch(arch)
    module = net.require_module("loading a checkpoint")
    try:
        module.load_state_dict(fitted)
    except RuntimeError as e:
        raise BadInput(f"{label} does not fit architecture {arch!r}: {_why(e)}") from None
    net.name = f"{arch}@{label}"
    net.source = f"user checkpoint {label} (sha256 {file_sha256(path)[:12]})"
    net.pretrained = True
    net.weights_changed()
    _probe_outputs(net, label)
    return net


__all__ = ["from_checkpoint", "read_safetensors", "read_state_dict"]
