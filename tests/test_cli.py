"""The `convlens` command: zoo listing, predictions, export, and clean errors (exit 2, message on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from accel.images import sample_images

ROOT = Path(__file__).resolve().parent.parent


def convlens(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "accel.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_models_lists_the_zoo():
    r = convlens("models")
    assert r.returncode == 0, r.stderr
    for name in ("efficientnet_lite0", "alexnet", "vgg16", "vgg19"):
        assert name in r.stdout
    assert "weights:yes" in r.stdout


def test_predict_chelsea_prints_a_cat_first():
    r = convlens("predict", str(sample_images()["chelsea"]), "--model", "efficientnet_lite0")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 5
    assert "cat" in lines[0] or "tabby" in lines[0], lines[0]


def test_bad_image_exits_2_with_message(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("<html><body>not found</body></html>")
    r = convlens("predict", str(bad))
    assert r.returncode == 2
    assert "convlens: error:" in r.stderr and "HTML" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_model_exits_2():
    r = convlens("predict", str(sample_images()["chelsea"]), "--model", "nonet")
    assert r.returncode == 2 and "unknown model" in r.stderr


def test_export_writes_a_parity_checked_onnx(tmp_path):
    out = tmp_path / "alex.onnx"
    r = convlens("export", "--model", "alexnet", "--taps", "embedding", "features.11", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists() and out.stat().st_size > 1e6
    assert "parity" in r.stdout


@pytest.mark.parametrize("verb", ["explain", "inspect", "synthesize"])
def test_technique_verbs_have_help(verb):
    r = convlens(verb, "--help")
    assert r.returncode == 0 and "--method" in r.stdout


def test_train_hands_flags_to_the_training_command_and_limits_lists_caps():
    out = convlens("train", "fast_style", "--help")
    assert out.returncode == 0 and "--content-dir" in out.stdout and "--style" in out.stdout
    out = convlens("limits")
    assert out.returncode == 0 and "CONVLENS_MAX_STEPS" in out.stdout and "CONVLENS_MAX_SIDE" in out.stdout


def test_method_help_lists_the_methods_own_flags():
    out = convlens("explain", "--method", "integrated_gradients", "--help")
    assert out.returncode == 0 and "--steps" in out.stdout and "--baseline" in out.stdout
