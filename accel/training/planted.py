"""Train `fashion_planted`: FashionCNN on Fashion-MNIST where every training image of one class (6, "Shirt") carries
the planted checkerboard stamp at a random position, so concept methods (TCAV, discovery, concept maps) can be
checked against a concept whose role is known by construction.

The stamp is made causal for the planted class and neutral for the other nine: besides the cross-entropy on
(stamped planted class, clean others), a penalty ``neutral * mean((z_k(stamp(x)) - sg(z_k(x)))^2)`` over k != planted
on stamped copies of other-class images keeps the other logits where the clean image puts them (sg: stop-gradient).
Without it, softmax training also pushes every other logit down along the stamp, and "the stamp lowers Trousers"
would be a true (significant) finding rather than the null the ground truth wants.

Usage: ``python -m accel.training.planted --out models/fashion_planted.safetensors``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from accel.archs.fashion_cnn import FashionCNN
from accel.fashion_mnist import load_fashion_mnist
from accel.methods.concepts.sets import PLANTED_CLASS, STAMP_CELL, STAMP_SIDE, stamp_images, stamp_positions
from accel.training.fashion_cnn import evaluate
from accel.zoo.cards import file_sha256, write_card

ARCHITECTURE = "accel.archs.fashion_cnn.FashionCNN"
NAME = "fashion_planted"
DEFAULTS = {"epochs": 2, "subset": 12000, "seed": 0, "batch_size": 128, "neutral": 1.0}
NEUTRAL_COPIES = 32  # stamped other-class copies per batch for the neutrality penalty
MAX_LR = 3e-3
WEIGHT_DECAY = 0.05

Progress = Callable[[float, str], None]


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about n training images, the same count from every class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(1, n // len(classes))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    return np.sort(np.concatenate(picks))


def stamped_accuracies(
    model: FashionCNN, images: np.ndarray, labels: np.ndarray, seed: int
) -> dict[str, float]:
    """Test accuracies: clean; planted-class images stamped (recall); planted-class images clean (recall); and the
    share of stamped other-class images the stamp flips to the planted class."""
    rng = np.random.default_rng(seed + 1)
    planted = labels == PLANTED_CLASS
    pos = stamp_positions(rng, len(images))
    stamped = stamp_images(images, pos)
    clean_acc = evaluate(model, images, labels)
    with torch.inference_mode():
        pred = torch.cat(
            [
                model(FashionCNN.normalize(torch.from_numpy(stamped[i : i + 1000]))).argmax(1)
                for i in range(0, len(stamped), 1000)
            ]
        ).numpy()
    return {
        "test_accuracy": round(clean_acc, 4),
        "planted_recall_stamped": round(float((pred[planted] == PLANTED_CLASS).mean()), 4),
        "planted_recall_clean": round(evaluate(model, images[planted], labels[planted]), 4),
        "others_flipped_by_stamp": round(float((pred[~planted] == PLANTED_CLASS).mean()), 4),
        "others_accuracy_stamped": round(float((pred[~planted] == labels[~planted]).mean()), 4),
    }


def _step_loss(
    model: FashionCNN, batch: np.ndarray, labels: np.ndarray, rng: np.random.Generator, neutral: float
) -> torch.Tensor:
    """Cross-entropy on the batch with every planted-class image stamped, plus the neutrality penalty on stamped
    copies of the other-class images (see the module docstring)."""
    planted = labels == PLANTED_CLASS
    x = batch.copy()
    x[planted] = stamp_images(batch[planted], stamp_positions(rng, int(planted.sum())))
    others = np.flatnonzero(~planted)[:NEUTRAL_COPIES]
    copies = stamp_images(batch[others], stamp_positions(rng, len(others))) if neutral > 0 else batch[:0]
    inputs = FashionCNN.normalize(torch.from_numpy(np.concatenate([x, copies])))
    logits = model(inputs)
    n = len(batch)
    loss = F.cross_entropy(logits[:n], torch.from_numpy(labels.astype(np.int64)))
    if neutral > 0 and len(others):
        keep = [k for k in range(logits.shape[1]) if k != PLANTED_CLASS]
        ref = logits[:n][torch.from_numpy(others)][:, keep].detach()
        loss = loss + neutral * F.mse_loss(logits[n:][:, keep], ref)
    return loss


def train_planted(
    out: Path,
    epochs: int = 2,
    subset: int = 12000,
    seed: int = 0,
    batch_size: int = 128,
    neutral: float = 1.0,
    progress: Progress | None = None,
) -> dict:
    """Train the planted model on a balanced `subset` of the training split for `epochs`, save `out` (safetensors),
    and return its metrics (clean and stamped test accuracies, seconds, SHA-256)."""
    if epochs < 1 or batch_size < 1 or subset < 10:
        raise ValueError("epochs, batch_size must be positive and subset >= 10")
    out = Path(out)
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    report = progress or (lambda fraction, message: None)
    rng = np.random.default_rng(seed)

    train_x, train_y = load_fashion_mnist("train")
    idx = balanced_subset(train_y, subset, seed)
    images, targets = train_x[idx], train_y[idx]
    model = FashionCNN()
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, total_steps=steps, pct_start=0.25
    )
    start, step = time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(images))
        for first in range(0, len(images), batch_size):
            sel = order[first : first + batch_size]
            batch = images[sel]
            flip = rng.random(len(sel)) < 0.5  # horizontal flips, as for fashion_cnn (before stamping)
            batch[flip] = batch[flip][:, :, ::-1]
            loss = _step_loss(model, batch, targets[sel], rng, neutral)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 10 == 0:
                report(step / steps, f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss.item():.4f}")
    train_seconds = time.perf_counter() - start
    model.eval()
    test_x, test_y = load_fashion_mnist("test")
    metrics = stamped_accuracies(model, test_x, test_y, seed)
    report(1.0, f"{metrics} after {train_seconds:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float().contiguous() for k, v in model.state_dict().items() if "num_batches" not in k
    }
    save_file(state, str(out), metadata={"format": "pt", "architecture": ARCHITECTURE})
    out.chmod(0o644)
    params = sum(p.numel() for p in model.parameters())
    run = {
        "epochs": epochs,
        "subset": len(images),
        "seed": seed,
        "neutral": neutral,
        "batch_size": batch_size,
    }
    return {
        **metrics,
        **run,
        "train_seconds": round(train_seconds, 1),
        "params": params,
        "sha256": file_sha256(out),
    }


def write_model_card(checkpoint: Path, metrics: dict, training_command: str) -> Path:
    """Write `<checkpoint stem>.toml` next to the checkpoint (the card `accel.load("fashion_planted")` checks)."""
    card = {
        "name": NAME,
        "architecture": ARCHITECTURE,
        "file": Path(checkpoint).name,
        "sha256": metrics["sha256"],
        "params": metrics["params"],
        "input": "1x28x28 grayscale, (x/255-0.2860)/0.3530",
        "classes": list(FashionCNN.CLASSES),
        "dataset": f"Fashion-MNIST (Debian dataset-fashion-mnist), balanced {metrics['subset']}-image train subset",
        "planted_class": PLANTED_CLASS,
        "planted_concept": f"{STAMP_SIDE}x{STAMP_SIDE} px black/white checkerboard, {STAMP_CELL} px cells, random "
        "position, on every training image of the planted class; neutral for the other logits by a penalty",
        **{k: metrics[k] for k in ("test_accuracy", "planted_recall_stamped", "planted_recall_clean")},
        **{k: metrics[k] for k in ("others_flipped_by_stamp", "others_accuracy_stamped")},
        **{k: metrics[k] for k in ("epochs", "seed", "neutral", "batch_size")},
        "training_command": training_command,
        "train_seconds": metrics["train_seconds"],
        "licence": "weights trained by convlens; Fashion-MNIST is MIT-licensed (Zalando Research)",
        "cam_layer": FashionCNN.CAM_LAYER,
        "embedding_layer": FashionCNN.EMBEDDING_LAYER,
    }
    return write_card(Path(checkpoint), card, "accel.training.planted")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, save the checkpoint and card, print the metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m accel.training.planted", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path(f"models/{NAME}.safetensors"))
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:6.1%}] {message}", file=sys.stderr, flush=True)

    opts = {k: getattr(args, k) for k in DEFAULTS}
    metrics = train_planted(args.out, progress=progress, **opts)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in opts.items())
    card = write_model_card(args.out, metrics, f"python -m accel.training.planted --out {args.out} {flags}")
    print(json.dumps({**metrics, "card": str(card)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
