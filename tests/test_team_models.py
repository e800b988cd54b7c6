"""The team's own models (issue 21): a deployer's TOML file (CONVLENS_TEAM_MODELS) lists models by name, loaded
through the same checks as packaged weights; `accel.load` of a live nn.Module works from Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import accel
from accel import cli
from accel.backbone import file_sha256
from accel.errors import BadInput
from accel.zoo import team_models, zoo_table

LABELS = [f"part-{i}" for i in range(10)]


def squeeze3() -> torch.nn.Module:
    """The factory the models file names: a three-class SqueezeNet 1.1."""
    import torchvision

    return torchvision.models.squeezenet1_1(num_classes=3)


@pytest.fixture()
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A models file with two entries: fashion_cnn's weights relabelled (architecture) and a torchvision
    factory with seeded random weights saved as safetensors."""
    src = accel.load("fashion_cnn").module
    assert src is not None
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "parts.safetensors"))
    torch.manual_seed(0)
    import torchvision

    m = torchvision.models.squeezenet1_1(num_classes=3)
    save_file(m.state_dict(), str(tmp_path / "sq.safetensors"))
    sha = file_sha256(tmp_path / "parts.safetensors")
    (tmp_path / "team.toml").write_text(
        f"""
[[model]]
name = "parts"
architecture = "fashion_cnn"
weights = "parts.safetensors"
sha256 = "{sha}"
description = "fashion_cnn relabelled as parts"
input_size = 28
resize = 28
channels = "L"
mean = [0.2860]
std = [0.3530]
labels = {LABELS!r}

[[model]]
name = "tiny_squeeze"
factory = "tests.test_team_models:squeeze3"
weights = "sq.safetensors"
""".replace("'", '"')
    )
    monkeypatch.setenv("CONVLENS_TEAM_MODELS", str(tmp_path / "team.toml"))
    return tmp_path


def test_listed_loaded_and_explained_by_name(team: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = [r["name"] for r in zoo_table()]
    assert names[-2:] == ["parts", "tiny_squeeze"]
    assert cli.main(["models"]) == 0
    assert "parts" in capsys.readouterr().out
    net = accel.load("parts")
    ref = accel.load("fashion_cnn")
    from PIL import Image

    from accel.fashion_mnist import load_fashion_mnist

    x, _ = load_fashion_mnist("test")
    photo = Image.fromarray(np.asarray(x[0]).squeeze().astype(np.uint8), "L")
    got, want = net.predict(photo, top=3), ref.predict(photo, top=3)
    assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-6)
    assert got[0][0] == LABELS[ref.labels.index(want[0][0])]  # same class, the team's name for it
    res = accel.run("gradcam", net, photo)
    assert res.data.shape == (28, 28) and res.meta["target"]["label"] in LABELS


def test_factory_entry(team: Path) -> None:
    net = accel.load("tiny_squeeze")
    assert net.has_head and net.num_classes == 3 and net.name == "tiny_squeeze"
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.squeezenet1_1(num_classes=3).eval()
    x = torch.rand(1, 3, 224, 224)
    assert torch.allclose(net.module(x), m(x), atol=1e-5)


def test_changed_weights_and_bad_entries_are_refused(team: Path) -> None:
    (team / "parts.safetensors").write_bytes((team / "parts.safetensors").read_bytes()[:-1] + b"\x00")
    with pytest.raises(BadInput, match="SHA-256"):
        accel.load("parts")
    bad = {
        'name = "x"\narchitecture = "fashion_cnn"\nfactory = "a:b"\nweights = "w.pt"': "exactly one of",
        'name = "x"\narchitecture = "fashion_cnn"': "needs `weights`",
        'name = "x"\nfactory = "no_such_module_zz:f"': "cannot import the factory",
        'name = "x"\nfactory = "os:getcwd"': "not an nn.Module",
        'name = "x"\narchitecture = "fashion_cnn"\nweights = "w.pt"\ncolour = 1': "unknown keys",
        'name = "x"\narchitecture = "fashion_cnn"\nweights = "w.pt"\ninput_size = 300\nresize = 200': "input_size",
    }
    for body, msg in bad.items():
        (team / "team.toml").write_text("[[model]]\n" + body + "\n")
        with pytest.raises(BadInput, match=msg):
            accel.load("x") if "import" in msg or "nn.Module" in msg else team_models()
    (team / "team.toml").write_text("[[model]\nname=")
    with pytest.raises(BadInput, match="not valid TOML"):
        zoo_table()


def test_load_a_live_module() -> None:
    import torchvision

    torch.manual_seed(1)
    m = torchvision.models.squeezenet1_1(num_classes=5)
    net = accel.load(m)
    assert net.has_head and net.num_classes == 5
    img = accel.images.sample_image("chelsea")
    r = accel.run("saliency", net, img)
    assert r.data.shape == (224, 224) and np.isfinite(r.data).all() and r.data.max() > 0
    with pytest.raises(BadInput, match="fails on a 224x224 input"):
        accel.load(torch.nn.Linear(3, 2))
