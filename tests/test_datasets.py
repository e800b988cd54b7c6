"""accel.datasets: streaming folders (with corrupt files), packaged photo sets, Fashion-MNIST, and spec strings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

import accel.images
from accel import datasets
from accel.errors import BadInput
from accel.fashion_mnist import find_fashion_mnist
from accel.zoo import Backbone, Preproc

N_PER_CLASS = 100
CLASSES = ("ants", "bees", "cats")


def tiny_net(size: int = 32, channels: str = "RGB") -> Backbone:
    """A one-conv backbone: enough to exercise preprocessing without loading weights."""
    cin = 1 if channels == "L" else 3
    pre = Preproc(size, size, (0.5,) * cin, (0.25,) * cin, 1.0, channels)
    return Backbone("tiny", nn.Sequential(nn.Conv2d(cin, 4, 3)), pre, None, has_head=False)


def _png(rng: np.random.Generator, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size + 5, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    """Three class folders of 100 small images each, plus five corrupt files; returns (root, good, bad)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    good, bad = set(), set()
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(N_PER_CLASS):
            if i % 2:
                p = root / c / f"{i:03d}.png"
                p.write_bytes(_png(rng, 20 + i % 7))
            else:
                p = root / c / f"{i:03d}.jpg"
                p.write_bytes(_jpeg(rng, 20 + i % 5))
            good.add(str(p))
    corrupt = {
        root / "ants" / "truncated.jpg": _jpeg(rng, 40)[:200],
        root / "bees" / "text.png": b"this is not a picture at all\n" * 5,
        root / "bees" / "empty.jpg": b"",
        root / "cats" / "doc.jpeg": b"%PDF-1.4 fake document",
        root / "cats" / "badheader.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
    }
    for p, data in corrupt.items():
        p.write_bytes(data)
        bad.add(str(p))
    (root / "cats" / "notes.txt").write_text("ignored: not an image extension")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(_png(rng, 10))
    return root, good, bad


def test_folder_streams_all_good_files_and_lists_corrupt(folder: tuple[Path, set[str], set[str]]) -> None:
    root, good, bad = folder
    ds = datasets.ImageFolder(root)
    assert ds.classes == list(CLASSES)
    assert len(ds) == len(good) + len(bad)  # candidates by extension; corrupt ones are only found by decoding
    assert (ds.skipped.other, ds.skipped.loose) == (1, 0) and ds.skipped.other_examples == ["cats/notes.txt"]
    seen = {}
    for img, label, key in ds:
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        seen[key] = label
    assert set(seen) == good
    assert {p for p, _ in ds.errors} == bad
    assert all(msg for _, msg in ds.errors)
    for key, label in seen.items():
        assert CLASSES[label] == Path(key).parent.name
    # a second pass reports the same errors (not doubled)
    list(ds)
    assert len(ds.errors) == len(bad)


def test_folder_is_lazy_and_streams(
    folder: tuple[Path, set[str], set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, good, bad = folder
    calls = []
    real = accel.images.open_image

    def counting(src, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append(src)
        return real(src, **kw)

    monkeypatch.setattr(accel.images, "open_image", counting)
    ds = datasets.get(str(root))
    assert len(ds) == len(good) + len(bad) and calls == []  # listing never decodes
    it = iter(ds)
    next(it)
    assert len(calls) == 1  # one image opened for one item: nothing read ahead
    it2 = ds.batches(tiny_net(), 16)
    x, labels, ids = next(it2)
    assert x.shape == (16, 3, 32, 32) and len(ids) == 16
    assert len(calls) <= 1 + 16 + len(bad)  # only the first batch's files were opened


def test_folder_batches_match_preprocess(folder: tuple[Path, set[str], set[str]]) -> None:
    root, good, _ = folder
    net = tiny_net()
    ds = datasets.ImageFolder(root)
    total, first = 0, None
    for x, labels, ids in ds.batches(net, 64):
        assert x.dtype == np.float32 and x.shape[1:] == (3, 32, 32) and len(x) <= 64
        assert len(labels) == len(ids) == len(x) and labels.dtype == np.int64
        assert set(labels.tolist()) <= {0, 1, 2}
        first = first or (x, ids)
        total += len(x)
    assert total == len(good)
    x, ids = first
    for i in (0, 5, 17):
        ref = net.preprocess(accel.images.open_image(ids[i])).numpy()[0]
        np.testing.assert_array_equal(x[i], ref)


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(7):
        (tmp_path / f"{i}.png").write_bytes(_png(rng, 12))
    (tmp_path / "broken.gif").write_bytes(b"GIF89a\x00")
    ds = datasets.get(f"folder:{tmp_path}")
    items = list(ds)
    assert ds.classes is None and len(items) == 7 and all(lab is None for _, lab, _ in items)
    assert [Path(p).name for p, _ in ds.errors] == ["broken.gif"]
    _, labels, _ = next(ds.batches(tiny_net(), 100))
    assert (labels == -1).all()
    assert ds.load(items[3].id).id == items[3].id
    with pytest.raises(BadInput):
        ds.load("/nope.png")
    assert len(ds.take(3)) == 3 and len(list(ds.take(3))) == 3


def test_packaged_photos() -> None:
    try:
        ds = datasets.get("foolbox:imagenet")
    except BadInput as e:
        pytest.skip(str(e))
    items = list(ds)
    assert len(ds) == len(items) == 20
    assert all(isinstance(lab, int) and 0 <= lab < 1000 for _, lab, _ in items)
    assert ds.label_name(items[6].label) == "jeep"
    assert ds.load(items[2].id).label == items[2].label
    assert len(datasets.get("foolbox:imagenet:5")) == 5
    cifar = datasets.get("foolbox:cifar10")
    assert cifar.classes[3] == "cat"
    samples = datasets.get("samples")
    assert len(samples) >= 5 and all(lab is None for _, lab, _ in samples)


fmnist = pytest.mark.skipif(find_fashion_mnist() is None, reason="Fashion-MNIST files are not installed")


@fmnist
def test_fashion_mnist_stream_and_fast_batches() -> None:
    ds = datasets.get("fashion_mnist:test:300")
    assert len(ds) == 300 and ds.classes[0] == "T-shirt/top"
    img, label, key = next(iter(ds))
    assert img.size == (28, 28) and img.mode == "RGB" and 0 <= label < 10 and key == "fashion_mnist:test:0"
    net = tiny_net(28, "L")
    fast = list(ds.batches(net, 128))
    slow = list(datasets.Dataset.batches(ds, net, 128))  # the generic PIL path
    assert [len(b.x) for b in fast] == [128, 128, 44]
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a.x, b.x, atol=1e-6)
        assert a.ids == b.ids and (a.labels == b.labels).all()
    # a 28x28 dataset for a 32 px RGB network goes through the backbone's own resize
    x, _, _ = next(ds.batches(tiny_net(32), 8))
    assert x.shape == (8, 3, 32, 32)
    assert ds.load("fashion_mnist:test:42").label == int(ds.arrays()[1][42])
    with pytest.raises(BadInput):
        ds.load("fashion_mnist:test:9999")  # beyond the limit of 300
    assert len(datasets.get("fashion_mnist")) == 10_000
    assert len(datasets.get("fashion_mnist:train:50")) == 50


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "fashion_mnist:valid",
        "fashion_mnist:test:0",
        "fashion_mnist:test:x:3",
        "foolbox:nope",
        "samples:abc",
        "/definitely/not/here",
        "folder:",
        "imagenet:2:3",
    ],
)
def test_bad_specs(spec: str) -> None:
    with pytest.raises(BadInput):
        datasets.get(spec)


def test_spec_round_trip_and_file_is_not_folder(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    f.write_bytes(_png(np.random.default_rng(2), 8))
    with pytest.raises(BadInput, match="not a folder"):
        datasets.get(str(f))
    ds = datasets.get(str(tmp_path), limit=1)
    again = datasets.get(ds.spec)
    assert again.spec == ds.spec and len(again) == 1
    with pytest.raises(BadInput):
        datasets.ImageFolder(tmp_path, limit=0)
    assert datasets.default_spec(tiny_net(28, "L")) == "fashion_mnist:test"
    assert datasets.default_spec(tiny_net()) == "foolbox:imagenet"
    samples = datasets.get("samples")
    first = next(iter(samples))
    sub = samples.subset([first.id, first.id])
    assert len(sub) == 2 and [i.id for i in sub] == [first.id, first.id]


# ---------------------------------------------------------------------------------------------------------------
# formats and skipped files


def _mode_for(ext: str) -> str:
    return {".pbm": "1", ".pgm": "L", ".pfm": "F"}.get(ext, "RGB")


def test_image_extensions_come_from_pillow_for_every_decodable_format() -> None:
    registered = Image.registered_extensions()
    formats = set(accel.images.decodable_formats())
    assert accel.images.image_extensions() == datasets.IMAGE_EXTENSIONS
    assert {ext for ext, fmt in registered.items() if fmt in formats} == datasets.IMAGE_EXTENSIONS
    assert {
        ".png",
        ".jpg",
        ".jpeg",
        ".jfif",
        ".webp",
        ".tif",
        ".tiff",
        ".qoi",
        ".pgm",
        ".bmp",
    } <= datasets.IMAGE_EXTENSIONS
    assert (
        not {".ico", ".eps", ".tga", ".pdf", ".txt"} & datasets.IMAGE_EXTENSIONS
    )  # formats we refuse to decode
    if "AVIF" in formats:
        assert ".avif" in datasets.IMAGE_EXTENSIONS


def test_folder_takes_a_file_of_every_decodable_extension(tmp_path: Path) -> None:
    """One real file per extension (saved by Pillow in the format its extension names): all listed, all decoded."""
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    written = set()
    for ext in sorted(datasets.IMAGE_EXTENSIONS):
        path = tmp_path / f"img{ext.replace('.', '_')}{ext}"
        im = base.convert(_mode_for(ext)) if _mode_for(ext) != "F" else base.convert("L").convert("F")
        im.save(path)
        written.add(str(path))
    ds = datasets.ImageFolder(tmp_path)
    assert len(ds) == len(written) and ds.skipped.count == 0 and ds.notes() == []
    items = list(ds)
    assert ds.errors == [], ds.errors
    assert {key for _, _, key in items} == written
    assert all(img.size == (16, 12) and img.mode == "RGB" for img, _, _ in items)


def test_folder_reports_what_it_skips(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(3):
            (tmp_path / c / f"{i}.png").write_bytes(_png(rng, 8))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs" / "labels.csv").write_text("a,b\n")
    (tmp_path / "dogs" / "scan").write_bytes(
        _png(rng, 8)
    )  # an image without an extension: not taken, counted
    (tmp_path / "README.md").write_text("# data")
    (tmp_path / "stray.jpg").write_bytes(_jpeg(rng, 8))  # beside the class folders: not labelled, counted
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 8)  # hidden: left out silently
    (tmp_path / "cats" / ".thumbs").mkdir()
    (tmp_path / "cats" / ".thumbs" / "x.png").write_bytes(_png(rng, 8))
    ds = datasets.get(str(tmp_path))
    assert ds.classes == ["cats", "dogs"] and len(ds) == 6
    sk = ds.skipped
    assert (sk.other, sk.loose, sk.count) == (4, 1, 5)
    assert sorted(sk.other_examples) == ["README.md", "cats/notes.txt", "dogs/labels.csv", "dogs/scan"]
    assert sk.loose_examples == ["stray.jpg"]
    notes = ds.notes()
    assert len(notes) == 2
    assert notes[0].startswith("skipped 4 files that are not images by name (") and ".webp" in notes[0]
    assert (
        notes[1].startswith("ignored 1 file beside the class folders (stray.jpg)") and "move them" in notes[1]
    )
    # a flat folder counts its non-image files the same way, and unreadable images join the notes after a pass
    flat = tmp_path / "dogs"
    (flat / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    fds = datasets.ImageFolder(flat)
    assert (fds.skipped.other, fds.skipped.loose) == (2, 0)
    assert len(list(fds)) == 3
    lines = fds.notes()
    assert len(lines) == 2 and lines[1].startswith(
        "1 image file could not be decoded and was skipped (e.g. broken.png"
    )
    assert datasets.get("samples").notes() == []
