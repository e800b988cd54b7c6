"""`scouter`: per-class slot-attention maps of a trained SCOUTER head (Li et al., ICCV 2021) on a frozen backbone.

Unlike post-hoc maps, these attentions *are* the classifier: each class's score is the feature mass its slot
attends to. SCOUTER+ ("positive") maps show why the image is a class; SCOUTER- ("negative") maps show why it is
not (the predicted class attends to almost nothing there; other classes highlight the evidence against them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import BadInput
from ...registry import TARGET, Observer, param, register
from ...result import Result

if TYPE_CHECKING:
    from ...archs.scouter import ScouterHead
    from ...zoo import Backbone

_HEADS: dict[tuple[str, float], tuple[Any, dict[str, Any]]] = {}


@dataclass
class ScouterParams:
    target: int | None = TARGET(
        help="class whose slot attention to show (default: the SCOUTER head's prediction)", min=None
    )
    sign: str = param(
        "positive",
        "positive = SCOUTER+ ('why this class'), negative = SCOUTER- ('why not this class')",
        choices=("positive", "negative"),
    )
    checkpoint: str = param(
        "",
        "a SCOUTER head .safetensors trained by accel.training.scouter (default: the packaged head for the "
        "backbone and sign, models/scouter_<data>_<sign>.safetensors)",
        kind="checkpoint",
    )


def find_head(net: Backbone, sign: str) -> Path:
    """The packaged SCOUTER checkpoint for this backbone and sign (its model card names the backbone)."""
    from ...zoo import cards

    for card in cards.find_cards(f"scouter_*_{sign}"):
        if card.get("backbone") == net.name:
            ckpt = cards.verified_file(card)  # present and matching its card's SHA-256, else how to retrain
            want = card.get("backbone_sha256")
            have = net.card.get("sha256")
            if want and have and want != have:
                raise BadInput(
                    f"{ckpt.name} was trained on a different {net.name} checkpoint (sha256 {want[:12]}..., loaded "
                    f"{have[:12]}...); its attention would be meaningless. Retrain: {card['training_command']}"
                )
            return ckpt
    raise BadInput(
        f"no trained SCOUTER head for backbone {net.name!r} (sign {sign!r}) under {cards.models_dir()}; SCOUTER heads "
        f"exist for fashion_cnn (`python -m accel.training.scouter --backbone fashion_cnn --sign {sign}`), "
        "or pass checkpoint=PATH"
    )


_CONFIG_INTS = {"in_channels": (1, 65536), "num_classes": (2, 100_000), "hidden": (4, 4096), "iters": (1, 32)}


def _check_head_file(path: Path) -> None:
    """Refuse a user-given head whose metadata is not a sane SCOUTER config matching its tensors, before any
    module is built from it (a crafted config could otherwise ask for terabytes or loop for hours)."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{path.name}: not a valid safetensors file ({e})") from None
    try:
        cfg = json.loads(meta.get("config", ""))
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        raise BadInput(f"{path.name}: its metadata holds no SCOUTER config (a JSON object under 'config')")
    for k, (lo, hi) in _CONFIG_INTS.items():
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise BadInput(f"{path.name}: config {k}={v!r} is not a whole number in {lo}..{hi}")
    if cfg.get("sign") not in ("positive", "negative") or not isinstance(cfg.get("layer"), str):
        raise BadInput(f"{path.name}: config needs sign 'positive'/'negative' and a layer name")
    want = {
        "slots": (1, cfg["num_classes"], cfg["hidden"]),
        "reduce.weight": (cfg["hidden"], cfg["in_channels"], 1, 1),
    }
    for k, shape in want.items():
        if shapes.get(k) != shape:
            raise BadInput(f"{path.name}: tensor {k!r} has shape {shapes.get(k)}, the config implies {shape}")


def load_scouter(net: Backbone, sign: str = "positive", checkpoint: str = "") -> tuple[ScouterHead, dict]:
    """The SCOUTER head for `net` (cached per file and mtime) and its config (backbone, layer, sign, ...)."""
    from ...archs.scouter import load_head

    path = Path(checkpoint) if checkpoint else find_head(net, sign)
    try:
        path = path.expanduser()
        is_file = path.is_file()
    except (OSError, RuntimeError, ValueError):  # "~nosuchuser/x" (no home), a 300-character name
        is_file = False
    if not is_file:
        raise BadInput(f"SCOUTER checkpoint {checkpoint!r} does not exist (or is not a file)")
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _HEADS:
        _check_head_file(path)
        _HEADS[key] = load_head(path)
    head, cfg = _HEADS[key]
    if cfg.get("backbone") not in (None, net.name) and not checkpoint:
        raise BadInput(f"{path.name} belongs to backbone {cfg['backbone']!r}, not {net.name!r}")
    if checkpoint and cfg["sign"] != sign:
        raise BadInput(
            f"{path.name} is a SCOUTER head with sign {cfg['sign']!r}, but sign={sign!r} was asked for"
        )
    layer = cfg.get("layer")
    if not isinstance(layer, str):
        raise BadInput(f"{path.name} names no feature layer (its config lacks 'layer')")
    info = net.layer(layer)  # BadInput if the backbone lacks the layer the head was trained on
    if len(info.out_shape) != 3 or info.out_shape[0] != cfg["in_channels"]:
        raise BadInput(
            f"{path.name} expects {cfg['in_channels']}-channel features at {layer!r}, "
            f"but {net.name} gives {info.out_shape}"
        )
    if net.num_classes != cfg["num_classes"]:
        raise BadInput(f"{path.name} has {cfg['num_classes']} classes, {net.name} has {net.num_classes}")
    return head, cfg


def _input(net: Backbone, img: Any) -> torch.Tensor:
    if isinstance(img, Image.Image):
        return net.preprocess(img)
    if isinstance(img, torch.Tensor):
        x = img.detach().float()
        x = x[None] if x.ndim == 3 else x
        if tuple(x.shape) == (1, *net.input_shape):
            return x
    raise BadInput(f"scouter needs a PIL image (or a preprocessed (1,{net.input_shape}) tensor)")


@torch.no_grad()
def scouter_outputs(net: Backbone, img: Any, sign: str = "positive", checkpoint: str = "") -> dict[str, Any]:
    """Backbone features -> SCOUTER head: logits (K,), low-res attention (K,h,w), upsampled maps (K,H,W)."""
    from ...taps import capture

    head, cfg = load_scouter(net, sign, checkpoint)
    x = _input(net, img)
    mod = net.require_module("scouter")
    with capture(mod, [cfg["layer"]], detach=True) as st:
        backbone_logits = mod(x)
    logits, attn = head(st[cfg["layer"]].float())
    maps = F.interpolate(attn, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return {
        "logits": logits[0].numpy(),
        "attention": attn[0].numpy(),
        "maps": maps[0].numpy().astype(np.float32),
        "backbone_logits": backbone_logits[0].float().numpy(),
        "config": cfg,
    }


@register(
    "scouter",
    "attribute",
    ScouterParams,
    paper="Li et al., SCOUTER: Slot Attention-based Classifier for Explainable Image Recognition, ICCV 2021",
    needs_grad=True,
)
def run(net: Backbone, img: Any, p: ScouterParams, obs: Observer) -> Result:
    """SCOUTER slot attention for one class: the explanation the classifier itself used (positive or negative)."""
    t0 = time.perf_counter()
    target = net.check_target(p.target)
    out = scouter_outputs(net, img, p.sign, p.checkpoint)
    logits = out["logits"]
    z = logits - logits.max()
    probs = np.exp(z) / np.exp(z).sum()
    pred = int(np.argmax(logits))
    if target is None:
        target = pred
    labels = net.labels or [str(i) for i in range(len(logits))]
    top = np.argsort(-probs)[:3]
    obs.progress(1.0, "scouter done")
    return Result(
        "map",
        out["maps"][target].copy(),
        meta={
            "target": {
                "index": target,
                "label": labels[target],
                "logit": float(logits[target]),
                "probability": float(probs[target]),
            },
            "sign": p.sign,
            "explains": "why" if p.sign == "positive" else "why not",
            "prediction": pred,
            "prediction_label": labels[pred],
            "top3": [(labels[i], float(probs[i])) for i in top],
            "backbone_prediction": int(np.argmax(out["backbone_logits"])),
            "attention_mass": float(out["attention"][target].mean()),
            "layer": out["config"]["layer"],
            "grid": tuple(out["attention"].shape[1:]),
            "backend": "torch",
            "time_s": time.perf_counter() - t0,
        },
        image=img if isinstance(img, Image.Image) else None,
        extras={"maps": out["maps"], "attention": out["attention"], "logits": logits},
    )
