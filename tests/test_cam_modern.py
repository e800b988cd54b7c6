"""The modern CAM family (HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM, Ablation-CAM) and Gradient x Input (issue 19):
oracles (pytorch-grad-cam, Captum) on a real photo with efficientnet_lite0 and a random-weight resnet18, the
identities the methods obey, and the usual contract (shape, finiteness, determinism, target dependence, BadInput).

How the oracle comparisons align conventions: pytorch-grad-cam ReLUs each layer's map, min-max normalises it, then
resizes with cv2.INTER_LINEAR (half-pixel centres, like our bilinear upsampling), and min-max normalises again.
Normalisation is affine, and resizing commutes with it, so Pearson's r on the upsampled maps is blind to it: our
maps are compared unnormalised. Eigen-CAM's principal component has no intrinsic sign (pytorch-grad-cam takes
whatever LAPACK returns, ours correlates positively with the summed activation), so its projection is compared
up to sign and the final map against pytorch-grad-cam's projection with our sign. Ablation-CAM is compared on
post-ReLU layers, where pytorch-grad-cam ablates with 0 as the paper does (on layers with negative values it
ablates with min - 1e7 instead).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

import accel
from accel.errors import BadInput
from accel.taps import capture, resolve
from tests.conftest import get_net

T_CAT = 281  # tabby: efficientnet_lite0's third guess on chelsea (after tiger cat 282 and Egyptian cat)
T_OTHER = 948  # Granny Smith
MODERN = ("hirescam", "xgradcam", "layercam", "eigencam", "ablationcam", "input_x_gradient")


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


@functools.cache
def resnet18():
    """torchvision's resnet18 with random weights (seed 0), wrapped as a Backbone (no download)."""
    import torchvision

    from accel.zoo import Backbone, Preproc

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None)
    return Backbone("resnet18-random", module, Preproc(224, 256), None, pretrained=False)


@pytest.fixture(scope="module")
def fashion():
    return get_net("fashion_cnn")


@pytest.fixture(scope="module")
def fashion_photo():
    """A real Fashion-MNIST photo (foolbox's sample of class 9, ankle boot)."""
    from accel.images import foolbox_photos

    items = foolbox_photos("fashionMNIST")
    if not items:
        pytest.skip("foolbox is not installed (pip install --no-deps foolbox==3.3.4)")
    return accel.open_image(items[0][0])


@functools.cache
def case(arch: str) -> tuple:
    """(backbone, input tensor, mid layer where the gradient varies over space, post-ReLU last layer, target)."""
    from accel.images import sample_image

    img = sample_image("chelsea")
    if arch == "efficientnet_lite0":
        net = get_net(arch)
        return net, img, net.preprocess(img).float(), "_blocks.10", "_act_head", T_CAT
    net = resnet18()
    x = net.preprocess(img).float()
    with torch.no_grad():
        t = int(
            net.module(x).argmax()
        )  # the predicted class: its logit is positive (Ablation-CAM divides by it)
    return net, img, x, "layer3", "layer4", t


ARCHS = ("efficientnet_lite0", "resnet18")


# ---------------------------------------------------------------------------------------------------------------
# oracles


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "method,cls", [("hirescam", "HiResCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")]
)
def test_gradient_cams_match_pytorch_grad_cam(arch, method, cls):
    """Same layer (a mid layer, where the gradient varies over space and the three methods differ from Grad-CAM),
    same target: Pearson >= 0.999 on the upsampled maps."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, img, x, layer, _, t = case(arch)
    key = "layers" if method == "layercam" else "layer"
    r = accel.run(method, net, img, target=t, **{key: layer})
    with getattr(pytorch_grad_cam, cls)(model=net.module, target_layers=[resolve(net.module, layer)]) as cam:
        ref = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(t)])[0]
    assert r.data.shape == ref.shape == tuple(x.shape[-2:])
    c = corr(r.data, ref)
    assert c >= 0.999, c
    assert r.data.min() >= 0 and r.data.max() > 0  # ReLU'd, not normalised


@pytest.mark.parametrize("arch", ARCHS)
def test_eigencam_matches_pytorch_grad_cam(arch):
    """The first principal component's projection equals pytorch-grad-cam's get_2d_projection up to sign; our
    map is ReLU(our sign x that projection) upsampled; where the signs agree, its whole EigenCAM pipeline too."""
    import cv2
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from accel.methods.attribute.eigencam import principal_projection

    net, img, x, layer, _, t = case(arch)
    with torch.no_grad(), capture(net.module, [layer], detach=True) as st:
        net.module(x)
    acts = st[layer]
    ours = principal_projection(acts)[0].numpy()
    ref = get_2d_projection(acts.numpy())[0]
    c = corr(ours, ref)
    assert abs(c) >= 0.99999, c
    r = accel.run("eigencam", net, img, layer=layer, backend="torch")
    aligned = cv2.resize(np.maximum(np.sign(c) * ref, 0), tuple(x.shape[-2:])[::-1])
    assert corr(r.data, aligned) >= 0.999
    # our sign: positive where the layer fires (correlates with the summed activation)
    assert corr(ours, acts[0].sum(0).numpy()) > 0
    if c > 0:
        with pytorch_grad_cam.EigenCAM(model=net.module, target_layers=[resolve(net.module, layer)]) as cam:
            full = cam(input_tensor=x.clone(), targets=None)[0]
        assert corr(r.data, full) >= 0.999


class Head(nn.Module):
    """The network after its last conv layer (global average pooling and the classifier) as a module of that
    layer's activations: pytorch-grad-cam's AblationCAM ablates an Identity at its start, so its oracle runs
    the head once per channel instead of the whole network."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.ident = nn.Identity()
        self.mods = nn.ModuleList(mods)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        h = self.ident(a)
        for i, m in enumerate(self.mods):
            h = m(h.flatten(1) if i == len(self.mods) - 1 else h)
        return h


def head_of(net) -> Head:
    m = net.module
    return Head(m._avg_pooling, m._fc) if hasattr(m, "_fc") else Head(m.avgpool, m.fc)


@pytest.mark.parametrize("arch", ARCHS)
def test_ablationcam_matches_pytorch_grad_cam(arch):
    """Same post-ReLU layer (the last conv map), same target: Pearson >= 0.999 on the low-resolution maps (the
    oracle's input is the layer's activation, so it answers at that resolution) and on the upsampled maps."""
    import cv2
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, img, x, _, layer, t = case(arch)
    r = accel.run("ablationcam", net, img, target=t, layer=layer)
    # efficientnet_lite0 declares its decomposition: the runtime's tail after the head; resnet18 does not
    assert r.meta["graph"] == ("tail" if arch == "efficientnet_lite0" else "suffix")
    with torch.no_grad(), capture(net.module, [layer], detach=True) as st:
        net.module(x)
    head = head_of(net)
    with torch.no_grad():
        assert torch.allclose(head(st[layer]), net.module(x), rtol=1e-4, atol=1e-4)
    with AblationCAM(model=head, target_layers=[head.ident], batch_size=64) as cam:
        ref = cam(input_tensor=st[layer].clone(), targets=[ClassifierOutputTarget(t)])[0]
    low = r.extras["lowres"]
    assert low.shape == ref.shape
    assert corr(low, ref) >= 0.999, corr(low, ref)
    c = corr(r.data, cv2.resize(ref, tuple(x.shape[-2:])[::-1]))
    assert c >= 0.999, c


def brute_force_weights(net, x: torch.Tensor, layer: str, t: int, channels: list[int]) -> np.ndarray:
    """(y - y_k) / y by zeroing channel k in a whole forward pass, one pass per channel (the definition)."""
    out = []
    with torch.no_grad():
        y = float(net.module(x)[0, t])
        for k in channels:

            def zero(_m, _i, o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o

            h = resolve(net.module, layer).register_forward_hook(zero)
            try:
                out.append((y - float(net.module(x)[0, t])) / y)
            finally:
                h.remove()
    return np.array(out)


def test_ablationcam_tail_is_exact(lite0, chelsea):
    """At a cut of efficientnet_lite0's declared decomposition, the runtime's Tail runs alone on the ablated
    batches, and gives the weights of one whole forward pass per zeroed channel."""
    x = lite0.preprocess(chelsea).float()
    r = accel.run("ablationcam", lite0, chelsea, target=T_CAT, layer="_blocks.15", batch_size=128)
    assert r.meta["graph"] == "tail" and r.meta["ablated_channels"] == 320
    assert (
        r.meta["passes"] == 1 + 1 + 3
    )  # the recorded forward, the parity check, ceil(320 / 128) tail passes
    picks = [0, 150, 319]
    want = brute_force_weights(lite0, x, "_blocks.15", T_CAT, picks)
    assert np.allclose(r.extras["weights"][picks], want, rtol=1e-4, atol=1e-6)


class Tiny(nn.Module):
    """Two convs whose outputs meet after the second: a residual `+=` (as in ResNet) or a concatenation."""

    def __init__(self, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.c = nn.Conv2d(12 if concat else 6, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x))
        b = self.b(a)
        if self.concat:
            h = torch.cat([a, b], 1)
        else:
            b += a  # in place, like torchvision's BasicBlock
            h = b
        return self.fc(self.pool(torch.relu(self.c(torch.relu(h)))).flatten(1))


@pytest.mark.parametrize("concat,graph", [(False, "suffix"), (True, "whole")])
def test_ablationcam_batches_are_exact(chelsea, concat, graph):
    """Ablated batches through the graph after the layer equal one whole forward pass per zeroed channel: with a
    residual branch from before the layer (it broadcasts over the batch), and with a concatenation, where the
    suffix-only path fails its check and the whole network runs on the repeated image."""
    from accel.zoo import Backbone, Preproc

    torch.manual_seed(1)
    net = Backbone(f"tiny-{graph}", Tiny(concat), Preproc(16, 16), None, pretrained=False)
    x = net.preprocess(chelsea).float()
    with torch.no_grad():
        t = int(net.module(x).argmax())
    r = accel.run("ablationcam", net, chelsea, target=t, layer="b", batch_size=4)
    assert r.meta["graph"] == graph and r.meta["ablated_channels"] == 6
    assert r.meta["passes"] == 1 + 1 + 2  # the recorded forward, the parity check, ceil(6 / 4) batches
    want = brute_force_weights(net, x, "b", t, list(range(6)))
    assert np.allclose(r.extras["weights"], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_input_x_gradient_matches_captum(arch):
    """Captum's InputXGradient is per channel; our map is its signed sum over channels (reduce="sum")."""
    from captum.attr import InputXGradient

    net, img, x, _, _, t = case(arch)
    r = accel.run("input_x_gradient", net, img, target=t)
    ref = InputXGradient(net.module).attribute(x.clone().requires_grad_(True), target=t).detach()[0].numpy()
    assert rel_err(r.extras["attribution"], ref) <= 1e-5
    assert rel_err(r.data, ref.sum(0)) <= 1e-5
    assert r.meta["reduction"] == "sum"


# ---------------------------------------------------------------------------------------------------------------
# identities


def test_gradient_cams_agree_before_global_average_pooling(lite0, chelsea):
    """At the layer the head averages over space the gradient is w_k / (h w) everywhere, so HiResCAM, XGrad-CAM
    and Grad-CAM coincide, and HiResCAM's signed map sums to the logit minus the class bias (its faithfulness)."""
    lows = {
        m: accel.run(m, lite0, chelsea, target=T_CAT, relu=False).extras["lowres"]
        for m in ("gradcam", "hirescam", "xgradcam")
    }
    scale = np.abs(lows["gradcam"]).max()
    assert np.allclose(lows["hirescam"], lows["gradcam"], atol=1e-5 * scale)
    assert np.allclose(lows["xgradcam"], lows["gradcam"], atol=1e-4 * scale)
    r = accel.run("hirescam", lite0, chelsea, target=T_CAT, relu=False)
    bias = float(lite0.module._fc.bias[T_CAT])
    assert float(lows["hirescam"].sum()) + bias == pytest.approx(r.meta["target"]["logit"], rel=1e-4)


def test_layercam_fuses_scaled_maps_by_maximum(lite0, chelsea):
    """Fused = max over layers of tanh(gamma * M / max M) (the paper's Eq. 9), each M the single-layer map."""
    layers = ["_blocks.4", "_act_head"]
    singles = [accel.run("layercam", lite0, chelsea, target=T_CAT, layers=name).data for name in layers]
    r = accel.run("layercam", lite0, chelsea, target=T_CAT, layers=", ".join(layers), gamma=3.0)
    assert r.meta["layers"] == layers and r.meta["passes"] == 1
    assert r.extras["per_layer"].shape == (2, 224, 224)
    want = np.maximum(*[np.tanh(3.0 * m / m.max()) for m in singles])
    assert np.allclose(r.data, want, atol=1e-5)
    assert r.data.min() >= 0 and r.data.max() < 1
    assert r.extras["lowres"]["_blocks.4"].shape == (28, 28)


def test_eigencam_is_class_insensitive(lite0, chelsea):
    a = accel.run("eigencam", lite0, chelsea, target=T_CAT, backend="torch")
    b = accel.run("eigencam", lite0, chelsea, target=T_OTHER, backend="torch")
    assert a.meta["target"]["index"] == T_CAT and b.meta["target"]["index"] == T_OTHER
    assert np.array_equal(a.data, b.data) and a.data.max() > 0
    assert a.meta["class_sensitive"] is False


def test_eigencam_backends_agree(fashion, fashion_photo):
    """Gradient-free: the one pass may run on ONNX Runtime through the runner's taps."""
    a = accel.run("eigencam", fashion, fashion_photo, backend="torch")
    b = accel.run("eigencam", fashion, fashion_photo, backend="onnxruntime")
    assert a.meta["backend"] == "torch" and b.meta["backend"] == "onnxruntime"
    assert corr(a.data, b.data) >= 0.9999


def test_eigencam_on_forward_only_onnx_backbone(fashion, fashion_photo, tmp_path):
    """A user's ONNX file whose output is a feature map (forward-only, no head): Eigen-CAM reads that output
    through the runner's one tap, in the sandbox, and gives the torch module's map at the same layer; a file
    that outputs only class scores has no feature map to read, and says so."""
    from accel.runtime.export import export_backbone

    feats = accel.load(str(export_backbone(fashion, ["features.19"], out=tmp_path / "feats.onnx")))
    assert feats.module is None and not feats.has_head
    r = accel.run("eigencam", feats, fashion_photo)
    want = accel.run("eigencam", fashion, fashion_photo, layer="features.19", backend="torch")
    assert r.meta["backend"] == "onnxruntime" and r.meta["layer"] == "logits" and r.meta["target"] is None
    assert r.data.shape == (28, 28) and corr(r.data, want.data) >= 0.9999
    with pytest.raises(BadInput, match="no classifier head"):
        accel.run("eigencam", feats, fashion_photo, target=3)
    scores = accel.load(str(export_backbone(fashion, ["logits"], out=tmp_path / "scores.onnx")))
    with pytest.raises(BadInput, match="exposes none"):
        accel.run("eigencam", scores, fashion_photo)


def test_eigencam_on_headless_backbone(chelsea):
    """Class-free, so a conv-features-only backbone (AlexNet's torchvision features) needs no head."""
    alex = get_net("alexnet")
    assert not alex.has_head
    r = accel.run("eigencam", alex, chelsea, backend="torch")
    assert r.data.shape == (224, 224) and r.data.max() > 0 and r.meta["target"] is None


# ---------------------------------------------------------------------------------------------------------------
# contract


@pytest.mark.parametrize("name", MODERN)
def test_contract_on_fashion_cnn(name, fashion, fashion_photo):
    """Float32 HxW at the input size, finite, deterministic, and (except Eigen-CAM) dependent on the target."""
    a = accel.run(name, fashion, fashion_photo, target=9)  # ankle boot: the photo's class
    again = accel.run(name, fashion, fashion_photo, target=9)
    other = accel.run(name, fashion, fashion_photo, target=7)  # sneaker
    assert a.kind == "map" and a.data.shape == (28, 28) and a.data.dtype == np.float32
    assert np.isfinite(a.data).all() and np.abs(a.data).max() > 0
    assert np.array_equal(a.data, again.data)
    assert np.array_equal(a.data, other.data) == (name == "eigencam")
    assert a.meta["method"] == name and a.meta["target"]["index"] == 9
    assert isinstance(a.to_image(), type(a.image))


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("hirescam", {"layer": "nope"}, "unknown layer|nope"),
        ("xgradcam", {"layer": "fc"}, "not a \\(C,H,W\\) feature map"),
        ("layercam", {"layers": "features.0, nope"}, "nope"),
        ("layercam", {"layers": " , "}, "at least one"),
        ("layercam", {"gamma": 0.0}, "gamma"),
        ("eigencam", {"backend": "gpu"}, "backend"),
        ("ablationcam", {"batch_size": 0}, "batch_size"),
        ("ablationcam", {"target": 10}, "10"),
        ("input_x_gradient", {"reduce": "median"}, "reduce"),
        ("input_x_gradient", {"target": -1}, "target"),
    ],
)
def test_bad_parameters_raise_badinput(name, kw, match, fashion, fashion_photo):
    with pytest.raises(BadInput, match=match):
        accel.run(name, fashion, fashion_photo, **kw)
