"""Run store: round trips, cache keys, concurrent writers, a writer killed mid-write, atomic artifacts, exports."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import accel
from accel.result import Result
from accel.store import RunStore, StoreError, image_key, request_key

ROOT = Path(__file__).resolve().parent.parent


def _img(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _map_result(seed: int = 0) -> Result:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((16, 16)).astype(np.float32)
    meta = {
        "wall_s": 0.25,
        "backend": "torch",
        "passes": 3,
        "target": 281,
        "curve": np.linspace(0, 1, 5),
        "nan_value": float("nan"),
        "pair": (1, 2),
        "np_scalar": np.float32(1.5),
    }
    extras = {"snap": _img(seed + 1, 8), "losses": [3.0, 2.0, 1.0], "stack": np.arange(6).reshape(2, 3)}
    return Result("map", data, meta, _img(seed), extras)


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "store")


def test_round_trip_rebuilds_the_result(store: RunStore) -> None:
    res = _map_result(1)
    params = {"layer": "features.3", "target": 281, "alpha": 0.5}
    rid = store.put(res, model="m", method="saliency", params=params, image_key=image_key(res.image))
    run = RunStore(store.root).get(rid)  # a fresh store object: nothing cached in memory
    assert (run.model, run.method, run.kind, run.params) == ("m", "saliency", "map", params)
    assert abs(run.created - time.time()) < 60
    got = run.result
    assert got.kind == "map" and got.data.dtype == np.float32
    np.testing.assert_array_equal(got.data, res.data)
    np.testing.assert_array_equal(np.asarray(got.image), np.asarray(res.image))
    assert got.meta["wall_s"] == 0.25 and got.meta["passes"] == 3 and got.meta["backend"] == "torch"
    np.testing.assert_allclose(got.meta["curve"], np.linspace(0, 1, 5))
    assert np.isnan(got.meta["nan_value"]) and got.meta["pair"] == (1, 2) and got.meta["np_scalar"] == 1.5
    np.testing.assert_array_equal(np.asarray(got.extras["snap"]), np.asarray(res.extras["snap"]))
    np.testing.assert_array_equal(got.extras["stack"], np.arange(6).reshape(2, 3))
    assert got.extras["losses"] == [3.0, 2.0, 1.0]
    assert run.summary["passes"] == 3 and "curve" not in run.summary
    assert run.rendered() is not None and run.link == f"?run={rid}"


def test_loss_history_survives_the_store(store: RunStore) -> None:
    """Result.losses (typed records, named parts, a non-finite value) reopen equal; runs stored before the field
    existed reopen with an empty history."""
    losses = [
        accel.LossRecord(0, 4.5, {"class": 4.0, "tv": 0.5}),
        accel.LossRecord(1, 3.25),
        accel.LossRecord(2, float("inf"), {"class": float("nan")}),
    ]
    res = Result("image", np.zeros((8, 8, 3), np.float32), losses=losses)
    rid = store.put(res, model="m", method="class_viz", params={}, image_key=None)
    got = RunStore(store.root).get(rid).result.losses
    assert [(r.step, r.value) for r in got[:2]] == [(0, 4.5), (1, 3.25)]
    assert got[0].parts == {"class": 4.0, "tv": 0.5} and got[1].parts == {}
    assert got[2].value == float("inf") and np.isnan(got[2].parts["class"])
    assert all(isinstance(r, accel.LossRecord) for r in got)
    old = store.put(_map_result(), model="m", method="saliency", params={}, image_key=None)
    manifest = store.runs_dir / old / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["losses"]
    manifest.write_text(json.dumps(m))
    assert RunStore(store.root).get(old).result.losses == []


def test_list_filter_and_delete(store: RunStore) -> None:
    ids = [
        store.put(_map_result(i), model=m, method=meth, params={"i": i}, image_key=None)
        for i, (m, meth) in enumerate([("a", "saliency"), ("a", "gradcam"), ("b", "saliency")])
    ]
    assert [r.id for r in store.list()] == ids[::-1]  # newest first
    assert {r.id for r in store.list(method="saliency")} == {ids[0], ids[2]}
    assert [r.id for r in store.list(method="saliency", model="b")] == [ids[2]]
    assert store.facets() == {"method": ["gradcam", "saliency"], "model": ["a", "b"]}
    assert store.delete(ids[0]) and not store.delete(ids[0])
    assert not (store.runs_dir / ids[0]).exists()
    with pytest.raises(StoreError, match="no run"):
        store.get(ids[0])
    assert store.count() == 2


def test_bad_run_ids_are_refused_without_touching_paths(store: RunStore) -> None:
    for bad in ("../../etc/passwd", "", "ABC", "0123456789abcdeg", "0" * 17):
        with pytest.raises(StoreError, match="not a run id"):
            store.get(bad)
    assert issubclass(StoreError, accel.BadInput)


def test_cache_keys_and_lookup(store: RunStore) -> None:
    a, b = _img(0), _img(0)
    assert image_key(a) == image_key(b) != image_key(_img(1))
    assert image_key(a) != image_key(a.convert("L"))
    k1 = request_key("h", "saliency", {"target": 1, "layer": "x"}, image_key(a))
    assert k1 == request_key("h", "saliency", {"layer": "x", "target": 1}, image_key(b))  # order-free
    assert k1 != request_key("h", "saliency", {"target": 2, "layer": "x"}, image_key(a))
    assert k1 != request_key("h2", "saliency", {"target": 1, "layer": "x"}, image_key(a))
    assert k1 != request_key("h", "gradcam", {"target": 1, "layer": "x"}, image_key(a))
    assert store.lookup(k1) is None
    rid = store.put(_map_result(), model="m", method="saliency", params={}, image_key=image_key(a), key=k1)
    assert store.lookup(k1) == rid
    # a run whose files vanished is not offered as a cache hit
    import shutil

    shutil.rmtree(store.runs_dir / rid)
    assert store.lookup(k1) is None
    with pytest.raises(StoreError, match="missing or damaged"):
        _ = store.get(rid).result


def test_concurrent_writers_threads(store: RunStore) -> None:
    n_threads, per = 8, 5
    out: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            s = RunStore(store.root)
            out[t] = [
                s.put(
                    Result("image", np.full((4, 4, 3), t * per + i, np.uint8)),
                    model=f"m{t}",
                    method="class_viz",
                    params={"t": t, "i": i},
                    image_key=None,
                )
                for i in range(per)
            ]
            s.put_record("bench", {"t": t}, title=f"t{t}")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert store.count() == n_threads * per
    for t, ids in out.items():
        for i, rid in enumerate(ids):
            run = store.get(rid)
            assert run.params == {"t": t, "i": i} and run.model == f"m{t}"
            assert int(run.result.data[0, 0, 0]) == t * per + i  # no mixed artifacts
    assert sorted(r["payload"]["t"] for r in store.records("bench")) == list(range(n_threads))


_WRITER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from accel.result import Result
from accel.store import RunStore
s = RunStore({store!r})
i = 0
while True:
    data = np.random.default_rng(i).standard_normal((512, 512)).astype(np.float32)  # 1 MiB per run
    rid = s.put(Result("map", data, {{"i": i}}), model="m", method="saliency", params={{"i": i}}, image_key=None)
    print(rid, i, flush=True)
    i += 1
"""


def test_writer_killed_mid_write_loses_no_committed_run(tmp_path: Path) -> None:
    root = tmp_path / "store"
    RunStore(root)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(root=str(ROOT), store=str(root))],
        stdout=subprocess.PIPE,
        text=True,
    )
    committed: list[tuple[str, int]] = []
    try:
        assert proc.stdout is not None
        while len(committed) < 6:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            rid, i = line.split()
            committed.append((rid, int(i)))
        time.sleep(0.013)  # land somewhere inside the next put
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = RunStore(root)
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for rid, i in committed:
        res = store.get(rid).result
        assert res.meta["i"] == i and res.data.shape == (512, 512)
        np.testing.assert_array_equal(
            res.data, np.random.default_rng(i).standard_normal((512, 512)).astype(np.float32)
        )
    # every listed run is complete (a run is either fully there or absent)
    for run in store.list(limit=1000):
        assert run.result.data.shape == (512, 512)
    # the store keeps working after the crash
    rid = store.put(_map_result(), model="m", method="x", params={}, image_key=None)
    assert store.get(rid).method == "x"


def test_artifacts_are_atomic_and_disk_full_is_a_clear_error(store: RunStore, monkeypatch) -> None:
    real_replace = os.replace

    def full(src, dst):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreError, match="No space left on device.*free some disk space"):
        store.put(_map_result(), model="m", method="saliency", params={}, image_key=None)
    monkeypatch.setattr(os, "replace", real_replace)
    # nothing half-written is left: no row, no run folder, no temporary folder
    assert store.count() == 0
    assert list(store.runs_dir.iterdir()) == []

    real_save = Image.Image.save

    def fail_on_render(self, fp, *a, **k):  # noqa: ANN001
        if str(fp).endswith("rendered.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", fail_on_render)
    with pytest.raises(accel.BadInput, match="cannot write the artifacts"):
        store.put(_map_result(), model="m", method="saliency", params={}, image_key=None)
    assert store.count() == 0 and list(store.runs_dir.iterdir()) == []


def test_records_for_benchmarks(store: RunStore) -> None:
    a = store.put_record("bench", {"rows": [{"workload": "saliency", "torch_ms": 12.5}]}, title="quick")
    store.put_record("other", {"x": 1})
    b = store.put_record("bench", {"rows": [], "v": np.float32(2.0)}, title="second")
    recs = store.records("bench")
    assert [r["id"] for r in recs] == [b, a]
    assert recs[1]["payload"]["rows"][0]["torch_ms"] == 12.5 and recs[0]["payload"]["v"] == 2.0
    assert recs[1]["title"] == "quick"
    assert store.delete_record(a) and [r["id"] for r in store.records("bench")] == [b]
    with pytest.raises(accel.BadInput):
        store.put_record("", {})


def test_exports(store: RunStore) -> None:
    ids = [
        store.put(_map_result(i), model="lite0", method="gradcam", params={"target": i}, image_key=None)
        for i in range(2)
    ]
    page = store.export_html(ids).decode("utf-8")
    assert page.startswith("<!doctype html>") and page.count("<section") == 2
    # input, result, its extra picture and the map's colour bar, for each run
    assert page.count("data:image/png;base64,") == 8 and page.count("alt='colour bar'") == 2
    assert "http://" not in page and "https://" not in page  # self-contained
    assert all(i in page for i in ids)
    z = zipfile.ZipFile(io.BytesIO(store.export_zip(ids)))
    manifest = json.loads(z.read("manifest.json"))["convlens_runs"]
    assert [m["id"] for m in manifest] == ids and manifest[1]["params"] == {"target": 1}
    for m in manifest:
        assert m["files"] and all(f.endswith(".png") for f in m["files"])
        for f in m["files"]:
            Image.open(io.BytesIO(z.read(f))).verify()
    with pytest.raises(accel.BadInput, match="nothing to export"):
        store.export_zip([])


def test_save_upload_uses_generated_names(store: RunStore, monkeypatch) -> None:
    p = store.save_upload(b"\x89PNG fake", ".PNG")
    assert p.parent == store.uploads_dir and p.name.startswith("upload-") and p.suffix == ".png"
    assert p.read_bytes() == b"\x89PNG fake"
    assert store.save_upload(b"\x89PNG fake", "png") == p  # same content, same file
    for bad in ("/../../x.sh", ".sh", "../evil.pt/.."):
        with pytest.raises(accel.BadInput, match="unsupported upload type"):
            store.save_upload(b"x", bad)
    with pytest.raises(accel.BadInput, match="empty"):
        store.save_upload(b"", ".pt")
    monkeypatch.setenv("CONVLENS_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(accel.BadInput, match="CONVLENS_MAX_UPLOAD_MB"):
        store.save_upload(b"x" * 5000, ".pt")


def test_default_root_follows_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CONVLENS_STORE", str(tmp_path / "elsewhere"))
    s = RunStore()
    assert s.root == tmp_path / "elsewhere" and s.db_path.is_file()
    with sqlite3.connect(s.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------------------------------------------- schema 2


_V1_SCHEMA = """
CREATE TABLE runs(
    id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT, method TEXT, kind TEXT,
    params TEXT, image_key TEXT, key TEXT, title TEXT, summary TEXT);
CREATE TABLE records(id TEXT PRIMARY KEY, created REAL NOT NULL, kind TEXT NOT NULL, title TEXT, payload TEXT);
"""


def _legacy_store(root: Path, tmp: Path) -> str:
    """A schema-1 store as the previous release wrote it: the old table, a run folder whose manifest has no
    owner, title or keys. Returns the run id."""
    donor = RunStore(tmp / "donor")
    rid = donor.put(_map_result(3), model="m", method="gradcam", params={"t": 3}, image_key="ik", key="k3")
    (root / "runs").mkdir(parents=True)
    shutil.copytree(donor.runs_dir / rid, root / "runs" / rid)
    manifest = json.loads((root / "runs" / rid / "manifest.json").read_text())
    for k in ("title", "owner", "private", "image_key", "key", "summary"):
        manifest.pop(k)
    manifest["version"] = 1
    (root / "runs" / rid / "manifest.json").write_text(json.dumps(manifest))
    with sqlite3.connect(root / "runs.sqlite") as con:
        con.executescript(_V1_SCHEMA)
        con.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
            (rid, 1e9, "m", "gradcam", "map", '{"t": 3}', "ik", "k3", "old title", '{"wall_s": 0.25}'),
        )
        con.execute("PRAGMA user_version=1")
    return rid


def test_owner_and_private_round_trip_into_row_and_manifest(store: RunStore) -> None:
    rid = store.put(
        _map_result(), model="m", method="saliency", params={}, image_key=None, owner="a@x", private=True
    )
    run = store.get(rid)
    assert (run.owner, run.private, run.damaged) == ("a@x", True, None)
    manifest = json.loads((store.runs_dir / rid / "manifest.json").read_text())
    assert manifest["owner"] == "a@x" and manifest["private"] is True and manifest["title"] == "saliency on m"
    assert store.put(_map_result(), model="m", method="x", params={}, image_key=None) != rid
    assert store.get(store.list()[0].id).owner == "local"  # the default owner: no sign-in
    for bad in ("", "  ", None):
        with pytest.raises(accel.BadInput, match="owner must be a non-empty string"):
            store.put(_map_result(), model="m", method="x", params={}, image_key=None, owner=bad)  # type: ignore[arg-type]


def test_schema_1_store_is_migrated_and_its_manifests_learn_the_row(tmp_path: Path) -> None:
    root = tmp_path / "old"
    rid = _legacy_store(root, tmp_path)
    store = RunStore(root)
    run = store.get(rid)
    assert (run.owner, run.private, run.title, run.key) == ("local", False, "old title", "k3")
    with sqlite3.connect(store.db_path) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
        assert cols[-2:] == ["owner", "private"] and con.execute("PRAGMA user_version").fetchone()[0] == 2
    manifest = json.loads((store.runs_dir / rid / "manifest.json").read_text())
    assert (manifest["owner"], manifest["title"], manifest["key"]) == ("local", "old title", "k3")
    assert run.result.data.shape == (16, 16) and store.lookup("k3", user="local") == rid
    # migrating twice (another process, or a second start) changes nothing
    RunStore.unopened(root).open_schema()
    assert [r.id for r in RunStore(root).list(user="local")] == [rid]
