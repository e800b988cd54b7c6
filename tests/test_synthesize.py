"""Synthesis family: the optimisation framework (objectives, loop, stops, NaN) and every technique, at small sizes."""

from __future__ import annotations

import copy
import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

import accel
from accel.errors import BadInput, ResourceLimit
from accel.methods.synthesize import _opt
from tests.conftest import get_net

# Register the family explicitly (independent of the registry's package walk).
for _m in ("class_viz", "fooling", "deepdream", "inversion", "texture", "style_transfer", "fast_style"):
    importlib.import_module(f"accel.methods.synthesize.{_m}")

from accel.methods.synthesize import fast_style as fs  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread: on a busy shared machine OpenMP spin-waiting makes 2 threads ~10x slower than 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _const(value: float, name: str = "c") -> _opt.Objective:
    return _opt.objective(lambda ctx: torch.tensor(value), name)


def _save(res: accel.Result, artifacts, name: str) -> None:
    res.to_image().save(artifacts / f"synthesize_{name}.png")


# --------------------------------------------------------------------------------------------- framework


def test_objective_algebra_composes_terms_taps_and_weights():
    a, b = _const(2.0, "a"), _const(5.0, "b")
    o = -a + 0.5 * b - 1 + b / 5
    ctx = _opt.Ctx(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), None, {}, None)
    total, terms = o.evaluate(ctx)
    assert float(total) == pytest.approx(-2 + 2.5 - 1 + 1)
    assert terms == {"a": 2.0, "b": 5.0}
    assert "0.5*b" in repr(o) and "-a" in repr(o)
    c = _opt.channel("features.3", 1) + 0.1 * _opt.tv() - _opt.class_score(3)
    assert c.taps == {"features.3"} and c.needs_logits
    assert not (_opt.l2() + _opt.tv()).needs_logits
    with pytest.raises(TypeError):
        _ = a * b  # products of objectives are not linear: refused
    with pytest.raises(BadInput):
        _ = a / 0


def test_tv_and_l2_values_on_known_images():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :, 4:] = 1.0  # one vertical edge
    ctx = _opt.Ctx(x, x, None, {}, None)
    assert float(_opt.tv()(ctx)) == pytest.approx(7 / 49)  # 7 rows x 1 edge column of the 7x7 difference grid
    assert float(_opt.l2(0.5)(ctx)) == pytest.approx(0.25)


def _tiny_run(obj, steps=10, **kw):
    net = get_net("fashion_cnn")
    prm = _opt.PixelImage(torch.full((1, 3, 28, 28), 0.5))
    return _opt.optimize(net, obj, prm, steps=steps, lr=0.05, **kw)


def test_nan_loss_is_a_clear_error_or_a_stopped_run_with_the_last_finite_image():
    net = get_net("fashion_cnn")
    bad = _opt.objective(
        lambda ctx: ctx.logits[0, 0] * (float("nan") if ctx.step >= 3 else 1.0), "nan_after_3", logits=True
    )
    with pytest.raises(BadInput, match="diverged at step 4.*lower lr"):
        _tiny_run(bad)
    res = _tiny_run(bad, on_nan="stop")
    assert res.steps == 3 and "diverged" in res.stopped and torch.isfinite(res.image).all()
    out = _opt.image_result(res.image, {}, opt=res)
    assert out.data.dtype == np.uint8 and len(out.meta["loss_history"]) == 3
    assert [r.step for r in out.losses] == [1, 2, 3] and out.loss_curve() == out.meta["loss_history"]
    with pytest.raises(BadInput, match="NaN"):
        _opt.to_uint8(torch.full((1, 3, 2, 2), float("nan")))
    assert net.has_head


def test_early_stop_progress_and_cancellation():
    flat = _opt.l2(0.5)  # already at its minimum: no improvement possible
    res = _tiny_run(flat, steps=50, early_stop=5)
    assert res.steps == 6 and "early stop" in res.stopped
    import accel

    class Watch(accel.Observer):
        def __init__(self, stop_after: int = 10**9) -> None:
            self.seen: list[float] = []
            self.records: list[accel.LossRecord] = []
            self.asked, self.stop_after = 0, stop_after

        def progress(self, frac: float, msg: str = "") -> None:
            self.seen.append(frac)

        def loss(self, record: accel.LossRecord) -> None:
            self.records.append(record)

        def should_stop(self) -> bool:
            self.asked += 1
            return self.asked > self.stop_after

    w = Watch()
    res = _tiny_run(-_opt.class_score(2), steps=8, observer=w)
    assert len(w.seen) == 8 and w.seen == sorted(w.seen) and w.seen[-1] == pytest.approx(1.0)
    assert res.loss_history[-1] < res.loss_history[0]
    assert [r.value for r in w.records] == res.loss_history and [r.step for r in w.records] == list(
        range(1, 9)
    )
    w = Watch(stop_after=4)
    res = _tiny_run(-_opt.class_score(2), steps=50, observer=w)
    assert res.steps == 4 and res.stopped.startswith("cancelled")


def test_forward_stops_after_the_deepest_tap_and_capture_matches_full_pass():
    net = get_net("vgg16")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    acts, logits = _opt.forward(net, x, ["features.3"])
    assert logits is None and acts["features.3"].shape == (1, 64, 32, 32)
    from accel.taps import capture

    with capture(net.module, ["features.3"]) as st, torch.no_grad():
        net.module(net.normalize(x))
    assert torch.allclose(acts["features.3"], st["features.3"])


def test_parameterisations_and_transforms_keep_shape_and_range():
    g = torch.Generator().manual_seed(0)
    init = torch.rand(1, 3, 20, 24, generator=g)
    for kind in ("pixel", "sigmoid", "fourier"):
        prm = _opt.make_param(kind, 20, 24, g, init01=init)
        x = prm()
        assert x.shape == (1, 3, 20, 24)
        assert torch.allclose(x, init, atol=2e-3), kind  # every parameterisation can start from an image
    t = _opt.compose(_opt.jitter(3), _opt.random_rotate([-5, 5]), _opt.blur(1.0))
    y = t(init, g)
    assert y.shape == init.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert _opt.random_scale([0.5])(init, g).shape == (1, 3, 10, 12)


def test_class_viz_is_deterministic_given_the_seed():
    net = get_net("fashion_cnn")
    kw = dict(target=1, steps=6, size=28, init="noise", jitter=2)
    a = accel.run("class_viz", net, None, seed=3, **kw)
    b = accel.run("class_viz", net, None, seed=3, **kw)
    c = accel.run("class_viz", net, None, seed=4, **kw)
    assert np.array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)


# --------------------------------------------------------------------------------------------- techniques


def test_class_viz_raises_the_target_score(lite0, artifacts):
    res = accel.run("class_viz", lite0, None, target=130, steps=40, size=112, lr=0.05, stop_prob=0.9)
    m = res.meta
    assert res.kind == "image" and res.data.shape == (112, 112, 3) and res.data.dtype == np.uint8
    assert m["start_prob"] < 0.01
    assert m["final_logit"] > m["start_logit"] + 5 and m["final_prob"] >= 0.9
    assert m["stopped"].startswith("target probability") and m["steps_run"] < 40
    assert len(m["loss_history"]) == m["steps_run"] and m["loss_history"][-1] < m["loss_history"][0]
    _save(res, artifacts, "class_viz_flamingo")


def test_class_viz_channel_objective_on_an_intermediate_layer():
    net = get_net("fashion_cnn")
    res = accel.run("class_viz", net, None, layer="features.11", channel=5, steps=8, size=28, jitter=0)
    assert res.meta["final_activation"] > res.meta["start_activation"] + 0.1
    with pytest.raises(BadInput, match="out of range"):
        accel.run("class_viz", net, None, layer="features.11", channel=500, steps=2)


def test_fooling_flips_the_label_within_8_over_255_and_survives_uint8(lite0, imagenet_photos, artifacts):
    img, label = imagenet_photos[0]
    res = accel.run("fooling", lite0, img, target=949, epsilon=8 / 255, steps=30)
    m = res.meta
    assert m["original_class"] == label and m["target"] == 949
    assert m["target_prob"] >= 0.9 and m["predicted_class"] == 949 and m["success"]
    assert m["linf"] <= 8 / 255 + 1e-6 and m["linf_255"] <= 8
    # The saved picture fools the network too: deprocess -> PNG-like uint8 -> re-preprocess (no resize at 224).
    again = res.to_image()
    assert again.size == (224, 224)
    with torch.no_grad():
        p = lite0.module(lite0.preprocess(again))[0].softmax(-1)
    assert int(p.argmax()) == 949 and float(p[949]) >= 0.9
    for k in ("saliency_before", "saliency_after", "gradcam_before", "gradcam_after"):
        assert res.extras[k].shape == (224, 224) and np.isfinite(res.extras[k]).all()
    assert res.extras["difference"].shape == (224, 224, 3)
    _save(res, artifacts, "fooling_adversarial")
    Image.fromarray(res.extras["difference"]).save(artifacts / "synthesize_fooling_difference.png")
    one = accel.run("fooling", lite0, img, method="fgsm", target=949, epsilon=8 / 255)
    assert one.meta["steps_run"] == 1 and one.meta["linf_255"] <= 8


def test_deepdream_amplifies_the_layer(artifacts, chelsea):
    net = get_net("vgg16")
    res = accel.run("deepdream", net, chelsea, layer="features.15", size=64, octaves=2, steps=4, jitter=4)
    m = res.meta
    assert res.data.shape[:2] == (43, 64)  # aspect ratio kept
    assert m["activation_l2_final"] > 1.5 * m["activation_l2_start"]
    _save(res, artifacts, "deepdream")


def test_inversion_feature_error_falls_and_deeper_layers_lose_more_pixels(chelsea, artifacts):
    net = get_net("vgg16")
    res = accel.run("inversion", net, chelsea, layers="features.3,features.22", size=48, steps=25, lr=0.05)
    shallow, deep = res.meta["layers"]
    assert res.kind == "grid"
    for row in (shallow, deep):
        assert row["rel_feature_error"] < 0.6 * row["rel_feature_error_start"], row
    assert shallow["rel_feature_error"] < 0.3
    assert deep["pixel_mae"] > shallow["pixel_mae"] + 0.02
    _save(res, artifacts, "inversion_depths")


def _random_vgg16(seed: int = 0):
    net = copy.deepcopy(get_net("vgg16"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.module.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                m.bias.zero_()
    net.name = "vgg16-random"
    return net


def test_texture_gram_loss_falls_90_percent_and_beats_a_random_network(artifacts):
    net = get_net("vgg16")
    exemplar = _opt.procedural_style("strokes", 128)
    kw = dict(size=48, steps=25, layers="features.1,features.6,features.11,features.18")
    res = accel.run("texture", net, exemplar, **kw)
    m = res.meta
    assert m["style_loss_drop"] >= 0.9, m["style_loss_drop"]
    rnd = accel.run("texture", _random_vgg16(), exemplar, **kw)
    x_rnd = torch.from_numpy(rnd.data.astype(np.float32) / 255).permute(2, 0, 1)[None]
    targets = _opt.gram_targets(net, _opt.pil_to01(exemplar, 48), m["layers"])
    judged = _opt.style_distance(
        net, x_rnd, targets
    )  # the random network's texture, judged by the trained one
    assert judged > 3 * m["style_loss_final"], (judged, m["style_loss_final"])
    _save(res, artifacts, "texture_gram")
    _save(rnd, artifacts, "texture_gram_random_vgg")


def test_efros_leung_copies_exemplar_pixels():
    exemplar = _opt.procedural_style("mosaic", 32, seed=1)
    res = accel.run(
        "texture", get_net("vgg16"), exemplar, method="efros_leung", size=20, exemplar_size=32, window=5
    )
    assert np.array_equal(res.extras["exemplar"], np.asarray(exemplar))
    colours = {tuple(c) for c in np.asarray(exemplar).reshape(-1, 3)}
    out = {tuple(c) for c in res.data.reshape(-1, 3)}
    assert res.data.shape == (20, 20, 3) and out <= colours  # every pixel is copied, none invented
    with pytest.raises(ResourceLimit):
        accel.run("texture", get_net("vgg16"), exemplar, method="efros_leung", size=4000, exemplar_size=600)


def test_style_transfer_style_loss_falls_on_vgg16_and_caffe_vgg19(chelsea, artifacts):
    for name in ("vgg16", "vgg19"):
        res = accel.run("style_transfer", get_net(name), chelsea, style="strokes", size=48, steps=15)
        m = res.meta
        assert m["style_loss_drop"] >= 0.9, (name, m["style_loss_drop"])
        assert len(m["loss_history"]) == 15
        _save(res, artifacts, f"style_transfer_{name}")


def test_style_transfer_colour_preservation_and_blending(chelsea):
    net = get_net("vgg16")
    kw = dict(size=32, steps=3)
    res = accel.run("style_transfer", net, chelsea, style="strokes", preserve_color="luminance", **kw)
    out = torch.from_numpy(res.data.astype(np.float32) / 255).permute(2, 0, 1)[None]
    content = torch.from_numpy(res.extras["content"].astype(np.float32) / 255).permute(2, 0, 1)[None]
    from accel.methods.synthesize.style_transfer import _yuv

    chroma = (_yuv(out)[:, 1:] - _yuv(content)[:, 1:]).abs()
    assert float(chroma.mean()) < 0.01  # the content's colours are kept
    one = accel.run("style_transfer", net, chelsea, style="strokes", **kw)
    blended = accel.run("style_transfer", net, chelsea, style="strokes,mosaic", style_blend="1,0", **kw)
    assert np.array_equal(one.data, blended.data)


# --------------------------------------------------------------------------------------------- fast style


def test_shipped_fast_style_networks_load_and_export_faithfully():
    styles = fs.shipped_styles()
    assert len(styles) >= 2, "ship at least two trained styles under models/"
    from safetensors.torch import load_file

    from accel.zoo import file_sha256

    for name, path in styles.items():
        card = fs.read_card(name)
        assert path.stat().st_size < 5 * 2**20 and file_sha256(path) == card["sha256"]
        assert all(isinstance(v, torch.Tensor) for v in load_file(str(path)).values())
        assert card["steps"] > 0 and card["final_losses"]["total"] < card["initial_losses"]["total"]
    sess, provider, diff = fs.onnx_session(next(iter(styles)))
    assert provider == "CPUExecutionProvider" and diff <= 1e-3
    model = fs.load_transformer(next(iter(styles)))
    assert fs.parity(model, sess, ((52, 76),)) <= 1e-3


def test_fast_style_runs_on_ort_and_torch_and_the_peer(chelsea, artifacts):
    name = next(iter(fs.shipped_styles()))
    a = accel.run("fast_style", None, chelsea, style=name, size=64)
    b = accel.run("fast_style", None, chelsea, style=name, size=64, backend="torch")
    assert a.data.shape == (43, 64, 3) and a.meta["seconds"] > 0
    assert np.abs(a.data.astype(int) - b.data.astype(int)).max() <= 1
    _save(a, artifacts, f"fast_style_{name}")
    if fs.peer_path() is not None:
        p = accel.run("fast_style", None, chelsea, style="peer", peer_style=3, size=64)
        assert p.data.shape == (43, 64, 3) and p.data.std() > 5


# --------------------------------------------------------------------------------------------- absurd parameters


def test_absurd_parameters_give_clear_errors(chelsea, lite0):
    vgg = get_net("vgg16")
    with pytest.raises(BadInput, match="content_weight"):
        accel.run("style_transfer", vgg, chelsea, content_weight=-1)
    with pytest.raises(BadInput, match="steps"):
        accel.run("inversion", vgg, chelsea, steps=0)
    with pytest.raises(BadInput, match="lr"):
        accel.run("class_viz", lite0, None, lr=float("nan"))
    with pytest.raises(BadInput, match="style_layer_weights"):
        accel.run("style_transfer", vgg, chelsea, style_layer_weights="1,-2,1,1,1", size=32, steps=1)
    with pytest.raises(ResourceLimit, match="CONVLENS_MAX_SIDE"):  # the side cap answers first
        accel.run("style_transfer", get_net("vgg19"), chelsea, size=4096, steps=1)
    with (
        pytest.raises(ResourceLimit, match="CONVLENS_SYNTH_MAX_MB"),  # then the memory estimate
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("CONVLENS_MAX_SIDE", "4096")
        accel.run("style_transfer", get_net("vgg19"), chelsea, size=4096, steps=1)
    with pytest.raises(BadInput, match="unknown layer"):
        accel.run("inversion", vgg, chelsea, layers="features.99", steps=1)
    with pytest.raises(BadInput, match="out of range"):
        accel.run("class_viz", lite0, None, target=5000, steps=1)
    with pytest.raises(BadInput, match="no classifier head"):
        accel.run("fooling", vgg, chelsea, steps=1)
    with pytest.raises(BadInput, match="not a procedural style"):
        accel.run("style_transfer", vgg, chelsea, style="no-such-style", steps=1)
    # An absurd learning rate never yields a NaN picture: either a clear error or a finite image.
    try:
        res = accel.run(
            "inversion",
            vgg,
            chelsea,
            layers="features.3",
            size=32,
            steps=3,
            lr=1e4,
            parameterization="fourier",
        )
        assert np.isfinite(res.data.astype(float)).all()
    except BadInput as e:
        assert "diverged" in str(e)
