"""Data roots (issue 17 item 3): a shared dashboard reads datasets, style images, masks and checkpoints only from
packaged sets, the session's uploads and folders under CONVLENS_DATA_ROOTS. Outside, `..`, symlink escapes and
missing files all get the same refusal, which never echoes file contents or server paths; the dashboard's dataset
control offers only allowed choices (real app, AppTest), and uploaded zips are unpacked safely within caps."""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from accel import dataroots
from accel.errors import BadInput, ResourceLimit
from tests.fuzzkit import byte_inputs, fuzz

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
SECRET = b"TOPSECRET-a1b2c3"


def _png(color: tuple[int, int, int] = (200, 30, 30), size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A data root "photos" (cats/, dogs/, a mask, a checkpoint, two symlinks leading out) and a private folder."""
    root = tmp_path / "shared" / "photos"
    for sub, color in (("cats", (200, 30, 30)), ("dogs", (30, 200, 30))):
        (root / sub).mkdir(parents=True)
        for i in range(3):
            (root / sub / f"{sub}{i}.png").write_bytes(_png(color, 32 + i))
    (root / "mask.png").write_bytes(_png((255, 255, 255)))
    (root / "head.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / ".hidden").mkdir()
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.png").write_bytes(_png() + SECRET)
    (private / "notes.txt").write_bytes(SECRET * 10)
    (root / "escape").symlink_to(private, target_is_directory=True)
    (root / "escape.png").symlink_to(private / "secret.png")
    monkeypatch.setenv("CONVLENS_DATA_ROOTS", str(root))
    return {"root": root, "private": private, "tmp": tmp_path}


def _template(msg: str) -> str:
    """The refusal with the quoted user text taken out (what must be identical for every refused path)."""
    return re.sub(r"^(\w+) (['\"]).*?\2 is not available", r"\1 <X> is not available", msg)


def _refusal(fn, *args, **kw) -> str:
    with pytest.raises(dataroots.PathRefused) as e:
        fn(*args, **kw)
    assert isinstance(e.value, BadInput)
    return str(e.value)


def test_inside_paths_resolve_and_show_root_relative_names(tree: dict[str, Path]) -> None:
    root = tree["root"]
    a = root / "cats" / "cats0.png"
    assert dataroots.resolve_file(str(a), suffixes=dataroots.IMAGE_SUFFIXES) == a.resolve()
    assert dataroots.resolve_file("photos/cats/cats0.png") == a.resolve()
    assert dataroots.resolve_folder("photos/dogs") == (root / "dogs").resolve()
    assert dataroots.resolve_folder("photos") == root.resolve()
    assert dataroots.display_path(a) == "photos/cats/cats0.png"
    assert dataroots.display_path(root) == "photos"
    assert dataroots.display_path(tree["private"] / "secret.png") is None
    # a `..` that stays inside is fine: the decision is on the real path
    assert dataroots.resolve_file(str(root / "dogs" / ".." / "cats" / "cats1.png")) == (
        root / "cats" / "cats1.png"
    )


def test_every_refusal_is_one_message_whether_or_not_the_path_exists(tree: dict[str, Path]) -> None:
    root, private, tmp = tree["root"], tree["private"], tree["tmp"]
    cases = {
        "outside, exists": str(private / "secret.png"),
        "outside, missing": str(private / "missing.png"),
        "outside, a text file": str(private / "notes.txt"),
        "symlink file escape": str(root / "escape.png"),
        "symlink folder escape": "photos/escape/secret.png",
        "dot-dot escape (name)": "photos/../../private/secret.png",
        "dot-dot escape (absolute)": str(root / "cats" / ".." / ".." / ".." / "private" / "secret.png"),
        "inside, missing": "photos/cats/nope.png",
        "inside, missing folder": str(root / "nope" / "x.png"),
        "relative without a root": "cats/cats0.png",
        "system file": "/etc/passwd.png",
        "NUL byte": "photos/cats\x00.png",
    }
    messages = {name: _refusal(dataroots.resolve_file, p) for name, p in cases.items()}
    templates = {_template(m) for m in messages.values()}
    assert len(templates) == 1, messages
    (only,) = templates
    assert only == (
        "file <X> is not available on this server: pick a packaged one, upload one, or choose one under the data "
        "roots (photos)"
    )
    for m in messages.values():  # only the user's own text is quoted back: no contents, no other server path
        assert SECRET.decode() not in m and "PNG" not in m and "\\x89" not in m
        assert str(tmp) not in _template(m)
    # the very same string before and after the file appears: the same message (nothing is checked first)
    later = private / "later.png"
    before = _refusal(dataroots.resolve_file, str(later))
    later.write_bytes(_png())
    assert _refusal(dataroots.resolve_file, str(later)) == before
    # folders: the same rule
    assert _template(_refusal(dataroots.resolve_folder, str(private), what="file")) == only
    assert _template(_refusal(dataroots.resolve_folder, "photos/escape", what="file")) == only


def test_refusal_without_configured_roots_names_the_setting(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVLENS_DATA_ROOTS")
    inside = tree["root"] / "cats" / "cats0.png"
    msg = _refusal(dataroots.resolve_file, str(inside), what="dataset")
    assert msg.endswith("(none are configured: an administrator sets CONVLENS_DATA_ROOTS)")
    assert dataroots.list_folders() == [] and dataroots.list_files(dataroots.IMAGE_SUFFIXES) == []


def test_wrong_suffix_is_refused_by_name_without_opening(tree: dict[str, Path]) -> None:
    notes = tree["root"] / "notes.txt"
    notes.write_bytes(SECRET)
    msg = _refusal(dataroots.resolve_file, str(notes), suffixes=dataroots.IMAGE_SUFFIXES)
    assert "must be one of .bmp, .gif" in msg and SECRET.decode() not in msg


def test_pickers_list_only_what_is_inside(tree: dict[str, Path]) -> None:
    assert [n for n, _ in dataroots.list_folders()] == ["photos", "photos/cats", "photos/dogs"]
    files = [n for n, _ in dataroots.list_files(dataroots.IMAGE_SUFFIXES)]
    assert files == [
        "photos/mask.png",
        "photos/cats/cats0.png",
        "photos/cats/cats1.png",
        "photos/cats/cats2.png",
        "photos/dogs/dogs0.png",
        "photos/dogs/dogs1.png",
        "photos/dogs/dogs2.png",
    ]
    assert [n for n, _ in dataroots.list_files(dataroots.CHECKPOINT_SUFFIXES)] == ["photos/head.safetensors"]


def test_display_and_redaction_hide_server_paths(tree: dict[str, Path]) -> None:
    root, private, tmp = tree["root"], tree["private"], tree["tmp"]
    assert dataroots.display_spec(f"folder:{root / 'cats'}#limit=5") == "photos/cats#limit=5"
    assert dataroots.display_spec(f"folder:{private}") == "(a server folder)"
    assert dataroots.display_spec("fashion_mnist:test#limit=300") == "fashion_mnist:test#limit=300"
    msg = (
        f"image folder '{private / 'x'}' does not exist; see {root / 'cats' / 'cats0.png'}. Also http://h/a/b"
    )
    red = dataroots.redact(msg)
    assert str(tmp) not in red
    assert red == (
        "image folder '(server path)' does not exist; see photos/cats/cats0.png. Also http://h/a/b"
    )
    up = dataroots.new_session_dir()
    try:
        folder = dataroots.extract_zip(
            _zip({"a/x1.png": _png()} | {f"a/x{i}.png": _png() for i in range(2, 4)}), up
        )
        assert dataroots.display_path(folder).startswith("upload:") and str(up) not in dataroots.redact(
            str(folder)
        )
    finally:
        import shutil

        shutil.rmtree(up, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- uploads


def _zip(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def test_zip_upload_unpacks_only_images_and_nothing_escapes(tmp_path: Path) -> None:
    from accel import datasets

    dest = tmp_path / "session" / "datasets"
    data = _zip(
        {
            "set/cats/a.png": _png(),
            "set/cats/b.png": _png((1, 2, 3)),
            "set/dogs/c.png": _png((9, 9, 9)),
            "set/dogs/readme.txt": b"not an image",
            "set/../../evil.png": _png(),
            "/abs.png": _png(),
            "set/.hidden.png": _png(),
            "__MACOSX/set/._a.png": b"junk",
        },
        symlinks={"set/cats/link.png": "/etc/passwd"},
    )
    folder = dataroots.extract_zip(data, dest, "my set.zip")
    assert folder.parent.parent == dest and folder.name == "set"  # a zip of one folder: that folder
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == [
        f"{folder.parent.name}/set/cats/a.png",
        f"{folder.parent.name}/set/cats/b.png",
        f"{folder.parent.name}/set/dogs/c.png",
    ]
    assert not list(tmp_path.rglob("evil.png")) and not list(tmp_path.rglob("abs.png"))
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    ds = datasets.get(f"folder:{folder}")
    assert len(ds) == 3 and ds.classes == ["cats", "dogs"]
    # the same archive again: the same folder, nothing re-extracted
    assert dataroots.extract_zip(data, dest, "my set.zip") == folder


def test_zip_caps_and_damaged_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "d"
    three = _zip({f"x/{i}.png": _png() for i in range(3)})
    monkeypatch.setenv("CONVLENS_UPLOAD_ZIP_FILES", "2")
    with pytest.raises(
        ResourceLimit, match=r"holds 3 images, over the cap of 2 \(CONVLENS_UPLOAD_ZIP_FILES\)"
    ):
        dataroots.extract_zip(three, dest, "three.zip")
    monkeypatch.delenv("CONVLENS_UPLOAD_ZIP_FILES")
    # a compression bomb: 64 MiB of zeros named like an image, refused from its declared size before writing
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * (64 << 20))
    assert len(bomb.getvalue()) < 200_000
    monkeypatch.setenv("CONVLENS_UPLOAD_ZIP_MB", "8")
    with pytest.raises(
        ResourceLimit, match=r"unpack to 64\.0 MiB, over the cap of 8 MiB \(CONVLENS_UPLOAD_ZIP_MB\)"
    ):
        dataroots.extract_zip(bomb.getvalue(), dest, "bomb.zip")
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))
    # damaged or empty archives: a clear message naming the user's file, never its bytes
    for data, expect in (
        (SECRET * 50, "'junk.zip' is not a readable .zip archive (BadZipFile)"),
        (three[: len(three) // 2], "'junk.zip' is not a readable .zip archive (BadZipFile)"),
        (_zip({"notes.txt": SECRET}), "'junk.zip' holds no images"),
    ):
        with pytest.raises(BadInput) as e:
            dataroots.extract_zip(data, dest, "junk.zip")
        assert str(e.value).startswith(expect) and SECRET.decode() not in str(e.value)


def test_file_upload_is_kept_by_content_with_a_safe_name(tmp_path: Path) -> None:
    p = dataroots.save_upload(
        _png(), tmp_path, "../../we ird<name>.PNG", dataroots.IMAGE_SUFFIXES, what="style"
    )
    assert (
        p.parent == tmp_path and p.suffix == ".png" and re.fullmatch(r"[0-9a-f]{10}-we_ird_name\.png", p.name)
    )
    with pytest.raises(BadInput, match=r"style 'x\.exe' must be one of \.bmp"):
        dataroots.save_upload(b"MZ", tmp_path, "x.exe", dataroots.IMAGE_SUFFIXES, what="style")


def test_fuzz_zip_uploads(tmp_path: Path) -> None:
    seeds = [
        _zip({"a/1.png": _png(), "a/2.png": _png((1, 1, 1))}),
        _zip({"c/x/1.png": _png(), "c/y/2.jpg": b"\xff\xd8\xff"}),
        _zip({"1.png": _png()}, symlinks={"l.png": "/etc/passwd"}),
    ]
    counter = iter(range(10**6))

    def target(data: bytes) -> object:
        out = dataroots.extract_zip(data, tmp_path / str(next(counter)), "fuzz.zip")
        assert str(out).startswith(str(tmp_path))  # never outside the destination
        return out

    rep = fuzz("upload_zip", target, byte_inputs(seeds), 150)
    rep.assert_clean()
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------------------------------------------- dashboard


def _unescape(text: str) -> str:
    """Markdown-escaped text as the reader sees it."""
    return re.sub(r"\\(.)", r"\1", text)


def _app(page: str, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=240)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(f"views/{page}.py").run()
    return at


def test_dashboard_dataset_control_offers_only_allowed_choices(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_STORE", str(tree["tmp"] / "store"))
    at = _app("embeddings", model="fashion_cnn")
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="emb.embedding.dataset@fashion_cnn")
    options = list(box.options)
    assert "photos (data root)" in options and "photos/cats (data root)" in options
    assert "photos/dogs (data root)" in options
    assert options[0].startswith("the model's own") and "foolbox imagenet photos (20)" in options
    assert not any(str(tree["tmp"]) in o or "private" in o or "escape" in o for o in options)
    assert not [t for t in at.text_input if "dataset" in (t.label or "")]  # no free-text dataset field
    # pick a root folder and compute: the run uses it, the page names it by its root-relative name only
    at.selectbox(key="emb.embedding.projection").set_value("pca")
    box.set_value(f"folder:{tree['root'].resolve()}")  # the raw value behind "photos (data root)"
    at.number_input(key="emb.embedding.limit").set_value(6)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    caps = _unescape("\n".join(c.value for c in at.caption))
    assert "6 points" in caps and "photos" in caps and str(tree["tmp"]) not in caps


def test_dashboard_zip_upload_becomes_a_dataset_shown_by_its_name(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_STORE", str(tree["tmp"] / "store"))
    at = _app("embeddings", model="fashion_cnn")
    data = _zip(
        {
            f"mine/{c}/{i}.png": _png(col, 30 + i)
            for c, col in (("a", (9, 0, 0)), ("b", (0, 9, 0)))
            for i in range(4)
        }
    )
    at.file_uploader(key="emb.embedding.dataset.upload").set_value(
        ("[x](http://evil.test) set.zip", data, "application/zip")
    )
    at.selectbox(key="emb.embedding.projection").set_value("pca")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    caps = _unescape("\n".join(c.value for c in at.caption))
    assert "8 points" in caps and "upload:" in caps
    assert "/tmp" not in caps and dataroots.upload_base().name not in caps
    # the uploaded set is offered again by its name (from the next rerun on), never by its server folder
    at.run()
    opts = list(at.selectbox(key="emb.embedding.dataset@fashion_cnn").options)
    assert "upload: [x](http://evil.test) set.zip" in opts and not any(
        str(dataroots.upload_base()) in o for o in opts
    )


def test_dashboard_refuses_crafted_paths_with_one_message(tree: dict[str, Path]) -> None:
    """Defence in depth: a value that did not come from the pickers (a crafted session) is refused before a run."""
    from streamlit.testing.v1 import AppTest

    def script() -> None:
        import streamlit as st

        import accel
        from dashboard.widgets import check_path_params

        private, root = st.session_state["private"], st.session_state["root"]
        trials = [
            ("embedding", {"dataset": f"folder:{private}"}),
            ("embedding", {"dataset": private}),
            ("embedding", {"dataset": "photos/escape"}),
            ("embedding", {"dataset": "photos/../../private"}),
            ("embedding", {"dataset": f"folder:{root}/cats"}),
            ("style_transfer", {"style": f"strokes,{private}/secret.png"}),
            ("style_transfer", {"style": f"mosaic,{root}/mask.png"}),
            ("saliency_grabcut", {"gt_mask": f"{root}/escape.png"}),
            ("scouter", {"checkpoint": f"{private}/notes.txt"}),
            ("scouter", {"checkpoint": "photos/head.safetensors"}),
        ]
        for name, params in trials:
            try:
                out = check_path_params(accel.get(name), params)
                st.text(f"OK {next(iter(out.values()))}")
            except accel.BadInput as e:
                st.text(f"REFUSED {type(e).__name__}: {e}")

    at = AppTest.from_function(script, default_timeout=120)
    at.session_state["private"] = str(tree["private"])
    at.session_state["root"] = str(tree["root"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    lines = [t.value for t in at.text]
    root = tree["root"].resolve()
    assert lines[4] == f"OK folder:{root / 'cats'}"
    assert lines[6] == f"OK mosaic,{root / 'mask.png'}"
    assert lines[9] == f"OK {root / 'head.safetensors'}"
    refused = [lines[i] for i in (0, 1, 2, 3, 5, 7, 8)]
    assert all(r.startswith("REFUSED PathRefused: ") for r in refused), refused
    kinds = {_template(r.removeprefix("REFUSED PathRefused: ")) for r in refused}
    assert kinds == {
        f"{what} <X> is not available on this server: pick a packaged one, upload one, or choose one under the "
        "data roots (photos)"
        for what in ("dataset", "images", "image", "checkpoint")
    }
    assert not any(SECRET.decode() in r for r in refused)


@pytest.fixture(autouse=True)
def _no_leftover_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONVLENS_UPLOAD_ZIP_FILES", "CONVLENS_UPLOAD_ZIP_MB"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("CONVLENS_OFFLINE", "1")


def test_uploaded_names_with_markdown_and_html_show_literally(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Class folders named like a Markdown link and an HTML image: captions, labels and the scatter's legend and
    hover text show them as text (escaped), and the neighbours run on the uploaded set is allowed."""
    import json

    monkeypatch.setenv("CONVLENS_STORE", str(tree["tmp"] / "store"))
    link, tag = "![a](evil.test)", "<img src=x onerror=alert(1)>"
    data = _zip(
        {
            f"{c}/{i}.png": _png(col, 30 + i)
            for c, col in ((link, (9, 0, 0)), (tag, (0, 9, 0)))
            for i in range(6)
        }
    )
    at = _app("embeddings", model="fashion_cnn")
    at.file_uploader(key="emb.embedding.dataset.upload").set_value(("names.zip", data, "application/zip"))
    at.selectbox(key="emb.embedding.projection").set_value("pca")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    at.session_state["emb_sel"] = 0
    at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    shown_md = [str(x.value) for x in (*at.markdown, *at.caption)]
    shown_md += [c for im in at.get("image") for c in im.captions]
    assert any("evil" in s for s in shown_md)  # the names are there ...
    for (
        s
    ) in shown_md:  # ... but never as a live link, image or tag (a backslash-escaped character is literal)
        live = re.sub(r"\\.", "", s)
        assert "](evil" not in live and "<img" not in live and "![" not in live, s
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in spec["data"] if t.get("name")]
    assert html_escaped(tag) in names and tag not in names
    assert all(
        html_escaped(tag) in t.get("text", [""])[0]
        for t in spec["data"]
        if t.get("name") == html_escaped(tag)
    )


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)
