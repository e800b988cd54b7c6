"""The files of a job output and their integrity: shard names, Parquet bytes, atomic writes, the manifest (the
root every shard and merged file is verified against by size and SHA-256), the output lock, and the list of
damaged or missing files that `convlens job verify` reports and `convlens job repair` recomputes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput
from .config import JOBS

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "convlens-job/1"
MANIFEST = "manifest.json"
ERRORS = "errors.json"
SHARD_DIR = "shards"
MERGED = (
    "max_patches.parquet",
    "channels.parquet",
)  # max_patches: merged outputs, recorded with their SHA-256


def shard_name(job: str, k: int) -> str:
    """The path of shard `k` of `job` inside OUT."""
    return f"{SHARD_DIR}/{job}-{k:05d}.parquet"


def fixed_list(a: np.ndarray) -> pa.Array:
    """(N, D) float32 -> Arrow fixed_size_list<float32>[D] (keeps the width even when N is 0)."""
    import pyarrow as pa

    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), int(a.shape[1]))


def table_bytes(cols: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """A shard's Parquet bytes: its columns, with `meta` (job, shard, backend, ...) in the schema metadata."""
    import pyarrow as pa

    t = pa.table(cols)
    return pq_bytes(t.replace_schema_metadata({b"convlens": json.dumps(meta, sort_keys=True).encode()}))


def pq_bytes(t: pa.Table) -> bytes:
    """A table as zstd-compressed Parquet bytes (what every job file holds)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of it; a full disk or
    a read-only folder becomes a BadInput naming the file (and no temporary is left behind)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BadInput(
            f"cannot write {path} ({e.strerror or type(e).__name__}); free some space or choose another --out"
        ) from None


def clean_temporaries(out: Path) -> list[str]:
    """Remove the temporaries (`.<name>.<pid>[-<thread>].tmp`) a killed job left in OUT and OUT/shards. Only
    called while holding OUT's lock, so no live writer owns any of them. Returns their names."""
    gone = []
    for folder in (out, out / SHARD_DIR):
        for f in folder.glob(".*.tmp"):
            try:
                f.unlink()
                gone.append(f.name)
            except FileNotFoundError:
                pass
    return sorted(gone)


def prepare_out(out: Path) -> None:
    """Check OUT before any work starts: a folder (or one that can be made) that takes new files."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} exists and is not a folder; choose a folder for the job output")
    try:
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}-{threading.get_ident()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BadInput(
            f"cannot write the job output in {str(out)!r} ({e.strerror or type(e).__name__}); "
            "choose a writable --out with free space"
        ) from None


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(out: Path) -> dict[str, Any] | None:
    """OUT's manifest, checked field by field (it is the root every shard is verified against), or None."""
    p = out / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise BadInput(f"{p}: cannot read the job manifest ({e.strerror or type(e).__name__})") from None
    except (ValueError, RecursionError):
        raise BadInput(
            f"{p}: the job manifest is not valid JSON (damaged); rerun the job with --overwrite"
        ) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise BadInput(
            f"{p}: not a convlens job manifest (format {fmt if isinstance(fmt, str) else '?'!r}, "
            f"expected {FORMAT!r})"
        )
    check_manifest(m, p)
    return m


_SHA_RE = re.compile(r"[0-9a-f]{64}")


def is_count(v: Any) -> bool:
    """Whether `v` is a whole number >= 0 (and not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_manifest(m: dict[str, Any], p: Path) -> None:
    """BadInput naming the first field of a manifest that does not have the shape convlens writes."""

    def bad(what: str) -> BadInput:
        """The refusal naming the damaged field."""
        return BadInput(f"{p}: the job manifest is damaged ({what}); rerun the job with --overwrite")

    job = m.get("job")
    if job not in JOBS:
        raise bad("unknown job")
    for key in ("config", "model", "inputs", "shards"):
        if not isinstance(m.get(key), dict):
            raise bad(f"{key!r} is missing or not an object")
    num = m.get("num_shards")
    if not isinstance(num, int) or not is_count(num):
        raise bad("'num_shards' is not a count")
    if m.get("status") not in (None, "running", "complete"):
        raise bad("unknown 'status'")
    shape = m["model"].get("input_shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(is_count(v) and 0 < v <= 1 << 16 for v in shape)
    ):
        raise bad("'model.input_shape' is not three sizes")
    classes = m["inputs"].get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("'inputs.classes' is not a list of names")
    if job == "max_patches":
        k, layer = m["config"].get("k"), m["config"].get("layer")
        if not (is_count(k) and 1 <= k <= 1024) or not isinstance(layer, str):
            raise bad("'config.k' or 'config.layer' is invalid")
    for key, rec in m["shards"].items():
        if not re.fullmatch(r"[0-9]{1,9}", key) or int(key) >= num:
            raise bad(f"shard key {key[:20]!r} is not one of the {num} shards")
        if not isinstance(rec, dict):
            raise bad(f"shard {key} is not an object")
        if rec.get("file") != shard_name(job, int(key)):
            raise bad(f"shard {key} names an unexpected file")
        if not all(is_count(rec.get(f)) for f in ("bytes", "count", "rows", "first")):
            raise bad(f"shard {key} has invalid sizes")
        if not isinstance(rec.get("sha256"), str) or not _SHA_RE.fullmatch(rec["sha256"]):
            raise bad(f"shard {key} has no valid SHA-256")
        errs = rec.get("errors")
        if not isinstance(errs, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in errs
        ):
            raise bad(f"shard {key} has an invalid error list")
    files = m.get("output_files", {})
    if not isinstance(files, dict) or not all(
        k in MERGED and isinstance(v, dict) and is_count(v.get("bytes")) and isinstance(v.get("sha256"), str)
        for k, v in files.items()
    ):
        raise bad("'output_files' is invalid")


class OutputLock:
    """An exclusive advisory lock on OUT/.lock so two jobs never write the same output (released by the kernel
    if the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise BadInput(
                f"another convlens job is writing to {self.path.parent}; wait for it or choose another --out"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def verified(out: Path, rec: dict[str, Any]) -> bool:
    """Whether a recorded file is still on disk, byte for byte (size and SHA-256)."""
    return file_problem(out, rec) is None


def file_problem(out: Path, rec: dict[str, Any], keep: list[bytes] | None = None) -> str | None:
    """None if OUT/rec['file'] has the recorded size and SHA-256, else what is wrong. Reads the file once; with
    `keep`, its verified bytes are appended there (so the caller parses exactly what was hashed)."""
    p = out / rec.get("file", "")
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if size != rec.get("bytes"):
        return f"is {size} bytes where the manifest recorded {rec.get('bytes')} (damaged)"
    try:
        data = p.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if len(data) != rec.get("bytes") or hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        return "does not match the SHA-256 the manifest recorded (damaged)"
    if keep is not None:
        keep.append(data)
    return None


class JobOutputDamaged(BadInput):
    """Files of a job output are missing or differ from what its manifest records; `.problems` lists them
    ({'file', 'shard', 'problem'}) and `convlens job repair OUT` recomputes them."""

    def __init__(self, out: Path, problems: list[dict[str, Any]]) -> None:
        self.out = out
        self.problems = problems
        shown = "; ".join(f"{d['file']} {d['problem']}" for d in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        super().__init__(
            f"{out}: {len(problems)} job file(s) damaged or missing: {shown}{more}; "
            f"run `convlens job repair {shlex.quote(str(out))}` to recompute them"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as (out, problems), so the error crosses process boundaries (Ray) intact."""
        return (type(self), (self.out, self.problems))


def find_problems(
    out: Path,
    m: dict[str, Any],
    shards: bool = True,
    merged: bool = True,
    data: dict[str, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Every recorded shard (and merged output) that is missing or altered, and every shard a complete job
    lacks a record of. With `data`, the verified bytes of each good shard are kept there by shard key."""
    found: list[dict[str, Any]] = []
    recs = m["shards"]
    if shards:
        for key in sorted(recs, key=int):
            keep: list[bytes] | None = [] if data is not None else None
            why = file_problem(out, recs[key], keep)
            if why is not None:
                found.append({"file": recs[key]["file"], "shard": int(key), "problem": why})
            elif keep and data is not None:
                data[key] = keep[0]
        if m.get("status") == "complete":
            for k in range(m["num_shards"]):
                if str(k) not in recs:
                    found.append(
                        {
                            "file": shard_name(m["job"], k),
                            "shard": k,
                            "problem": "was never recorded as finished",
                        }
                    )
    if merged and m.get("status") == "complete":
        for name, rec in m.get("output_files", {}).items():
            why = file_problem(out, rec | {"file": name})
            if why is not None:
                found.append({"file": name, "shard": None, "problem": why})
    return found
