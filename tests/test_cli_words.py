"""The CLI's words and files (issue 21): help with each default and the cap in force once, random weights said on
stdout with a non-zero exit unless --allow-random, and the raw (.npy) and full-resolution (.png) map downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import accel
from accel import cli
from accel.images import foolbox_photos

PHOTO = str(foolbox_photos()[0][0])  # a full-size ImageNet photo (not square)


def _help(capsys: pytest.CaptureFixture[str], verb: str, method: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([verb, "--method", method, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare word streams


def test_help_shows_the_default_once_and_the_cap_in_force(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(capsys, "synthesize", "class_viz")
    opts = text[text.index("options:") :]
    steps = opts[opts.index("--steps N") : opts.index("--lr X")]
    assert "1..2000 (cap CONVLENS_MAX_STEPS)" in steps and steps.count("default") == 1, steps
    monkeypatch.setenv("CONVLENS_MAX_STEPS", "300")
    text = _help(capsys, "synthesize", "class_viz")
    steps = text[text.index("options:") :]
    assert "1..300 (cap CONVLENS_MAX_STEPS)" in steps


def test_no_help_prints_a_none_default(capsys: pytest.CaptureFixture[str]) -> None:
    verb = {fam: v for v, fam in cli.FAMILY_VERBS.items()}
    for spec in accel.list_methods():
        text = _help(capsys, verb[spec.family], spec.name)
        assert "default None" not in text and "default: None" not in text, spec.name
        assert "P_" not in text, f"{spec.name}: metavars should say what a flag takes, not its dest"


def test_random_weights_are_said_on_stdout_and_refused_without_allow_random(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVLENS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")  # no cached resnet18 weights
    assert cli.main(["predict", PHOTO, "-m", "resnet18"]) == 3
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "--allow-random" in out and "%" not in out  # no predictions printed
    assert cli.main(["predict", PHOTO, "-m", "resnet18", "--allow-random", "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "RANDOM WEIGHTS" in out[0] and "random weights" in out[1] and len(out) == 4, out
    assert cli.main(["explain", PHOTO, "--method", "saliency", "-m", "resnet18", "--out", "/tmp/x.png"]) == 3


def test_raw_and_full_downloads_of_a_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, raw, full = tmp_path / "g.png", tmp_path / "g.npy", tmp_path / "g_full.png"
    args = [
        "explain",
        PHOTO,
        "--method",
        "gradcam",
        "--out",
        str(out),
        "--raw",
        str(raw),
        "--full",
        str(full),
    ]
    assert cli.main(args) == 0
    net = accel.load("efficientnet_lite0")
    photo = accel.open_image(PHOTO)
    want = accel.run("gradcam", net, photo).data
    np.testing.assert_allclose(np.load(raw, allow_pickle=False), want, rtol=1e-5, atol=1e-6)
    fig = np.asarray(Image.open(full).convert("RGB")).astype(int)
    assert (
        fig.shape[1] >= photo.width + 100 and fig.shape[0] >= photo.height
    )  # the photo at full size + a bar
    bar = fig[:, photo.width + 5 :]
    assert (np.ptp(bar, axis=2) > 100).any(), "no saturated colour-bar pixels to the right of the photo"
    assert cli.main(["inspect", PHOTO, "--method", "filters", "--out", str(out), "--full", str(full)]) == 2
    assert "--full draws maps" in capsys.readouterr().err


def test_input_box_is_the_region_the_network_sees() -> None:
    net = accel.load("efficientnet_lite0")
    photo = accel.open_image(PHOTO)
    x0, y0, x1, y1 = net.input_box(photo.size)
    assert 0 <= x0 < x1 <= photo.width and 0 <= y0 < y1 <= photo.height
    seen = np.asarray(net.to_tensor01(photo)[0].permute(1, 2, 0))
    crop = photo.crop((round(x0), round(y0), round(x1), round(y1))).resize(
        (224, 224), Image.Resampling.BILINEAR
    )
    assert np.abs(np.asarray(crop, dtype=np.float32) / 255 - seen).mean() < 0.02
    shifted = photo.crop((0, 0, round(x1 - x0), round(y1 - y0))).resize((224, 224))
    assert (
        np.abs(np.asarray(shifted, dtype=np.float32) / 255 - seen).mean() > 0.05
    )  # the box is not arbitrary
