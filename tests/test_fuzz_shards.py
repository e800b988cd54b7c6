"""Byte-level fuzzing of dataset job outputs (issue 16): arbitrary short byte strings and structured mutations of
real job shards (a tiny embed job and an explain job of fashion_cnn) and of their manifest, read back with
`open_job_output`. Property: a result or a BadInput in bounded time, and a mutated shard is never returned:
every refusal names the shard, and anything accepted equals the original output exactly."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accel import jobs as dj

from .conftest import get_net
from .fuzzkit import byte_inputs, fuzz

N_SHARD_INPUTS = 1200  # per job (embed, explain)
N_MANIFEST_INPUTS = 600


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny embed job (3 shards, one unreadable file listed) and an explain job (occlusion, 2 shards)."""
    from accel.methods.attribute import occlusion  # noqa: F401 - registers the method

    root = tmp_path_factory.mktemp("fuzz_jobs")
    crops = dj.make_crop_folder(root / "crops", 8, size=28, seed=11, corrupt=1)
    net = get_net("fashion_cnn")
    dj.run_job("embed", crops, root / "embed", model=net, shard_size=3)
    dj.run_job("explain", crops, root / "explain", model=net, limit=4, window=7, stride=7, shard_size=2)
    return {"embed": root / "embed", "explain": root / "explain"}


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two open_job_output results hold the same data (arrays exactly, lists and dicts equal)."""
    keys = set(a) | set(b)
    keys.discard("manifest")
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


class ShardTarget:
    """Writes the fuzzed bytes over one shard of a scratch copy of a job output, then reads the output back.
    Returning data that differs from the original is raised as an AssertionError (an escape)."""

    def __init__(self, src: Path, scratch: Path, shard: str) -> None:
        shutil.copytree(src, scratch)
        self.out = scratch
        self.name = f"shards/{shard}"
        self.victim = scratch / self.name
        self.original = self.victim.read_bytes()
        self.clean = dj.open_job_output(scratch)
        self.named = 0
        self.returned = 0

    def __call__(self, data: bytes) -> dict[str, Any]:
        self.victim.write_bytes(data)
        try:
            res = dj.open_job_output(self.out)
        except dj.JobOutputDamaged as e:
            if self.name in str(e) and "convlens job repair" in str(e):
                self.named += 1
            raise
        if data != self.original or not _equal(res, self.clean):
            raise AssertionError(f"a mutated shard was returned ({len(data)} bytes)")
        self.returned += 1
        return res


@pytest.mark.parametrize(
    "job,shard", [("embed", "embed-00001.parquet"), ("explain", "explain-00000.parquet")]
)
def test_fuzz_job_shards(job: str, shard: str, jobs: dict[str, Path], tmp_path: Path) -> None:
    """Short arbitrary bytes and mutations of every shard of the job (bit flips, truncations, chunk edits,
    another shard's valid file in this one's place) over one shard: refused by name, or identical."""
    target = ShardTarget(jobs[job], tmp_path / "job", shard)
    seeds = [p.read_bytes() for p in sorted((jobs[job] / "shards").glob("*.parquet"))]
    rep = fuzz(f"job shards ({job})", target, byte_inputs(seeds), N_SHARD_INPUTS, rng_seed=16)
    rep.assert_clean()
    assert rep.refused == target.named  # every refusal names the damaged shard and the repair command
    assert target.returned == rep.ok  # only the original bytes were ever accepted
    assert rep.refused >= 0.95 * rep.tried


def test_fuzz_job_manifest(jobs: dict[str, Path], tmp_path: Path) -> None:
    """Mutated and arbitrary manifest.json bytes: a result or a BadInput, never an escape."""
    out = tmp_path / "job"
    shutil.copytree(jobs["embed"], out)
    seed = (out / "manifest.json").read_bytes()

    def target(data: bytes) -> Any:
        (out / "manifest.json").write_bytes(data)
        return dj.open_job_output(out)

    rep = fuzz("job manifest", target, byte_inputs([seed]), N_MANIFEST_INPUTS, rng_seed=17)
    rep.assert_clean()


def test_200_single_bit_flips_are_all_reported_by_shard_name(
    jobs: dict[str, Path], tmp_path: Path, record_property
) -> None:
    """The issue's case: 200 single-bit flips of one shard. Every one is refused naming the shard; read without
    the check, many would have been returned as different embeddings (counted for the record)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = ShardTarget(jobs["embed"], tmp_path / "job", "embed-00001.parquet")
    data = target.original
    bits = np.random.default_rng(16).choice(len(data) * 8, size=200, replace=False)
    clean_rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    reported = 0
    unchecked = {"different data": 0, "identical data": 0, "parse error": 0}
    for b in bits:
        flipped = bytearray(data)
        flipped[b // 8] ^= 1 << (b % 8)
        with pytest.raises(dj.JobOutputDamaged) as ei:
            target(bytes(flipped))
        msg = str(ei.value)
        assert "shards/embed-00001.parquet does not match the SHA-256 the manifest recorded" in msg
        assert f"run `convlens job repair {target.out}`" in msg
        reported += 1
        try:  # what a reader without the check would have got
            rows = pq.read_table(pa.BufferReader(bytes(flipped))).to_pylist()
            unchecked["identical data" if rows == clean_rows else "different data"] += 1
        except Exception:  # noqa: BLE001 - any pyarrow failure
            unchecked["parse error"] += 1
    assert reported == 200
    record_property(
        "summary_line",
        f"job shards, 200 single-bit flips: 200 reported by shard name (unchecked pyarrow read: {unchecked})",
    )
