"""Dataset-scale jobs: inputs, local engine against brute-force oracles, corrupt files, resumption after a failure
or a SIGKILL, and the Ray engine giving the local engine's outputs (skipped with a reason when Ray is absent)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import accel
from accel import cli
from accel import jobs as dj

from .conftest import ROOT, get_net

N_CROPS = 240
N_BAD = 3
SHARD = 40  # 243 files -> 7 shards
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="Ray is not installed (pip install 'convlens[distributed]'); `make test` installs it"
)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 random 40px JPEG crops of the packaged photos in class subfolders, plus 3 corrupt files."""
    return dj.make_crop_folder(tmp_path_factory.mktemp("crops"), N_CROPS, size=40, seed=3, corrupt=N_BAD)


@pytest.fixture(scope="module")
def fashion():
    return get_net("fashion_cnn")


@pytest.fixture(scope="module")
def local_embed(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local_embed")
    dj.run_job("embed", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD)
    return out


@pytest.fixture(scope="module")
def local_patches(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local_patches")
    dj.run_job("max_patches", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD, k=5)
    return out


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance on 2 CPUs for this module, always shut down afterwards."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'convlens[distributed]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _images(paths: list[str]) -> list:
    return [accel.open_image(p) for p in paths]


def _shard_state(out: Path) -> dict[str, tuple[int, str]]:
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted((out / "shards").glob("*.parquet"))
    }


# ------------------------------------------------------------------------------------------------------ inputs


def test_list_inputs_folder_text_and_parquet(crops: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    inp = dj.list_inputs(crops)
    assert len(inp) == N_CROPS + N_BAD
    assert inp.paths == sorted(inp.paths)
    assert inp.classes is not None and "corrupt" in inp.classes
    for p, lab in zip(inp.paths, inp.labels):
        assert inp.classes[lab] == Path(p).relative_to(crops).parts[0]
    assert dj.list_inputs(crops, limit=7).paths == inp.paths[:7]

    # a text list: relative paths, tab labels, comments, file:// URIs and a duplicate (dropped)
    a, b = inp.paths[0], inp.paths[1]
    lst = tmp_path / "list.txt"
    rel = os.path.relpath(a, tmp_path)
    lst.write_text(f"# my images\n{rel}\tcat\n\nfile://{b}\tdog\n{a}\tcat\n")
    t = dj.list_inputs(lst)
    assert t.paths == sorted([a, b]) and t.duplicates == 1
    assert t.classes == ["cat", "dog"] and t.labels == [t.classes.index("cat"), t.classes.index("dog")]

    man = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [b, a], "label": [7, 3]}), man)
    m = dj.list_inputs(man)
    assert m.paths == [a, b] and m.labels == [3, 7] and m.classes is None

    with pytest.raises(accel.BadInput, match="does not exist"):
        dj.list_inputs(tmp_path / "nope")
    with pytest.raises(accel.BadInput, match="single image"):
        dj.list_inputs(a)
    pq.write_table(pa.table({"file": [a]}), tmp_path / "bad.parquet")
    with pytest.raises(accel.BadInput, match="'path' column"):
        dj.list_inputs(tmp_path / "bad.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(accel.BadInput, match="no images found"):
        dj.list_inputs(tmp_path / "empty")


def test_bad_job_settings_are_refused(crops: Path, tmp_path: Path) -> None:
    with pytest.raises(accel.BadInput, match="unknown job"):
        dj.run_job("cluster", crops, tmp_path, model=get_net("fashion_cnn"))
    with pytest.raises(accel.BadInput, match="shard_size"):
        dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=0)
    with pytest.raises(accel.BadInput, match="engine"):
        dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), engine="spark")
    with pytest.raises(accel.BadInput, match="window 99"):
        dj.run_job("explain", crops, tmp_path, model=get_net("fashion_cnn"), window=99)
    with pytest.raises(accel.BadInput, match="out of range|target"):
        dj.run_job("explain", crops, tmp_path, model=get_net("fashion_cnn"), target=10)
    with pytest.raises(accel.BadInput, match="unknown job parameter"):
        dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), windw=3)


# ------------------------------------------------------------------------------------------------------ local jobs


def test_embed_matches_torch_and_lists_corrupt_files(local_embed: Path, crops: Path, fashion) -> None:
    res = dj.open_job_output(local_embed)
    assert res["complete"] and res["job"] == "embed"
    inp = dj.list_inputs(crops)
    bad = sorted(p for p in inp.paths if "/corrupt/" in p)
    assert [p for p, _ in res["errors"]] == bad
    listed = json.loads((local_embed / "errors.json").read_text())
    assert listed["count"] == N_BAD and [f["path"] for f in listed["files"]] == bad
    assert all(f["error"] for f in listed["files"])
    good = [p for p in inp.paths if p not in bad]
    assert list(res["paths"]) == good
    assert res["embeddings"].shape == (N_CROPS, 128) and res["embeddings"].dtype == np.float32
    assert list(res["labels"]) == [inp.labels[inp.paths.index(p)] for p in good]
    # oracle: the torch runner on the same images, in the same order
    pick = np.arange(0, N_CROPS, 23)
    ref = accel.runner(fashion, ["embedding", "logits"], backend="torch").run(
        _images([good[i] for i in pick])
    )
    np.testing.assert_allclose(res["embeddings"][pick], ref["embedding"], atol=1e-4, rtol=1e-4)
    assert np.array_equal(res["preds"][pick], ref["logits"].argmax(1))
    m = json.loads((local_embed / "manifest.json").read_text())
    assert m["status"] == "complete" and m["num_shards"] == 7 and m["summary"]["errors"] == N_BAD


def test_max_patches_equal_brute_force_topk(local_patches: Path, crops: Path, fashion) -> None:
    res = dj.open_job_output(local_patches)
    rec, layer = res["records"], res["config"]["layer"]
    assert layer == fashion.cam_layer
    good = [p for p in dj.list_inputs(crops).paths if "/corrupt/" not in p]
    acts = accel.runner(fashion, [layer], backend="torch", batch_size=64).run(_images(good))[layer]
    n, c, h, w = acts.shape
    flat = acts.reshape(n, c, -1)
    best = flat.max(2)  # (n, C)
    li = fashion.layer(layer)
    assert len(rec["channel"]) == c * 5
    for ch in (0, 17, c - 1):
        sel = np.flatnonzero(rec["channel"] == ch)
        assert list(rec["rank"][sel]) == list(range(5))
        want = np.sort(best[:, ch])[::-1][:5]
        np.testing.assert_allclose(rec["score"][sel], want, atol=1e-4)
        for r in sel:
            img = good.index(str(rec["path"][r]))
            i, j = int(rec["i"][r]), int(rec["j"][r])
            assert abs(acts[img, ch, i, j] - rec["score"][r]) < 1e-4  # the recorded unit holds the score
            assert (rec["top"][r], rec["left"][r], rec["bottom"][r], rec["right"][r]) == li.rf.box(
                i, j, 28, 28
            )
    patch = dj.crop_patch({k: v[0] for k, v in rec.items()}, fashion)
    t, lft, b, rt = (int(rec[k][0]) for k in ("top", "left", "bottom", "right"))
    assert patch.size == (rt - lft, b - t)
    assert np.isfinite(res["channels"]["selectivity"]).sum() > 0


def _max_diff_to_method(out: Path, net, method: str, params: dict) -> float:
    """Largest |job map - accel.run(method, net, img, **params).data| over every image of a job output; the
    target and its probability must be the method's too."""
    res = dj.open_job_output(out)
    assert len(res["maps"]) > 0
    worst = 0.0
    for k, path in enumerate(res["paths"]):
        ref = accel.run(method, net, accel.open_image(path), **params)
        assert res["maps"][k].shape == ref.data.shape
        worst = max(worst, float(np.abs(res["maps"][k] - ref.data).max()))
        assert int(res["targets"][k]) == ref.meta["target"]["index"]
        assert float(res["scores"][k]) == np.float32(ref.meta["target"]["probability"])
    return worst


NON_DEFAULT = {"window": 7, "stride": 4, "baseline": "mean", "score": "logit", "engine": "plain"}


def test_explain_occlusion_equals_the_method(crops: Path, tmp_path: Path, fashion) -> None:
    seen: list[float] = []
    s = dj.run_job(
        "explain",
        crops,
        tmp_path,
        model=get_net("fashion_cnn"),
        limit=6,
        window=7,
        stride=7,
        shard_size=4,
        progress=lambda frac, msg: seen.append(frac),
    )
    assert s["ok"] == 6 and s["shards"] == 2
    # the method's own progress (through its observer) arrives inside each shard, in order
    assert len(seen) > 2 + 6 and seen == sorted(seen) and seen[-1] == 1.0
    res = dj.open_job_output(tmp_path)
    assert res["maps"].shape == (6, 28, 28)
    assert res["config"]["method"] == "occlusion"
    assert res["config"]["params"]["baseline"] == "zero" and res["config"]["params"]["window"] == 7
    # per image, exactly the map accel.run gives with the same parameters (both explain the predicted class)
    assert _max_diff_to_method(tmp_path, fashion, "occlusion", {"window": 7, "stride": 7}) == 0.0


def test_explain_method_parameters_come_from_its_declaration(
    crops: Path, tmp_path: Path, fashion, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every occlusion parameter reaches the job from the command line (a name the job also uses, such as the
    method's `engine`, as --method-engine), validated by the registry; the maps are the method's maps."""
    argv = ["job", "explain", str(crops), "--out", str(tmp_path / "cli"), "-m", "fashion_cnn", "--limit", "5"]
    argv += [
        "--shard-size",
        "3",
        "--method",
        "occlusion",
        "--window",
        "7",
        "--stride",
        "4",
        "--baseline",
        "mean",
    ]
    argv += ["--score", "logit", "--method-engine", "plain", "--json"]
    assert cli.main(argv) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (s["ok"], s["shards"]) == (5, 2)
    got = dj.open_job_output(tmp_path / "cli")["config"]["params"]
    assert {k: got[k] for k in NON_DEFAULT} == NON_DEFAULT
    assert _max_diff_to_method(tmp_path / "cli", fashion, "occlusion", NON_DEFAULT) == 0.0
    # Python: the same parameters as keywords, or in params= (the form for `engine`), give the same output
    dj.run_job(
        "explain",
        crops,
        tmp_path / "py",
        model=fashion,
        limit=5,
        shard_size=3,
        window=7,
        stride=4,
        params={"baseline": "mean", "score": "logit", "engine": "plain"},
    )
    a, b = dj.open_job_output(tmp_path / "cli"), dj.open_job_output(tmp_path / "py")
    assert np.array_equal(a["maps"], b["maps"]) and a["config"] == b["config"]
    # refused by the method's declaration or by the method itself, before any image is read
    for kw, match in (
        ({"steps": 5}, r"occlusion: unknown parameter\(s\) \['steps'\]"),
        ({"baseline": "grey"}, "occlusion: parameter 'baseline' must be one of"),
        ({}, "occlusion: window 32 is larger than the 28x28 input"),  # the method's default window
        ({"window": 7, "method": "filters"}, "explain runs attribution methods"),
    ):
        with pytest.raises(accel.BadInput, match=match):
            dj.run_job("explain", crops, tmp_path / "bad", model=fashion, limit=2, **kw)
        assert not list((tmp_path / "bad").glob("shards/*.parquet"))


def test_explain_default_parameters_equal_the_method_on_lite0(tmp_path: Path, lite0) -> None:
    """The method's defaults (window 32, stride 16, zero baseline, probability) on a 224-pixel ImageNet model."""
    from accel.images import foolbox_imagenet

    items = foolbox_imagenet()
    if not items:
        pytest.skip("foolbox photos are not installed")
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(f"{p}\n" for p, _ in items[:2]))
    s = dj.run_job("explain", lst, tmp_path / "out", model=lite0, method="occlusion")
    assert s["ok"] == 2
    params = dj.open_job_output(tmp_path / "out")["config"]["params"]
    assert (params["window"], params["stride"], params["baseline"], params["score"]) == (
        32,
        16,
        "zero",
        "probability",
    )
    assert _max_diff_to_method(tmp_path / "out", lite0, "occlusion", {}) == 0.0


def test_explain_gradcam_job(crops: Path, tmp_path: Path, fashion) -> None:
    dj.run_job("explain", crops, tmp_path, model=get_net("fashion_cnn"), limit=3, method="gradcam")
    res = dj.open_job_output(tmp_path)
    img = accel.open_image(res["paths"][2])
    ref = accel.run("gradcam", fashion, img, target=int(res["targets"][2]))
    np.testing.assert_allclose(res["maps"][2], ref.data, atol=1e-5)
    assert fashion.labels[int(res["targets"][2])] == fashion.predict(img, top=1)[0][0]  # the predicted class
    assert res["maps"][2].max() > 0
    assert _max_diff_to_method(tmp_path, fashion, "gradcam", {}) == 0.0


def test_uris_and_unreachable_files_are_errors_not_crashes(crops: Path, tmp_path: Path) -> None:
    good = dj.list_inputs(crops).paths[:2]
    lst = tmp_path / "uris.txt"
    lst.write_text(f"file://{good[0]}\n{good[1]}\nhttp://127.0.0.1:9/nothing.jpg\n{tmp_path}/missing.png\n")
    s = dj.run_job("embed", lst, tmp_path / "out", model=get_net("fashion_cnn"))
    assert (s["ok"], s["errors"]) == (2, 2)
    errs = dict(dj.open_job_output(tmp_path / "out")["errors"])
    assert "cannot be fetched" in errs["http://127.0.0.1:9/nothing.jpg"]
    assert "not found" in errs[f"{tmp_path}/missing.png"]


def test_resume_after_failure_skips_finished_shards(crops: Path, tmp_path: Path, local_embed: Path) -> None:
    class Boom(RuntimeError):
        pass

    def fail_after_3(k: int, rec: dict) -> None:
        if k == 2:
            raise Boom

    with pytest.raises(Boom):
        dj.run_job(
            "embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD, on_shard=fail_after_3
        )
    first = _shard_state(tmp_path)
    assert len(first) == 3
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "running"
    partial = dj.open_job_output(tmp_path)
    assert not partial["complete"] and len(partial["paths"]) + len(partial["errors"]) == 3 * SHARD

    s = dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD)
    assert (s["skipped_shards"], s["computed_shards"]) == (3, 4)
    after = _shard_state(tmp_path)
    assert {k: after[k] for k in first} == first  # finished shards untouched
    _same_embed(tmp_path, local_embed)

    # a damaged shard is detected by its hash and computed again; a different job is refused
    victim = tmp_path / "shards" / "embed-00004.parquet"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    s = dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD)
    assert (s["skipped_shards"], s["computed_shards"]) == (6, 1)
    _same_embed(tmp_path, local_embed)
    with pytest.raises(accel.BadInput, match="different job.*--overwrite"):
        dj.run_job("embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD, limit=50)


def _same_embed(a: Path, b: Path, atol: float = 0.0) -> None:
    x, y = dj.open_job_output(a), dj.open_job_output(b)
    assert list(x["paths"]) == list(y["paths"])
    assert np.array_equal(x["labels"], y["labels"]) and np.array_equal(x["index"], y["index"])
    np.testing.assert_allclose(x["embeddings"], y["embeddings"], atol=max(atol, 1e-7), rtol=0)
    assert np.array_equal(x["preds"], y["preds"])
    assert x["errors"] == y["errors"]


def test_killed_job_resumes_without_redoing_shards(crops: Path, tmp_path: Path, local_embed: Path) -> None:
    """SIGKILL a local job (in a subprocess) after its first shards; the rerun reuses them byte for byte."""
    out = tmp_path / "job"
    script = textwrap.dedent(
        f"""
        import sys, time
        from accel import jobs as dj
        def slow(k, rec):
            print("shard", k, "ray" in sys.modules, flush=True)
            time.sleep(0.5)
        dj.run_job("embed", {str(crops)!r}, {str(out)!r}, model="fashion_cnn", shard_size={SHARD}, on_shard=slow)
        print("finished", flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("shard 1"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert lines and lines[0] == "shard 0 False", lines  # the local engine never imports Ray
    assert "finished" not in lines
    before = _shard_state(out)
    assert 2 <= len(before) < 7
    s = dj.run_job("embed", crops, out, model=get_net("fashion_cnn"), shard_size=SHARD)
    assert s["skipped_shards"] == len(before) and s["computed_shards"] == 7 - len(before)
    after = _shard_state(out)
    assert {k: after[k] for k in before} == before
    assert not list((out / "shards").glob(".*.tmp"))
    _same_embed(out, local_embed)


def test_cli_job_embed(crops: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(
        [
            "job",
            "embed",
            str(crops),
            "--out",
            str(tmp_path),
            "--model",
            "fashion_cnn",
            "--limit",
            "30",
            "--shard-size",
            "10",
            "--json",
        ]
    )
    assert rc == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (s["images"], s["shards"], s["ok"]) == (30, 3, 30)
    assert dj.open_job_output(tmp_path)["embeddings"].shape == (30, 128)
    assert (
        cli.main(["job", "embed", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-m", "fashion_cnn"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(accel.BadInput, match="not a convlens job output"):
        dj.open_job_output(tmp_path / "o2")


def test_lite0_embed_on_labelled_imagenet_photos(tmp_path: Path, lite0) -> None:
    """A real classifier on the 20 labelled ImageNet photos, given as a Parquet manifest with labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from accel.images import foolbox_imagenet

    items = foolbox_imagenet()
    if not items:
        pytest.skip("foolbox photos are not installed")
    man = tmp_path / "val.parquet"
    pq.write_table(
        pa.table({"path": [str(p) for p, _ in items], "label": [int(lab) for _, lab in items]}), man
    )
    s = dj.run_job("embed", man, tmp_path / "out", model=lite0, shard_size=8, batch_size=8)
    assert (s["ok"], s["shards"]) == (len(items), 3)
    res = dj.open_job_output(tmp_path / "out")
    assert res["embeddings"].shape == (len(items), 1280)
    acc = float((res["preds"] == res["labels"]).mean())
    assert acc >= 0.7, acc  # about 17/20 top-1 for this model
    ref = accel.runner(lite0, ["embedding"], backend="torch").run(_images(list(res["paths"][:2])))
    np.testing.assert_allclose(res["embeddings"][:2], ref["embedding"], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------------------ Ray


@needs_ray
def test_ray_embed_equals_local(ray_session, crops: Path, tmp_path: Path, local_embed: Path) -> None:
    s = dj.run_job(
        "embed", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD, engine="ray", concurrency=2
    )
    assert s["engine"] == "ray" and s["actors"] == 2 and s["computed_shards"] == 7
    _same_embed(tmp_path, local_embed, atol=1e-5)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert {r["engine"] for r in m["shards"].values()} == {"ray"}
    assert {r["backend"] for r in m["shards"].values()} == {"onnxruntime"}


@needs_ray
def test_ray_max_patches_resumes_a_local_run_and_equals_it(
    ray_session, crops: Path, tmp_path: Path, local_patches: Path
) -> None:
    """A local run stopped after 2 shards is finished by the Ray engine; the merged top-k equals the local one."""

    def stop(k: int, rec: dict) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dj.run_job(
            "max_patches", crops, tmp_path, model=get_net("fashion_cnn"), shard_size=SHARD, k=5, on_shard=stop
        )
    before = _shard_state(tmp_path)
    s = dj.run_job(
        "max_patches",
        crops,
        tmp_path,
        model=get_net("fashion_cnn"),
        shard_size=SHARD,
        k=5,
        engine="ray",
        concurrency=1,
    )
    assert (s["skipped_shards"], s["computed_shards"]) == (2, 5)
    assert {k: _shard_state(tmp_path)[k] for k in before} == before
    a, b = dj.open_job_output(tmp_path), dj.open_job_output(local_patches)
    for key in ("channel", "rank", "path", "index", "i", "j", "top", "left", "bottom", "right"):
        assert np.array_equal(a["records"][key], b["records"][key]), key
    np.testing.assert_allclose(a["records"]["score"], b["records"]["score"], atol=1e-5)
    np.testing.assert_allclose(a["channels"]["selectivity"], b["channels"]["selectivity"], atol=1e-4)


@needs_ray
def test_ray_explain_equals_the_method(ray_session, crops: Path, tmp_path: Path, fashion, lite0) -> None:
    """On the Ray engine too, every map is exactly accel.run's with the same parameters: a non-default baseline
    and score on fashion_cnn, and the method's defaults on lite0."""
    s = dj.run_job(
        "explain",
        crops,
        tmp_path / "fashion",
        model=fashion,
        limit=6,
        shard_size=3,
        engine="ray",
        concurrency=2,
        params=NON_DEFAULT,
    )
    assert (s["engine"], s["ok"], s["computed_shards"]) == ("ray", 6, 2)
    assert _max_diff_to_method(tmp_path / "fashion", fashion, "occlusion", NON_DEFAULT) == 0.0

    from accel.images import foolbox_imagenet

    items = foolbox_imagenet()
    if not items:
        pytest.skip("foolbox photos are not installed")
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(f"{p}\n" for p, _ in items[:2]))
    s = dj.run_job("explain", lst, tmp_path / "lite0", model=lite0, engine="ray", concurrency=1)
    assert (s["engine"], s["ok"]) == ("ray", 2)
    assert _max_diff_to_method(tmp_path / "lite0", lite0, "occlusion", {}) == 0.0
