"""Train FashionCNN on Fashion-MNIST (deterministic, CPU-friendly) and write its safetensors checkpoint and model card.

Usage: ``python -m accel.training.fashion_cnn --out models/fashion_cnn.safetensors --epochs 5``
"""

from __future__ import annotations

import argparse
import contextlib
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
from accel.zoo.cards import file_sha256, write_card

ARCHITECTURE = "accel.archs.fashion_cnn.FashionCNN"
DEFAULT_EPOCHS = 5
MAX_LR = 3e-3
WEIGHT_DECAY = 0.05
EVAL_BATCH = 1000

Progress = Callable[[float, str], None]


def _set_determinism(seed: int) -> None:
    """Seed torch and numpy and ask torch for deterministic kernels (warn-only where none exists)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    with contextlib.suppress(Exception):  # older builds: seeding alone still makes CPU runs repeatable
        torch.use_deterministic_algorithms(True, warn_only=True)


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> normalised float32 (N, 1, 28, 28) in channels-last layout (faster convs on CPU)."""
    tensor = torch.as_tensor(images)
    return FashionCNN.normalize(tensor).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(model: FashionCNN, images: np.ndarray, labels: np.ndarray, batch: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of `model` on uint8 images (N, 28, 28) with int labels (N,)."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(_to_input(images[start : start + batch]))
        correct += int((logits.argmax(1) == torch.as_tensor(labels[start : start + batch])).sum())
    return correct / max(len(images), 1)


def _state_dict_f32(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Float32 contiguous state dict without BatchNorm's int64 step counters (load_state_dict fills them in)."""
    return {
        name: tensor.detach().to(torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def train_fashion_cnn(
    out: Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    batch_size: int = 128,
    progress: Progress | None = None,
) -> dict:
    """Train FashionCNN on the 60k training images, evaluate on the 10k test images, save `out` (safetensors)."""
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    out = Path(out)
    torch.set_num_threads(2)
    _set_determinism(seed)
    report = progress or (lambda fraction, message: None)

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    images = torch.from_numpy(train_x)
    targets = torch.from_numpy(train_y)

    model = FashionCNN().to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=MAX_LR,
        total_steps=total_steps,
        pct_start=0.25,
        div_factor=10.0,
        final_div_factor=100.0,
    )
    generator = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        running_loss, running_correct, seen = 0.0, 0, 0
        for first in range(0, len(images), batch_size):
            index = order[first : first + batch_size]
            batch, labels = images[index], targets[index]
            flip = (
                torch.rand(len(index), generator=generator) < 0.5
            )  # random horizontal flip: clothes are symmetric
            batch = torch.where(flip[:, None, None], batch.flip(-1), batch)
            logits = model(_to_input(batch))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            running_loss += loss.item() * len(index)
            running_correct += int((logits.argmax(1) == labels).sum())
            seen += len(index)
            if step % 50 == 0 or first + batch_size >= len(images):
                report(
                    step / total_steps,
                    f"epoch {epoch + 1}/{epochs} step {step}/{total_steps} "
                    f"loss {running_loss / seen:.4f} train acc {running_correct / seen:.4f}",
                )
    train_seconds = time.perf_counter() - start

    test_accuracy = evaluate(model, test_x, test_y)
    report(1.0, f"test accuracy {test_accuracy:.4f} after {train_seconds:.0f} s of training")

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(_state_dict_f32(model), str(out), metadata={"format": "pt", "architecture": ARCHITECTURE})
    out.chmod(0o644)  # safetensors writes owner-only; the checkpoint is meant to be shipped and shared
    return {
        "test_accuracy": round(test_accuracy, 4),
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "seed": seed,
        "params": params,
        "sha256": file_sha256(out),
    }


def write_model_card(checkpoint: Path, metrics: dict, training_command: str) -> Path:
    """Write the model card `<checkpoint stem>.toml` next to the checkpoint; returns its path."""
    checkpoint = Path(checkpoint)
    card = {
        "name": "fashion_cnn",
        "architecture": ARCHITECTURE,
        "file": checkpoint.name,
        "sha256": metrics["sha256"],
        "params": metrics["params"],
        "input": "1x28x28 grayscale, (x/255-0.2860)/0.3530",
        "classes": list(FashionCNN.CLASSES),
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist), 60k train / 10k test",
        "test_accuracy": metrics["test_accuracy"],
        "epochs": metrics["epochs"],
        "seed": metrics["seed"],
        "training_command": training_command,
        "train_seconds": metrics["train_seconds"],
        "licence": "weights trained by convlens; Fashion-MNIST is MIT-licensed (Zalando Research)",
        "cam_layer": FashionCNN.CAM_LAYER,
        "embedding_layer": FashionCNN.EMBEDDING_LAYER,
    }
    return write_card(checkpoint, card, "accel.training.fashion_cnn")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, save the checkpoint and model card, print the metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m accel.training.fashion_cnn", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("models/fashion_cnn.safetensors"))
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:6.1%}] {message}", file=sys.stderr, flush=True)

    metrics = train_fashion_cnn(args.out, args.epochs, args.seed, args.batch_size, progress)
    command = (
        f"python -m accel.training.fashion_cnn --out {args.out} --epochs {args.epochs} --seed {args.seed}"
    )
    if args.batch_size != 128:
        command += f" --batch-size {args.batch_size}"
    card = write_model_card(args.out, metrics, command)
    print(json.dumps({**metrics, "card": str(card)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
