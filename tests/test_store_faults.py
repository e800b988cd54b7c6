"""The run store degrades, never falls over (issue 16 item 5): a store that cannot be opened (garbage, truncated,
read-only, full disk), damaged rows and damaged artifacts, a lost or emptied index beside its run folders; through
the API (`check`, `rebuild`, clear `StoreError`s) and through the real dashboard (AppTest: every page renders, an
error box or a sidebar message, computing still works). Plus byte-level fuzzing of the index and of manifests."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import accel
from accel.result import Result
from accel.store import RunStore, StoreError
from tests.fuzzkit import byte_inputs, fuzz

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
REBUILD_HINT = "convlens store rebuild"


def _result(i: int = 0) -> Result:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return Result(
        "map", rng.random((24, 24)).astype(np.float32), {"wall_s": 0.1 * (i + 1), "backend": "torch"}, img
    )


def _fill(store: RunStore, n: int, **kw) -> list[str]:
    return [
        store.put(
            _result(i), model="m", method="saliency", params={"i": i}, image_key=None, title=f"run {i}", **kw
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------------- filesystems


def _can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at `path` (root only; the test skips elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def _fill_disk(path: Path) -> None:
    with contextlib.suppress(OSError), open(path / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@dataclass
class Broken:
    """A store folder in a given fault state, and what the refusal must say."""

    root: Path
    expect: str


def _garbage(tmp: Path) -> Broken:
    root = tmp / "garbage"
    root.mkdir()
    (root / "runs.sqlite").write_bytes(b"this is not an SQLite file, just words\n" * 200)
    return Broken(root, "not a database")


def _truncated(tmp: Path) -> Broken:
    root = tmp / "truncated"
    store = RunStore(root)
    for i in range(40):  # long titles: the index spans many pages
        store.put(
            _result(i % 3), model="m", method="saliency", params={"i": i}, image_key=None, title="t" * 500
        )
    with sqlite3.connect(store.db_path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = store.db_path.stat().st_size
    assert size > 16384
    with open(store.db_path, "r+b") as f:
        f.truncate(size // 3)
    from accel import store as store_mod

    store_mod.forget_opened()  # a new server process would see the damage at start-up
    return Broken(root, "malformed")


# ---------------------------------------------------------------------------------------------------- the API


@pytest.mark.parametrize("make", [_garbage, _truncated], ids=["garbage", "truncated"])
def test_unopenable_index_is_a_clear_error_and_check_reports_it(tmp_path: Path, make) -> None:
    b = make(tmp_path)
    with pytest.raises(StoreError) as e:
        RunStore(b.root).list()
    msg = str(e.value)
    assert b.expect in msg and REBUILD_HINT in msg and "convlens store check" in msg
    rep = RunStore.unopened(b.root).check()
    assert rep.index.startswith("damaged:") and not rep.ok
    assert rep.lines()[-1].startswith("verdict:") and REBUILD_HINT in rep.lines()[-1]
    # rebuild keeps the damaged file and brings back every run folder
    folders = len(list((b.root / "runs").iterdir())) if (b.root / "runs").exists() else 0
    rb = RunStore.unopened(b.root).rebuild()
    assert rb.indexed == folders and rb.kept_aside and (b.root / rb.kept_aside).is_file()
    assert RunStore(b.root).count() == folders and RunStore(b.root).check().ok


@pytest.mark.parametrize("state", ["zero-length", "missing", "new database", "no rows"])
def test_lost_index_beside_run_folders_is_rebuilt_not_recreated_empty(tmp_path: Path, state: str) -> None:
    root = tmp_path / "store"
    store = RunStore(root)
    ids = _fill(store, 3, owner="a@x")
    store.set_private(ids[1], True, user="a@x")
    rid_b = store.put(
        _result(9), model="m2", method="gradcam", params={}, image_key="ik", key="k9", owner="b@y"
    )
    if state == "no rows":
        with sqlite3.connect(store.db_path) as con:
            con.execute("DELETE FROM runs")
    else:
        for p in root.glob("runs.sqlite*"):
            p.unlink()
    if state == "zero-length":
        (root / "runs.sqlite").write_bytes(b"")
    if state == "new database":  # a valid SQLite file without tables
        sqlite3.connect(root / "runs.sqlite").execute("CREATE TABLE other(x)").connection.close()
    from accel import store as store_mod

    store_mod.forget_opened()  # as a fresh server process
    again = RunStore(root)
    assert again.notice and "4 run folder(s)" in again.notice
    assert again.count() == 4
    runs = {r.id: r for r in again.list()}
    assert [runs[i].title for i in ids] == ["run 0", "run 1", "run 2"]
    assert runs[ids[1]].private and not runs[ids[0]].private  # privacy survives the lost index
    assert (runs[rid_b].owner, runs[rid_b].key, runs[rid_b].image_key) == ("b@y", "k9", "ik")
    assert again.lookup("k9", user="b@y") == rid_b
    with pytest.raises(StoreError, match="that you can open"):
        again.get(ids[1], user="b@y")
    np.testing.assert_array_equal(again.get(ids[2]).result.data, _result(2).data)


def test_fresh_store_still_starts_empty(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "new")
    assert s.notice is None and s.count() == 0 and s.check().ok


def test_damaged_row_is_listed_marked_and_repaired_by_rebuild(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    ids = _fill(store, 3)
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET params='{not json', created='yesterday' WHERE id=?", (ids[1],))
        con.execute("UPDATE runs SET summary='[1, 2]' WHERE id=?", (ids[2],))
    runs = {r.id: r for r in store.list()}
    assert len(runs) == 3
    assert runs[ids[1]].damaged == "created is not a time; params are not valid JSON"
    assert runs[ids[1]].params == {} and runs[ids[1]].created == 0.0
    assert runs[ids[2]].damaged == "summary is not a JSON object" and runs[ids[0]].damaged is None
    assert runs[ids[1]].result.data.shape == (24, 24)  # its files are fine
    rep = store.check()
    assert sorted(rid for rid, _ in rep.damaged_rows) == sorted(ids[1:]) and rep.problems == 2
    rb = store.rebuild()
    assert rb.indexed == 3 and rb.kept_aside is None  # a healthy index is repaired in place
    fixed = store.get(ids[1])
    assert fixed.damaged is None and fixed.params == {"i": 1} and fixed.created > 1e9
    assert store.check().ok


def test_damaged_and_missing_artifacts_are_reported_never_fatal(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    ids = _fill(store, 4)
    (store.runs_dir / ids[0] / "rendered.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    data = store.runs_dir / ids[1] / "data.npy"
    data.write_bytes(data.read_bytes()[:100])
    (store.runs_dir / ids[2] / "input.png").unlink()
    (store.runs_dir / ids[3] / "manifest.json").write_text("{half")
    rep = store.check()
    assert rep.rows == rep.folders == 4 and not rep.orphan_folders and not rep.damaged_rows
    damaged = dict(rep.damaged_artifacts)
    assert damaged[ids[0]].startswith("rendered.png: ") and damaged[ids[1]].startswith("data.npy: ")
    assert damaged[ids[3]] == "manifest.json: not valid JSON (line 1, column 2)"
    assert rep.missing_artifacts == [(ids[2], "input.png")]
    assert rep.problems == 4 and "delete and recompute" in rep.lines()[-1]
    assert len(store.list()) == 4  # listing never opens artifacts
    for rid, name in ((ids[1], "data.npy"), (ids[2], "input.png"), (ids[3], "manifest.json")):
        with pytest.raises(StoreError) as e:
            _ = store.get(rid).result
        assert f"({name}: " in str(e.value) and str(store.root) not in str(e.value)
    with pytest.raises(StoreError, match="rendered picture is damaged"):
        store.get(ids[0]).rendered()
    assert store.get(ids[0]).result.data.shape == (24, 24)  # the map itself is intact
    page = store.export_html([ids[0], ids[1]]).decode()
    assert page.count("<section") == 2 and "result picture damaged" in page and page.count("base64,") == 4
    assert page.count("alt='colour bar'") == 1  # the intact map's; the run whose data.npy is damaged has none
    import io
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(store.export_zip([ids[0]])))
    entry = json.loads(z.read("manifest.json"))["convlens_runs"][0]
    assert entry["damaged"] == ["rendered.png"] and entry["files"] == [f"{ids[0]}/input.png"]


def test_orphan_folders_and_vanished_folders_are_reconciled_by_rebuild(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    ids = _fill(store, 3)
    with sqlite3.connect(store.db_path) as con:
        con.execute("DELETE FROM runs WHERE id=?", (ids[0],))  # a row lost, its folder kept
    import shutil

    shutil.rmtree(store.runs_dir / ids[1])  # a folder lost, its row kept
    (store.runs_dir / "0123456789abcdef").mkdir()  # a folder with nothing in it
    rep = store.check()
    assert rep.orphan_folders == sorted([ids[0], "0123456789abcdef"])
    assert rep.missing_artifacts == [(ids[1], "run folder"), ("0123456789abcdef", "manifest.json")]
    rb = store.rebuild()
    assert rb.dropped == [ids[1]] and rb.indexed == 2
    assert rb.skipped == [("0123456789abcdef", "manifest.json: missing")]
    assert {r.id for r in store.list()} == {ids[0], ids[2]}
    assert any("dropped 1 row" in line for line in rb.lines())


def test_damaged_record_payload_does_not_break_the_list(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "s")
    good = store.put_record("bench", {"rows": []}, title="ok")
    bad = store.put_record("bench", {"rows": []}, title="bad")
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE records SET payload='{oops' WHERE id=?", (bad,))
    recs = {r["id"]: r for r in store.records("bench")}
    assert recs[bad]["payload"] == {} and recs[bad]["damaged"] == "payload is not valid JSON"
    assert recs[good]["payload"] == {"rows": []} and "damaged" not in recs[good]


def test_read_only_and_full_disk_are_clear_errors(tmp_path: Path) -> None:
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a real read-only / full filesystem")
    with _tmpfs(tmp_path / "ro", "4m") as fs:
        _fill(RunStore(fs / "store"), 2)
        from accel import store as store_mod

        store_mod.forget_opened()
        _remount_ro(fs)
        with pytest.raises(StoreError) as e:
            RunStore(fs / "store")
        assert "writable" in str(e.value) and "CONVLENS_STORE" in str(e.value)
        rep = RunStore.unopened(fs / "store").check()  # a read-only store can still be inspected
        assert rep.rows == 2 and rep.folders == 2
    with _tmpfs(tmp_path / "full", "256k") as fs:
        _fill_disk(fs)
        with pytest.raises(StoreError) as e:
            RunStore(fs / "store")
        assert "disk" in str(e.value) and "free some disk space" in str(e.value)
    with _tmpfs(tmp_path / "fills", "1m") as fs:
        store = RunStore(fs / "store")
        rid = _fill(store, 1)[0]
        _fill_disk(fs)
        with pytest.raises(StoreError, match="free some disk space"):
            _fill(store, 1)
        (fs / "filler").unlink()
        assert [r.id for r in store.list()] == [rid] and store.check().ok  # nothing half-written


# ---------------------------------------------------------------------------------------------------- fuzzing


def test_fuzz_index_and_manifest_bytes(tmp_path: Path) -> None:
    """Arbitrary and mutated runs.sqlite and manifest.json bytes: opening, listing, reading a result, check and
    rebuild give a result or a BadInput (StoreError), in bounded time."""
    seed_root = tmp_path / "seed"
    seed = RunStore(seed_root)
    rid = _fill(seed, 3)[0]
    with sqlite3.connect(seed.db_path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db_seed = seed.db_path.read_bytes()
    manifest_seed = (seed.runs_dir / rid / "manifest.json").read_bytes()
    n = [0]

    def fresh() -> Path:
        n[0] += 1
        root = tmp_path / f"f{n[0]}"
        import shutil

        shutil.copytree(seed_root / "runs", root / "runs")
        return root

    def index_target(data: bytes) -> None:
        root = fresh()
        (root / "runs.sqlite").write_bytes(data)
        try:
            store = RunStore(root)
            for r in store.list():
                _ = r.params, r.summary
            store.get(rid).result  # noqa: B018
        finally:
            RunStore.unopened(root).check()
            RunStore.unopened(root).rebuild()
            assert RunStore(root).count() == 3

    def manifest_target(data: bytes) -> None:
        root = fresh()
        (root / "runs" / rid / "manifest.json").write_bytes(data)
        RunStore.unopened(root).rebuild()
        store = RunStore(root)
        store.check()
        try:
            store.get(rid).result  # noqa: B018
        finally:
            store.export_html([r.id for r in store.list()])

    rep = fuzz("store index", index_target, byte_inputs([db_seed]), 60)
    rep.assert_clean()
    rep = fuzz("store manifest", manifest_target, byte_inputs([manifest_seed]), 120)
    rep.assert_clean()


# ---------------------------------------------------------------------------------------------------- the dashboard


@pytest.fixture(scope="module", autouse=True)
def fake_inspect():
    """A tiny registered inspect technique, so computing on the Filters page is quick; removed afterwards."""
    from dataclasses import dataclass as dc

    from accel.registry import _REGISTRY, param, register

    @dc
    class P:
        tiles: int = param(2, "number of tiles", min=1, max=8)

    def tiles(net, img, p, obs):
        a = np.zeros((8 * p.tiles, 8, 3), np.uint8)
        a[::2] = 200
        return Result("grid", a, {"backend": "torch"})

    register("t_fault_tiles", "inspect", P, needs_image=False)(tiles)
    yield
    _REGISTRY.pop("t_fault_tiles", None)


def _app(monkeypatch, root: Path, page: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CONVLENS_STORE", str(root))
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def _all_text(at) -> str:
    parts = [
        str(x.value)
        for x in (
            *at.markdown,
            *at.caption,
            *at.info,
            *at.warning,
            *at.error,
            *at.success,
            *at.subheader,
            *at.title,
        )
    ]
    parts += [str(x.value) for x in at.sidebar.warning] + [str(x.value) for x in at.sidebar.error]
    return "\n".join(parts)


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.parametrize("make", [_garbage, _truncated], ids=["garbage", "truncated"])
def test_dashboard_runs_without_a_store(tmp_path: Path, monkeypatch, make) -> None:
    b = make(tmp_path)
    at = _app(monkeypatch, b.root)  # Home
    _no_exception(at)
    assert not at.error
    side = " ".join(w.value for w in at.sidebar.warning)
    assert "Run store unavailable" in side and "not saved or shared" in side and b.expect in side
    assert len(at.get("progress")) == 5  # Home still predicts
    assert str(b.root) not in _all_text(at) and "$CONVLENS_STORE" in side  # the server folder is never shown
    at.switch_page("views/runs.py").run()
    _no_exception(at)
    assert "The run store is unavailable" in at.error[0].value and REBUILD_HINT in _all_text(at)
    # computing still works: the result is shown and kept in this session, marked as not saved
    at.switch_page("views/filters.py").run()
    at.radio(key="flt_method").set_value("t_fault_tiles").run()
    at.button[0].click().run()
    _no_exception(at)
    assert at.main.get("image") and not at.error
    assert any("not saved or shared" in c.value for c in at.caption)
    at.switch_page("views/runs.py").run()
    _no_exception(at)
    assert at.dataframe and at.dataframe[0].value["method"].tolist() == ["t_fault_tiles"]
    for page in ("compare", "benchmarks", "synthesis"):
        at.switch_page(f"views/{page}.py").run()
        _no_exception(at)
    # a shared link cannot open while the store is down: a message, not a crash
    from streamlit.testing.v1 import AppTest

    at2 = AppTest.from_file(APP, default_timeout=240)
    at2.query_params["run"] = "0123456789abcdef"
    at2.run()
    _no_exception(at2)
    assert "unavailable" in at2.error[0].value


def test_dashboard_survives_damaged_rows_and_artifacts(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path / "s")
    ids = _fill(store, 3)
    with sqlite3.connect(store.db_path) as con:
        con.execute("UPDATE runs SET params='{broken' WHERE id=?", (ids[0],))
    (store.runs_dir / ids[1] / "rendered.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (store.runs_dir / ids[2] / "data.npy").write_bytes(b"\x93NUMPY garbage")
    at = _app(monkeypatch, store.root, "runs")
    _no_exception(at)
    assert not at.error
    table = at.dataframe[0].value
    status = dict(zip(table["id"], table["status"], strict=True))
    assert status[ids[0]] == "damaged row: params are not valid JSON"
    assert any(c.value == "damaged picture" for c in at.caption)  # the corrupt thumbnail
    # opening the run with damaged data: an error box for that run, the page and the others keep working
    key = at.dataframe[0].key
    at.session_state[key] = {"selection": {"rows": [list(table["id"]).index(ids[2])], "columns": []}}
    at.run()
    _no_exception(at)
    assert "stored files are missing or damaged (data.npy: " in at.error[0].value
    assert str(store.root) not in _all_text(at)
    at.run()  # the damage is now marked in the table
    table = at.dataframe[0].value
    assert dict(zip(table["id"], table["status"], strict=True))[ids[2]] == "damaged files"
    key = at.dataframe[0].key
    at.session_state[key] = {"selection": {"rows": [list(table["id"]).index(ids[0])], "columns": []}}
    at.run()
    _no_exception(at)
    assert not at.error and any("index row is damaged" in w.value for w in at.warning)


def test_dashboard_rebuilds_an_emptied_index_and_says_so(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path / "s")
    ids = _fill(store, 2)
    for p in store.root.glob("runs.sqlite*"):
        p.unlink()
    (store.root / "runs.sqlite").write_bytes(b"")
    from accel import store as store_mod

    store_mod.forget_opened()
    at = _app(monkeypatch, store.root, "runs")
    _no_exception(at)
    assert sorted(at.dataframe[0].value["id"]) == sorted(ids)
    assert any("rebuilt it from 2 run folder(s)" in i.value for i in at.info)


def test_dashboard_on_a_full_disk_keeps_computing(tmp_path: Path, monkeypatch) -> None:
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a real full filesystem")
    with _tmpfs(tmp_path / "full", "2m") as fs:
        store = RunStore(fs / "store")
        _fill(store, 1)
        at = _app(monkeypatch, store.root, "filters")
        _fill_disk(fs)
        at.radio(key="flt_method").set_value("t_fault_tiles").run()
        at.button[0].click().run()
        _no_exception(at)
        assert at.main.get("image") and not at.error
        note = " ".join(c.value for c in at.caption)
        assert "not saved or shared" in note and "free some disk space" in note
        at.switch_page("views/runs.py").run()
        _no_exception(at)  # SQLite cannot even read a WAL index on a full disk: an error box that says so
        assert "the disk may be full" in at.error[0].value and str(store.root) not in _all_text(at)
        (fs / "filler").unlink()
        at.run()
        _no_exception(at)
        assert len(at.dataframe[0].value) == 1 and not at.error  # space again: the stored run is listed


def test_upload_limit_agrees_with_the_cap(tmp_path: Path, monkeypatch) -> None:
    from streamlit import config as st_config

    before = st_config.get_option("server.maxUploadSize")
    monkeypatch.setenv("CONVLENS_MAX_UPLOAD_MB", "3.5")
    try:
        at = _app(monkeypatch, tmp_path / "s")
        _no_exception(at)
        assert st_config.get_option("server.maxUploadSize") == 4
        at.sidebar.radio(key="img_source").set_value("Upload")
        at._finished_page_script_hash = ""  # rerun as the same page (see test_dashboard._home_rerun)
        at._page_hash = ""
        at.run()
        up = at.sidebar.get("file_uploader")[0]
        assert up.proto.max_upload_size_mb == 4
        monkeypatch.setenv("CONVLENS_MAX_UPLOAD_MB", "1024")
        at.run()
        assert st_config.get_option("server.maxUploadSize") == 1024  # the default cap, above Streamlit's 200
    finally:
        st_config.set_option("server.maxUploadSize", before, "test")


def test_refused_uploads_name_the_users_file(tmp_path: Path, monkeypatch) -> None:
    store = RunStore(tmp_path / "s")
    with pytest.raises(accel.BadInput, match="'holiday.png': the uploaded file is empty"):
        store.save_upload(b"", ".png", name="holiday.png")
    monkeypatch.setenv("CONVLENS_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(accel.ResourceLimit) as e:
        store.save_upload(b"x" * 5000, ".pt", name="weights.pt")
    assert str(e.value).startswith("'weights.pt' is 5000 bytes, over the 0.001 MiB upload cap")
    assert "CONVLENS_MAX_UPLOAD_MB" in str(e.value) and "upload-" not in str(e.value)
    monkeypatch.delenv("CONVLENS_MAX_UPLOAD_MB")
    # the dashboard: a checkpoint refused by the loader is named by the user's file, never its storage name
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CONVLENS_STORE", str(store.root))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model"] = "(upload a checkpoint or .onnx)"
    at.run()
    at.sidebar.file_uploader[0].set_value(("my model.onnx", b"\x08\x01garbage", "application/octet-stream"))
    at._finished_page_script_hash = ""
    at._page_hash = ""
    at.run()
    _no_exception(at)
    errs = " ".join(e.value for e in at.sidebar.error)
    assert "my model.onnx" in errs and "upload-" not in errs and str(store.root) not in errs
    assert list(store.uploads_dir.iterdir())  # it was saved under a generated name
