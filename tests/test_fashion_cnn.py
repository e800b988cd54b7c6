"""The packaged FashionCNN checkpoint, its model card, and the Fashion-MNIST idx loader."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from accel.archs.fashion_cnn import FashionCNN
from accel.errors import BadInput
from accel.fashion_mnist import FASHION_CLASSES, find_fashion_mnist, load_fashion_mnist, read_idx

tomllib = pytest.importorskip("tomllib")

MODELS = Path(__file__).resolve().parents[1] / "models"
CHECKPOINT = MODELS / "fashion_cnn.safetensors"
CARD = MODELS / "fashion_cnn.toml"


@pytest.fixture(scope="module")
def card() -> dict:
    """The model card, parsed."""
    with open(CARD, "rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    """FashionCNN with the packaged weights, in eval mode."""
    net = FashionCNN()
    net.load_state_dict(load_file(str(CHECKPOINT)), strict=True)
    return net.eval()


def test_card_matches_checkpoint(card: dict) -> None:
    assert card["name"] == "fashion_cnn"
    assert card["architecture"] == "accel.archs.fashion_cnn.FashionCNN"
    assert (MODELS / card["file"]) == CHECKPOINT
    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == card["sha256"]
    assert CHECKPOINT.stat().st_size < 5 * 1024 * 1024
    assert card["classes"] == list(FASHION_CLASSES)
    assert card["params"] == sum(p.numel() for p in FashionCNN().parameters())
    assert card["test_accuracy"] >= 0.91


def test_layers_are_hookable_and_cam_ready(card: dict, model: FashionCNN) -> None:
    modules = dict(model.named_modules())
    assert isinstance(modules[card["cam_layer"]], torch.nn.ReLU)
    assert isinstance(modules[card["embedding_layer"]], torch.nn.AdaptiveAvgPool2d)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert len({id(m) for m in relus}) == 6 and not any(m.inplace for m in relus)
    captured = {}
    handle = modules[card["cam_layer"]].register_forward_hook(lambda m, i, o: captured.setdefault("cam", o))
    with torch.inference_mode():
        logits = model(torch.zeros(2, 1, 28, 28))
    handle.remove()
    assert logits.shape == (2, 10)
    assert captured["cam"].shape == (2, 128, 7, 7)
    assert model.fc.in_features == 128  # GAP feeds the linear head directly: CAM weights are fc.weight


def test_checkpoint_accuracy_on_test_images(model: FashionCNN) -> None:
    if find_fashion_mnist() is None:
        pytest.skip(
            "Fashion-MNIST idx files not found (apt-get install dataset-fashion-mnist, or set $CONVLENS_FASHION_MNIST)"
        )
    images, labels = load_fashion_mnist("test")
    images, labels = images[:2000], labels[:2000]
    with torch.inference_mode():
        predictions = model(FashionCNN.normalize(torch.from_numpy(images))).argmax(1).numpy()
    accuracy = float((predictions == labels).mean())
    assert accuracy >= 0.90, accuracy


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    """Write a gzipped idx file with the given header and payload."""
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload)
    return path


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    data = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    path = _write_idx(tmp_path / "x-images-idx3-ubyte.gz", 0x803, (2, 28, 28), data.tobytes())
    assert np.array_equal(read_idx(path, 0x803, 3), data)


@pytest.mark.parametrize(
    "case",
    ["not_gzip", "bad_magic", "truncated", "trailing", "short_header"],
)
def test_idx_reader_refuses_corrupt_files(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    good = bytes(3 * 28 * 28)
    if case == "not_gzip":
        path.write_bytes(b"this is not a gzip stream at all")
    elif case == "bad_magic":
        _write_idx(path, 0x801, (3, 28, 28), good)
    elif case == "truncated":
        _write_idx(path, 0x803, (3, 28, 28), good[:-10])
    elif case == "trailing":
        _write_idx(path, 0x803, (3, 28, 28), good + b"\x00")
    elif case == "short_header":
        with gzip.open(path, "wb") as fh:
            fh.write(b"\x00\x00\x08")
    with pytest.raises(BadInput):
        read_idx(path, 0x803, 3)


def test_loader_refuses_corrupt_dataset_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 0x803, (4, 28, 28), bytes(4 * 28 * 28))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", 0x801, (4,), bytes(4))
    monkeypatch.setenv("CONVLENS_FASHION_MNIST", str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (4, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64

    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b corrupt gzip")
    with pytest.raises(BadInput):
        load_fashion_mnist("test")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (3,), bytes(3))
    with pytest.raises(BadInput, match="labels"):
        load_fashion_mnist("test")
    with pytest.raises(BadInput):
        load_fashion_mnist("validation")
