"""Dataset job outputs verified on read (issue 16): every shard's size and SHA-256 checked against the manifest,
damaged or missing shards reported by name (never returned), `convlens job verify` / `repair`, temporaries of a
killed job cleaned on the next start, and job errors as one stderr line with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import accel
from accel import cli
from accel import jobs as dj
from accel.jobs.cli import ProgressBar
from accel.jobs.worker import default_threads, limit_session_threads

from .conftest import get_net

SHARD = 8  # 25 files (24 crops + 1 corrupt) -> 4 shards


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dj.make_crop_folder(tmp_path_factory.mktemp("crops"), 24, size=28, seed=5, corrupt=1)


@pytest.fixture(scope="module")
def embed_job(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "out"
    dj.run_job("embed", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD)
    return out


@pytest.fixture(scope="module")
def patches_job(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("patches") / "out"
    dj.run_job("max_patches", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD, k=3)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "job"
    shutil.copytree(src, dst)
    return dst


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "shards").glob("*.parquet"))}


def _same(a: dict, b: dict) -> None:
    assert list(a["paths"]) == list(b["paths"]) and a["errors"] == b["errors"]
    assert np.array_equal(a["embeddings"], b["embeddings"]) and np.array_equal(a["preds"], b["preds"])


def test_clean_output_verifies_and_reads(embed_job: Path) -> None:
    rep = dj.verify_job_output(embed_job)
    assert rep["problems"] == [] and rep["verified"] == rep["shards"] == 4 and rep["status"] == "complete"
    res = dj.open_job_output(embed_job)
    assert res["embeddings"].shape == (24, 128) and len(res["errors"]) == 1


@pytest.mark.parametrize("damage", ["bit_flip", "truncated", "other_shard", "missing"])
def test_damaged_shard_is_reported_by_name_never_returned(
    damage: str, embed_job: Path, tmp_path: Path
) -> None:
    out = _copy(embed_job, tmp_path)
    victim = out / "shards" / "embed-00001.parquet"
    data = victim.read_bytes()
    if damage == "bit_flip":
        victim.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    elif damage == "truncated":
        victim.write_bytes(data[:-7])
    elif damage == "other_shard":  # a valid Parquet file of the same job, just not this shard's
        victim.write_bytes((out / "shards" / "embed-00002.parquet").read_bytes())
    else:
        victim.unlink()
    expected = {
        "bit_flip": "does not match the SHA-256 the manifest recorded",
        "truncated": f"is {len(data) - 7} bytes where the manifest recorded {len(data)}",
        "other_shard": "is",  # size or hash, whichever differs first
        "missing": "is missing",
    }[damage]
    with pytest.raises(dj.JobOutputDamaged) as ei:
        dj.open_job_output(out)
    msg = str(ei.value)
    assert isinstance(ei.value, accel.BadInput)
    assert f"shards/embed-00001.parquet {expected}" in msg
    assert f"run `convlens job repair {out}`" in msg
    assert [p["file"] for p in ei.value.problems] == ["shards/embed-00001.parquet"]
    assert "\\x" not in msg and "PAR1" not in msg  # never the file's bytes
    assert [p["shard"] for p in dj.verify_job_output(out)["problems"]] == [1]


def test_unrecorded_shard_of_a_complete_job_is_an_error(embed_job: Path, tmp_path: Path) -> None:
    """A complete job whose manifest lacks a shard's record is not silently read as a shorter job."""
    out = _copy(embed_job, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    del m["shards"]["3"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        dj.JobOutputDamaged, match=r"shards/embed-00003.parquet was never recorded as finished"
    ):
        dj.open_job_output(out)
    m["status"] = "running"  # a running job may lack shards: it shows what it has
    (out / "manifest.json").write_text(json.dumps(m))
    assert len(dj.open_job_output(out)["paths"]) == sum(r["rows"] for r in m["shards"].values())


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["shards"]["0"].update(file="../../etc/passwd"), "shard 0 names an unexpected file"),
        (lambda m: m["shards"]["0"].update(sha256="zz"), "shard 0 has no valid SHA-256"),
        (lambda m: m["shards"]["0"].update(bytes=-1), "shard 0 has invalid sizes"),
        (lambda m: m["shards"].update({"9": m["shards"]["0"]}), "shard key '9' is not one of the 4 shards"),
        (lambda m: m["model"].update(input_shape=[1, 28]), "'model.input_shape' is not three sizes"),
        (lambda m: m.update(shards=[]), "'shards' is missing or not an object"),
        (lambda m: m["shards"]["1"].update(errors=[["a"]]), "shard 1 has an invalid error list"),
    ],
)
def test_damaged_manifest_is_refused_by_field(edit, match: str, embed_job: Path, tmp_path: Path) -> None:
    out = _copy(embed_job, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(accel.BadInput, match=rf"manifest.json: the job manifest is damaged \({match}\)"):
        dj.open_job_output(out)
    (out / "manifest.json").write_bytes(b'{"format": "convlens-job/1", ')
    with pytest.raises(accel.BadInput, match="not valid JSON"):
        dj.open_job_output(out)


def test_verify_and_repair_commands_recompute_exactly_the_damaged_shards(
    embed_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(embed_job, tmp_path)
    clean = dj.open_job_output(embed_job)
    v1 = out / "shards" / "embed-00001.parquet"
    v1.write_bytes(v1.read_bytes()[:-1] + b"!")
    (out / "shards" / "embed-00003.parquet").unlink()
    before = _mtimes(out)

    assert cli.main(["job", "verify", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.out.splitlines() == [
        "shards/embed-00001.parquet: does not match the SHA-256 the manifest recorded (damaged)",
        "shards/embed-00003.parquet: is missing",
    ]
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convlens: error: ")
    assert f"2 job file(s) damaged or missing; run `convlens job repair {out}`" in err[0]

    assert cli.main(["job", "repair", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["repaired"] == ["shards/embed-00001.parquet", "shards/embed-00003.parquet"]
    assert (s["computed_shards"], s["skipped_shards"]) == (2, 2)
    after = _mtimes(out)
    assert {k: after[k] for k in ("embed-00000.parquet", "embed-00002.parquet")} == {
        k: before[k] for k in ("embed-00000.parquet", "embed-00002.parquet")
    }  # untouched
    assert cli.main(["job", "verify", str(out)]) == 0
    assert "all 4 recorded shards verified" in capsys.readouterr().out
    _same(dj.open_job_output(out), clean)
    # nothing to repair: no shard computed
    s2 = dj.repair_job_output(out, model=get_net("fashion_cnn"))
    assert s2["repaired"] == [] and s2["computed_shards"] == 0


def test_repair_refuses_changed_inputs_or_model(embed_job: Path, crops: Path, tmp_path: Path) -> None:
    out = _copy(embed_job, tmp_path)
    (out / "shards" / "embed-00000.parquet").unlink()
    with pytest.raises(accel.BadInput, match="other weights than the one that ran the job"):
        dj.repair_job_output(out, model=get_net("alexnet"))
    m = json.loads((out / "manifest.json").read_text())
    m["inputs"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(accel.BadInput, match="inputs of the job .* changed since it ran"):
        dj.repair_job_output(out, model=get_net("fashion_cnn"))


def test_max_patches_merged_outputs_are_verified_and_repaired(patches_job: Path, tmp_path: Path) -> None:
    out = _copy(patches_job, tmp_path)
    clean = dj.open_job_output(patches_job)
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["output_files"]) == {"max_patches.parquet", "channels.parquet"}
    mp = out / "max_patches.parquet"
    mp.write_bytes(mp.read_bytes()[:50] + b"\x00" + mp.read_bytes()[51:])
    with pytest.raises(dj.JobOutputDamaged, match="max_patches.parquet does not match the SHA-256"):
        dj.open_job_output(out)
    shard = out / "shards" / "max_patches-00002.parquet"
    shard.write_bytes(shard.read_bytes()[::-1])
    assert [p["file"] for p in dj.verify_job_output(out)["problems"]] == [
        "shards/max_patches-00002.parquet",
        "max_patches.parquet",
    ]
    s = dj.repair_job_output(out, model=get_net("fashion_cnn"))
    assert s["computed_shards"] == 1 and dj.verify_job_output(out)["problems"] == []
    got = dj.open_job_output(out)
    for key in ("channel", "rank", "path", "index", "i", "j"):
        assert np.array_equal(got["records"][key], clean["records"][key]), key
    np.testing.assert_allclose(got["records"]["score"], clean["records"]["score"], atol=1e-6)


def test_temporaries_of_a_killed_job_are_cleaned_on_the_next_start(
    embed_job: Path, crops: Path, tmp_path: Path
) -> None:
    """What `atomic_write` leaves when the process dies mid-write (dead pid in the name) goes on the next start
    of a job on the same OUT; the rerun reuses every finished shard."""
    out = _copy(embed_job, tmp_path)
    left = [
        out / "shards" / ".embed-00002.parquet.424242-139999.tmp",
        out / ".manifest.json.424242-139999.tmp",
        out / "shards" / ".embed-00003.parquet.77.tmp",  # the older name format (pid only)
    ]
    for f in left:
        f.write_bytes(b"half written")
    s = dj.run_job("embed", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD)
    assert s["cleaned_temporaries"] == 3 and s["computed_shards"] == 0
    assert not any(f.exists() for f in left)
    assert not list(out.rglob("*.tmp"))


def test_job_errors_are_one_stderr_line_and_exit_2(
    embed_job: Path, crops: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (
            ["job", "embed", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-m", "fashion_cnn"],
            "does not exist",
        ),
        (
            ["job", "embed", str(crops), "--out", str(a_file), "-m", "fashion_cnn"],
            "exists and is not a folder",
        ),
        (["job", "verify", str(tmp_path)], "is not a convlens job output"),
        (["job", "repair", str(tmp_path / "o2")], "is not a convlens job output"),
        (
            ["job", "embed", str(crops), "--out", str(embed_job), "-m", "fashion_cnn", "--limit", "3"],
            "different job",
        ),
    ]
    for argv, want in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("convlens: error: ") and want in err, err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    # argparse usage errors of the job verbs: the same one line
    assert cli.main(["job", "verify", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for argv in (["job", "embed"], ["job", "verify"], ["job", "repair", "x", "--bogus"]):
        with pytest.raises(SystemExit) as ei:
            cli.main(argv)
        assert ei.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ": error: " in err, err


def test_progress_bar_is_closed_before_an_error_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar is drawn, and cleared when the command fails, so the error starts a clean line;
    off a terminal (pipes, logs) no bar fragment is written at all."""
    import fcntl
    import io
    import select
    import struct
    import termios

    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100x24 terminal
        tty = io.TextIOWrapper(io.FileIO(slave, "w", closefd=False), write_through=True)
        monkeypatch.setattr("sys.stderr", tty)
        with pytest.raises(accel.BadInput), ProgressBar("job embed") as bar:
            bar.progress(0.4, "10/25 images")
            raise accel.BadInput("boom")
        assert bar.bar is None
        written = ""
        while select.select([master], [], [], 0.5)[0]:  # never block: read what the bar wrote
            written += os.read(master, 65536).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "job embed" in written and "40%" in written  # drawn
    # closed: the bar's line overwritten with blanks and the cursor back at column 0, where the error starts
    assert written.endswith("\r") and written[:-1].rsplit("\r", 1)[-1].strip() == ""

    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    with ProgressBar("job embed") as bar:
        bar.progress(0.5, "half")
    assert piped.getvalue() == ""


def test_shard_worker_threads_are_explicit_not_environment(crops: Path) -> None:
    """A Ray actor's thread share reaches torch and the ONNX Runtime session as arguments; the process
    environment is never written."""
    import torch

    net = get_net("fashion_cnn")
    before_env = os.environ.get("CONVLENS_THREADS")
    before_torch = torch.get_num_threads()
    cfg = dj.JobConfig("embed", "fashion_cnn").resolve(net)
    from dataclasses import asdict

    w = dj.ShardWorker(asdict(cfg), threads=1, net=net)
    try:
        assert os.environ.get("CONVLENS_THREADS") == before_env
        assert w.threads == 1 and torch.get_num_threads() == 1
        assert w.runner.session.get_session_options().intra_op_num_threads == 1
        shard = dj.plan_shards(dj.list_inputs(crops, limit=4), 4)[0]
        assert w.process(shard)["rows"] == 4
    finally:
        torch.set_num_threads(before_torch)
        limit_session_threads(w.runner, default_threads())  # the runner is shared with other tests
