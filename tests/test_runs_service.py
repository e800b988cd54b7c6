"""The one run contract (issue 18): `accel.run(name, net, img, *, observer=None, **params)` hands every method a typed
Observer, optimisation results carry their loss curve in `Result.losses`, and the stored-run service
(`accel.runs.answer`) answers an identical request from the store for every front end (dashboard, `--save`)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import accel
from accel import runs
from accel.images import sample_image, sample_images
from accel.registry import _REGISTRY, param, register
from accel.result import LossRecord, Result
from accel.store import RunStore
from tests.conftest import get_net

ROOT = Path(__file__).resolve().parent.parent
CALLS: list[str] = []


@dataclass
class CountP:
    steps: int = param(3, "steps", min=1, max=50)


@pytest.fixture()
def counting_method():
    """A registered method that records every call and what its observer saw."""

    def count(net, img, p, obs):
        CALLS.append(type(obs).__name__)
        curve = []
        for i in range(p.steps):
            if obs.should_stop():
                break
            curve.append(LossRecord(i + 1, 1.0 / (i + 1)))
            obs.loss(curve[-1])
            obs.progress((i + 1) / p.steps, f"step {i + 1}")
        return Result("image", np.zeros((4, 4, 3), np.uint8), {}, losses=curve)

    register("t_count", "synthesize", CountP, needs_image=False)(count)
    CALLS.clear()
    yield "t_count"
    _REGISTRY.pop("t_count", None)


def test_run_hands_every_method_an_observer_and_returns_the_loss_curve(counting_method) -> None:
    net = get_net("fashion_cnn")
    res = accel.run(counting_method, net)
    assert CALLS == ["Observer"]  # the silent default: methods never test for None

    class Stopper(accel.Observer):
        def __init__(self) -> None:
            self.progress_seen: list[float] = []
            self.losses: list[LossRecord] = []

        def progress(self, frac: float, msg: str = "") -> None:
            self.progress_seen.append(frac)

        def loss(self, record: LossRecord) -> None:
            self.losses.append(record)

        def should_stop(self) -> bool:
            return len(self.losses) >= 2

    obs = Stopper()
    res = accel.run(counting_method, net, observer=obs, steps=10)
    assert [r.step for r in res.losses] == [1, 2] and res.loss_curve() == [1.0, 0.5]
    assert obs.losses == res.losses and obs.progress_seen == [0.1, 0.2]
    with pytest.raises(TypeError):
        accel.run(counting_method, net, None, obs)  # observer is keyword-only: it is never a parameter


def test_real_optimisation_methods_fill_the_typed_loss_field() -> None:
    net = get_net("fashion_cnn")
    res = accel.run("class_viz", net, None, target=3, steps=6, size=28)
    assert [r.step for r in res.losses] == list(range(1, 7))
    assert res.loss_curve() == pytest.approx(res.meta["loss_history"])
    assert all(np.isfinite(r.value) for r in res.losses)


def test_the_stored_run_service_answers_identical_requests_from_the_store(tmp_path, counting_method) -> None:
    net = get_net("fashion_cnn")
    store = RunStore(tmp_path / "store")
    a = runs.answer(store, counting_method, net, None, {"steps": "4"}, model="fashion_cnn")
    b = runs.answer(store, counting_method, net, None, {"steps": 4}, model="fashion_cnn")
    c = runs.answer(store, counting_method, net, None, {"steps": 5}, model="fashion_cnn")
    assert not a.from_store and b.from_store and not c.from_store
    assert a.run_id == b.run_id != c.run_id
    assert len(CALLS) == 2  # the identical request (CLI strings vs typed values) was not recomputed
    assert b.result.loss_curve() == a.result.loss_curve()  # the typed loss curve survives the store
    assert store.get(a.run_id).params == {"steps": 4}  # canonical, validated parameters are stored


def test_cli_save_uses_the_same_service(tmp_path) -> None:
    photo = str(sample_images()["chelsea"])
    env = {**os.environ, "CONVLENS_STORE": str(tmp_path / "store"), "PYTHONWARNINGS": "ignore"}
    outs = []
    for _ in range(2):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "accel.cli",
                "explain",
                photo,
                "--method",
                "gradcam",
                "--model",
                "fashion_cnn",
            ]
            + ["--save", "--out", str(tmp_path / "g.png")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert "answered from the store" not in outs[0] and "answered from the store" in outs[1]
    rid = outs[0].rsplit("run ", 1)[1].split()[0]
    net = get_net("fashion_cnn")
    want = accel.run("gradcam", net, sample_image("chelsea")).data
    assert np.abs(RunStore(tmp_path / "store").get(rid).result.data - want).max() < 1e-6
