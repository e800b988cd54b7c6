"""Size caps of a checkpoint, checked from its directory or header before anything is read, and the dtype rules.

A torch.save zip is bounded from its central directory (records, decompressed bytes, compression ratio), a
safetensors file from its JSON header (tensor count, declared bytes, dtype codes), a raw pickle by its own size:
a crafted file cannot make convlens allocate what the caps (`accel.limits`) do not allow.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInput
from ..limits import check


def key_text(k: object) -> str:
    """A tensor name from a file, quoted and shortened for a one-line message."""
    s = str(k)
    return repr(s if len(s) <= 60 else s[:57] + "...")


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as messages name it: float32, not torch.float32."""
    return str(dtype).removeprefix("torch.")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOATS_TEXT = "float16, bfloat16, float32 or float64"
# safetensors dtype codes: bits per element, and the name messages use (torch's where it has one)
_ST_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (64, "float64"),
    "F32": (32, "float32"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I64": (64, "int64"),
    "I32": (32, "int32"),
    "I16": (16, "int16"),
    "I8": (8, "int8"),
    "U8": (8, "uint8"),
    "BOOL": (8, "bool"),
    "U16": (16, "uint16"),
    "U32": (32, "uint32"),
    "U64": (64, "uint64"),
    "C64": (64, "complex64"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
    "F4": (4, "float4_e2m1"),
}
_ST_USABLE = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
# a real header takes ~150 bytes per tensor; JSON this size parses in well under 1 GB
_ST_HEADER_MAX = 16 << 20
_ZIP_DIRECTORY_MAX = 64 << 20  # a zip's central directory is ~100 bytes per record
_RATIO_FLOOR = 64 << 20  # compression ratios are only judged past this many decompressed bytes


def unusable_dtype(label: str, key: object, name: str) -> BadInput:
    """The refusal of a tensor whose dtype no network weight can have."""
    return BadInput(
        f"{label}: tensor {key_text(key)} is {name}, which convlens cannot load; float weights ({FLOATS_TEXT}) "
        "are needed (and integer counters like BatchNorm's num_batches_tracked)"
    )


def over_cap(label: str, kind: str, value: float, said: str) -> None:
    """Raise ResourceLimit if `value` is over cap `kind`; `said` states the value in words for the message."""
    check(
        kind,
        value,
        label,
        lambda limit, c: (
            f"{label}: {said}, over the cap of {limit:,g} ({c.what}); refused before reading it. If the file "
            f"is genuine, raise the cap with the environment variable {c.env}={math.ceil(value)}"
        ),
    )


def _zip_end_record(path: Path, size: int, label: str) -> tuple[int, int]:
    """(number of records, central directory bytes) from a zip's end records, before the directory is read."""
    corrupt = BadInput(
        f"{label}: not a readable PyTorch checkpoint, truncated or corrupt (its zip directory is missing or "
        "damaged); save it again with torch.save"
    )
    span = min(size, 22 + 0xFFFF)
    with open(path, "rb") as f:
        f.seek(size - span)
        tail = f.read(span)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise corrupt
        records, cd_size, cd_offset = struct.unpack("<6xHLL", tail[at + 4 : at + 20])
        if records == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):  # zip64: the sizes live elsewhere
            loc = size - span + at - 20
            if loc < 0:
                raise corrupt
            f.seek(loc)
            locator = f.read(20)
            if len(locator) < 20 or locator[:4] != b"PK\x06\x07":
                raise corrupt
            (offset,) = struct.unpack("<Q", locator[8:16])
            if offset > size - 56:
                raise corrupt
            f.seek(offset)
            rec = f.read(56)
            if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
                raise corrupt
            records, cd_size, cd_offset = struct.unpack("<QQQ", rec[32:56])
    if cd_size > size or cd_offset > size:
        raise corrupt
    return int(records), int(cd_size)


def _check_zip_budget(path: Path, size: int, label: str) -> None:
    """Bound a torch.save zip from its directory alone: records, decompressed bytes and compression ratio."""
    records, cd_size = _zip_end_record(path, size, label)
    over_cap(label, "checkpoint_tensors", records, f"its zip archive holds {records:,} records")
    if cd_size > _ZIP_DIRECTORY_MAX:
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint (its zip directory takes {cd_size / 2**20:,.0f} MiB, "
            "far more than a checkpoint's); save it again with torch.save"
        )
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception:  # noqa: BLE001 - zipfile raises many types on damaged directories; none is the user's bug
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint, truncated or corrupt (its zip directory is damaged); "
            "save it again with torch.save"
        ) from None
    if not any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint: a zip archive without the data.pkl record that "
            "torch.save writes; save the state dict with torch.save or safetensors"
        )
    total = sum(i.file_size for i in infos)
    over_cap(label, "checkpoint_mb", total / 2**20, f"its records decompress to {total / 2**20:,.1f} MiB")
    ratio = total / max(size, 1)
    if total > _RATIO_FLOOR:  # over_cap judges the ratio
        over_cap(
            label,
            "checkpoint_ratio",
            ratio,
            f"its {size / 2**20:,.1f} MiB decompress to {total / 2**20:,.0f} MiB, a compression ratio of {ratio:,.0f}",
        )


def _safetensors_header(path: Path, size: int, label: str) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, after bounding its length (nothing else is read)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 10 or not 2 <= n <= size - 8:
            raise BadInput(
                f"{label}: not a valid safetensors file (its header length does not fit in the file: truncated, "
                "or not safetensors at all)"
            )
        if n > _ST_HEADER_MAX:
            raise BadInput(
                f"{label}: not a usable safetensors file: its header takes {n / 2**20:,.0f} MiB, more than "
                f"{_ST_HEADER_MAX >> 20} MiB (a real one takes a few KiB per hundred tensors)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise BadInput(f"{label}: not a valid safetensors file (its header is not a JSON object)")
    return header


def _check_safetensors_budget(path: Path, size: int, label: str) -> None:
    """Refuse unusable dtypes by name and bound declared tensor sizes from the safetensors header alone."""
    header = _safetensors_header(path, size, label)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    over_cap(label, "checkpoint_tensors", len(tensors), f"it declares {len(tensors):,} tensors")
    total_bits = 0
    for k, v in tensors.items():
        dtype, shape = (v.get("dtype"), v.get("shape")) if isinstance(v, dict) else (None, None)
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise BadInput(
                f"{label}: not a valid safetensors file (the header entry for tensor {key_text(k)} has no valid "
                "dtype and shape)"
            )
        if dtype not in _ST_DTYPES:
            raise BadInput(
                f"{label}: tensor {key_text(k)} has the dtype code {dtype[:12]!r}, which safetensors does not define; "
                f"float weights ({FLOATS_TEXT}) are needed"
            )
        bits, name = _ST_DTYPES[dtype]
        if dtype not in _ST_USABLE:
            raise unusable_dtype(label, k, name)
        total_bits += math.prod(shape) * bits
    over_cap(label, "checkpoint_mb", total_bits / 2**23, f"its tensors declare {total_bits / 2**23:,.1f} MiB")


def check_budget(path: Path, kind: str, label: str) -> None:
    """Bound a checkpoint's decompressed bytes and declared tensors before anything is read (fair use)."""
    size = path.stat().st_size
    if kind == "zip":
        _check_zip_budget(path, size, label)
    elif kind == "safetensors":
        _check_safetensors_budget(path, size, label)
    else:  # pickles store tensors raw: the file's own size bounds what they hold
        over_cap(label, "checkpoint_mb", size / 2**20, f"the file takes {size / 2**20:,.1f} MiB")
