"""Reading a job output: every shard verified against the manifest before it is parsed, max_patches' shards
merged into the global top-k per channel (with each unit's receptive-field box and per-channel selectivity),
`verify_job_output`, and the receptive-field crop of one max_patches record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput
from .inputs import read_image
from .manifest import (
    MANIFEST,
    MERGED,
    JobOutputDamaged,
    atomic_write,
    file_problem,
    find_problems,
    pq_bytes,
    read_manifest,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL import Image

    from ..zoo import Backbone


def _shard_tables(out: Path, manifest: dict[str, Any]) -> list[pa.Table]:
    """The finished shards' tables in shard order. Each shard is read once, its size and SHA-256 checked against
    the manifest, and only then parsed (from those same bytes); a missing or altered shard, or a shard a
    complete job never recorded, raises JobOutputDamaged naming it: damaged data is never returned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data: dict[str, bytes] = {}
    problems = find_problems(out, manifest, merged=False, data=data)
    if problems:
        raise JobOutputDamaged(out, problems)
    job = manifest["job"]
    tables = []
    for key in sorted(data, key=int):
        rec = manifest["shards"][key]
        try:
            t = pq.read_table(pa.BufferReader(data[key]))
            meta = json.loads(t.schema.metadata[b"convlens"])
            ok = meta.get("job") == job and meta.get("shard") == int(key)
            ok = ok and (job == "max_patches" or t.num_rows == rec["rows"])
        except Exception:  # noqa: BLE001 - verified bytes that still do not parse: written by something else
            ok = False
        if not ok:
            raise JobOutputDamaged(
                out,
                [{"file": rec["file"], "shard": int(key), "problem": "does not hold what the manifest says"}],
            )
        tables.append(t)
    return tables


def merge_max_patches(
    out: Path, manifest: dict[str, Any], net: Backbone | None
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Global top-k per channel from the shards' top-k (exact: the global winners are among them), with each
    unit's receptive-field box, and per-channel selectivity; written as max_patches.parquet and channels.parquet.
    Returns the outputs and their records (size, SHA-256) for the manifest, so readers can verify them."""
    import pyarrow as pa

    recs, chans = _merged_patches(out, manifest, net)
    files = {}
    for name, table in zip(MERGED, (pa.table(recs), pa.table(chans))):
        payload = pq_bytes(table)
        atomic_write(out / name, payload)
        files[name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return {"max_patches": MERGED[0], "channels": MERGED[1]}, files


def _merged_patches(
    out: Path, manifest: dict[str, Any], net: Backbone | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The verified shards of a max_patches job merged: the records of the global top-k per channel (boxes
    only when `net` is given) and the per-channel table (selectivity, mean, std, active)."""
    import pyarrow as pa

    cfg = manifest["config"]
    tables = _shard_tables(out, manifest)
    n, n_ch, s1, s2, active = _moments(out, tables)
    t = pa.concat_tables([x.replace_schema_metadata(None) for x in tables]) if tables else None
    if t is None or t.num_rows == 0:
        empty = {c: np.zeros(0, np.int64) for c in ("channel", "rank", "index", "label", "i", "j")}
        none: dict[str, Any] = empty | {"score": np.zeros(0, np.float32), "path": []}
        none |= {c: np.zeros(0, np.int32) for c in ("top", "left", "bottom", "right")}
        zero = np.zeros(n_ch)
        return none, {
            "channel": np.arange(n_ch),
            "selectivity": zero,
            "mean": zero,
            "std": zero,
            "active": active,
        }
    recs = _global_topk(t, int(cfg["k"]))
    boxes = np.zeros((len(recs["i"]), 4), np.int32)
    if net is not None:
        li = net.layer(cfg["layer"])
        _, h, w = net.input_shape
        for r, (a, b) in enumerate(zip(recs["i"], recs["j"])):
            boxes[r] = li.rf.box(int(a), int(b), h, w)
    recs |= {"top": boxes[:, 0], "left": boxes[:, 1], "bottom": boxes[:, 2], "right": boxes[:, 3]}
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    chans = {
        "channel": np.arange(n_ch),
        "selectivity": _selectivity(recs, n, n_ch, s1, s2),
        "mean": mean,
        "std": std,
        "active": active,
    }
    return recs, chans


def _moments(out: Path, tables: list[pa.Table]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Images, channels and the summed per-channel moments (s1, s2, active) the shards recorded."""
    n_ch = n = 0
    s1 = s2 = np.zeros(0)
    active = np.zeros(0, np.int64)
    for t in tables:
        st = json.loads(t.schema.metadata[b"convlens"]).get("stats") or {}
        if not all(isinstance(st.get(f), (int, list)) for f in ("n", "channels", "s1", "s2", "active")):
            raise BadInput(f"{out}: a max_patches shard lacks its statistics; rerun the job with --overwrite")
        if not n_ch:
            n_ch = int(st["channels"])
            s1, s2, active = np.zeros(n_ch), np.zeros(n_ch), np.zeros(n_ch, np.int64)
        n += int(st["n"])
        s1 = s1 + np.asarray(st["s1"])
        s2 = s2 + np.asarray(st["s2"])
        active = active + np.asarray(st["active"], np.int64)
    return n, n_ch, s1, s2, active


def _global_topk(t: pa.Table, k: int) -> dict[str, Any]:
    """The k best rows per channel of the shards' candidates (exact: every global winner is among its shard's
    top-k); ties keep the lower image index, as within a shard."""
    ch = t.column("channel").to_numpy()
    score = t.column("score").to_numpy()
    index = t.column("index").to_numpy()
    order = np.lexsort((index, -score.astype(np.float64), ch))
    ch_sorted = ch[order]
    rank = np.arange(len(order)) - np.searchsorted(ch_sorted, ch_sorted, side="left")
    keep = order[rank < k]
    paths = t.column("path").to_pylist()
    return {
        "channel": ch[keep].astype(np.int64),
        "rank": rank[rank < k].astype(np.int64),
        "score": score[keep].astype(np.float32),
        "path": [paths[r] for r in keep],
        "index": index[keep].astype(np.int64),
        "label": t.column("label").to_numpy()[keep].astype(np.int64),
        "i": t.column("i").to_numpy()[keep].astype(np.int64),
        "j": t.column("j").to_numpy()[keep].astype(np.int64),
    }


def _selectivity(recs: dict[str, Any], n: int, n_ch: int, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Per-channel selectivity of the merged top-k, by the max_patches method's own definition (TopK)."""
    from ..methods.inspect.max_patches import TopK

    top = TopK(1, n_ch)
    top.vals = recs["score"].reshape(n_ch, -1)  # channel-major, best first, the same count per channel
    top.s1, top.s2, top.seen = s1, s2, n
    return top.selectivity()


def open_job_output(out_dir: str | os.PathLike[str], maps: bool = True) -> dict[str, Any]:
    """A job folder as numpy arrays for browsing (finished shards only, so a running job can be looked at too).

    Always: job, status, complete, config, model, classes, errors [(path, reason)], manifest. embed: paths, labels,
    index, embeddings (N,D), preds/probs (classifiers). explain: paths, labels, index, targets, scores, maps (N,H,W).
    max_patches: records (dict of arrays: channel, rank, score, path, index, label, i, j, top, left, bottom, right)
    and channels (channel, selectivity, mean, std, active)."""
    out, m = job_manifest(out_dir)
    errors = sorted(((p, e) for rec in m["shards"].values() for p, e in rec["errors"]), key=lambda pe: pe[0])
    res: dict[str, Any] = {
        "job": m["job"],
        "status": m.get("status"),
        "complete": m.get("status") == "complete",
        "config": m["config"],
        "model": m["model"],
        "classes": m["inputs"].get("classes"),
        "errors": errors,
        "manifest": m,
    }
    if m["job"] == "max_patches":
        files = m.get("output_files", {})
        if res["complete"] and set(files) == set(MERGED):
            res["records"], res["channels"] = (_merged_table(out, m, name) for name in MERGED)
            return res
    try:
        if m["job"] == "max_patches":  # running (or recorded before merged files were): merge verified shards
            res["records"], res["channels"] = _merged_patches(out, m, None)
        else:
            res.update(_arrays(m, _shard_tables(out, m), maps))
    except BadInput:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # verified shards, inconsistent manifest
        raise BadInput(
            f"{out}: the shards do not match the job manifest ({type(e).__name__}); "
            f"run `convlens job verify {shlex.quote(str(out))}`, or rerun the job with --overwrite"
        ) from None
    return res


def job_manifest(out_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """OUT as a path and its checked manifest, or BadInput when OUT is not a job output."""
    out = Path(out_dir).expanduser()
    m = read_manifest(out)
    if m is None:
        raise BadInput(
            f"{str(out)!r} is not a convlens job output (no {MANIFEST}); run `convlens job ...` first"
        )
    return out, m


def verify_job_output(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file of a job output against its manifest (size and SHA-256 of each shard and merged output;
    a complete job must record every shard). Returns {'out', 'job', 'status', 'shards', 'verified',
    'problems': [{'file', 'shard', 'problem'}]}; an empty problem list means every byte is as written."""
    out, m = job_manifest(out_dir)
    problems = find_problems(out, m)
    return {
        "out": str(out),
        "job": m["job"],
        "status": m.get("status"),
        "shards": m["num_shards"],
        "verified": len(m["shards"])
        - sum(p["shard"] is not None and str(p["shard"]) in m["shards"] for p in problems),
        "problems": problems,
    }


def _merged_table(out: Path, m: dict[str, Any], name: str) -> dict[str, Any]:
    """One merged max_patches output as arrays, verified against its recorded size and SHA-256 first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keep: list[bytes] = []
    why = file_problem(out, m["output_files"][name] | {"file": name}, keep)
    if why is not None:
        raise JobOutputDamaged(out, [{"file": name, "shard": None, "problem": why}])
    try:
        t = pq.read_table(pa.BufferReader(keep[0]))
        return {c: _col(t, c) for c in t.column_names}
    except Exception:  # noqa: BLE001 - verified bytes that do not parse: not written by convlens
        raise JobOutputDamaged(
            out, [{"file": name, "shard": None, "problem": "is not the table the job wrote"}]
        ) from None


def _arrays(m: dict[str, Any], tables: list[pa.Table], maps: bool) -> dict[str, Any]:
    """The columns of embed / explain shards as numpy arrays (see open_job_output)."""
    import pyarrow as pa

    t = pa.concat_tables([x.replace_schema_metadata(None) for x in tables]) if tables else None
    if t is None or t.num_rows == 0:
        return _empty_arrays(m, maps)
    res: dict[str, Any] = {
        "paths": np.asarray(t.column("path").to_pylist(), dtype=str),
        "labels": _col(t, "label"),
        "index": _col(t, "index"),
    }
    if m["job"] == "embed":
        res["embeddings"] = _fixed(t, "embedding")
        if "pred" in t.column_names:
            res["preds"] = _col(t, "pred")
            res["probs"] = _col(t, "prob")
    else:
        h, w = m["model"]["input_shape"][1:]
        res["targets"] = _col(t, "target")
        res["scores"] = _col(t, "score")
        if maps:
            res["maps"] = _fixed(t, "map").reshape(-1, h, w)
    return res


def _empty_arrays(m: dict[str, Any], maps: bool) -> dict[str, Any]:
    """What _arrays gives for a job with no rows yet (every column empty, with its dtype and width)."""
    res: dict[str, Any] = {
        "paths": np.asarray([], dtype=str),
        "labels": np.zeros(0, np.int64),
        "index": np.zeros(0, np.int64),
    }
    if m["job"] == "embed":
        res["embeddings"] = np.zeros((0, 0), np.float32)
    else:
        h, w = m["model"]["input_shape"][1:]
        res["targets"] = np.zeros(0, np.int64)
        res["scores"] = np.zeros(0, np.float32)
        if maps:
            res["maps"] = np.zeros((0, h, w), np.float32)
    return res


def _col(t: pa.Table, name: str) -> Any:
    """One column as a numpy array (strings as a str array)."""
    c = t.column(name)
    if c.type == "string" or str(c.type) in ("string", "large_string"):
        return np.asarray(c.to_pylist(), dtype=str)
    return c.to_numpy()


def _fixed(t: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as an (N, D) float32 array."""
    c = t.column(name).combine_chunks()
    d = c.type.list_size
    return np.asarray(c.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, d)


def crop_patch(record: dict[str, Any], net: Backbone) -> Image.Image:
    """The receptive-field crop of one max_patches record (a row of `records`) from the preprocessed image."""
    from PIL import Image as PILImage

    img = read_image(str(record["path"]))
    x = net.to_tensor01(img)[0].permute(1, 2, 0).numpy()
    top, left, bottom, right = (int(record[c]) for c in ("top", "left", "bottom", "right"))
    a = (x[top:bottom, left:right] * 255 + 0.5).astype(np.uint8)
    return PILImage.fromarray(a)
