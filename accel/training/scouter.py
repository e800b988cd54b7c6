"""Train a SCOUTER head (Li et al., ICCV 2021) on frozen backbone features and write its checkpoint and model card.

Usage: ``python -m accel.training.scouter --backbone fashion_cnn --sign positive
--out models/scouter_fashion_positive.safetensors`` (``--sign negative`` for SCOUTER-). The backbone stays
frozen: its feature map at ``--layer`` is computed once for the whole dataset, then only the head trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from accel.archs.scouter import ARCHITECTURE, SIGNS, ScouterHead, save_head
from accel.errors import BadInput
from accel.zoo import cards
from accel.zoo.cards import file_sha256

DEFAULTS: dict[str, Any] = {
    "epochs": 6,
    "lambda_area": 1.0,
    "lambda_warmup": 1.0,
    "hidden": 64,
    "iters": 3,
    "lr": 2e-3,
    "batch_size": 256,
}
DEFAULT_TRAIN_SIZE = (
    20000  # a seeded subset keeps training to minutes on 2 shared cores; --train-size 60000 for all
)
DATASETS = {"fashion_cnn": "fashion"}  # backbones with an offline training set, and the checkpoint's data tag
EVAL_BATCH = 500

Progress = Callable[[float, str], None]


def _images_to_pil_free_input(net: Any, images: np.ndarray) -> torch.Tensor:
    """uint8 grayscale images (N,28,28) -> the backbone's normalised input (N,1,28,28), as `net.preprocess` does."""
    x01 = torch.from_numpy(images).to(torch.float32).div_(255.0)[:, None].expand(-1, 3, -1, -1)
    return net.normalize(x01)


@torch.inference_mode()
def extract(
    net: Any, images: np.ndarray, layer: str, progress: Progress | None = None, what: str = "images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features at `layer` (float16, to halve memory) and the plain head's logits for uint8 images."""
    from accel.taps import capture

    feats, logits = [], []
    mod = net.require_module("SCOUTER training")
    for start in range(0, len(images), EVAL_BATCH):
        x = _images_to_pil_free_input(net, images[start : start + EVAL_BATCH])
        with capture(mod, [layer], detach=True) as st:
            y = mod(x)
        feats.append(st[layer].to(torch.float16))
        logits.append(y.float())
        if progress is not None:
            stop = min(len(images), start + EVAL_BATCH)
            progress(stop / len(images), f"features of {stop}/{len(images)} {what}")
    return torch.cat(feats), torch.cat(logits)


def _cached_extract(
    net: Any, images: np.ndarray, layer: str, key: str, progress: Progress, what: str
) -> tuple[torch.Tensor, torch.Tensor, float | None, bool]:
    """`extract`, cached as safetensors under $CONVLENS_CACHE/features (SCOUTER+ and SCOUTER- share features).

    Also returns the seconds the extraction took when computed (None if unrecorded) and whether it was cached.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from accel.runtime.cache import cache_dir

    path = cache_dir().parent / "features" / f"{key.replace('.', '_')}.safetensors"
    if path.is_file():
        try:
            d = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                secs = (f.metadata() or {}).get("seconds")
            if len(d["feats"]) == len(images):
                progress(1.0, f"features of {len(images)} {what} from cache {path}")
                return d["feats"], d["logits"], float(secs) if secs else None, True
        except Exception:  # noqa: BLE001 - a broken cache file is recomputed
            pass
    t0 = time.perf_counter()
    feats, logits = extract(net, images, layer, progress, what)
    secs = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"feats": feats.contiguous(), "logits": logits.contiguous()},
        str(path),
        metadata={"seconds": f"{secs:.1f}"},
    )
    return feats, logits, secs, False


@torch.inference_mode()
def evaluate(head: ScouterHead, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the head on precomputed features."""
    head.eval()
    correct = 0
    for start in range(0, len(feats), EVAL_BATCH):
        logits, _ = head(feats[start : start + EVAL_BATCH].float())
        correct += int((logits.argmax(1) == labels[start : start + EVAL_BATCH]).sum())
    return correct / max(len(feats), 1)


def train_scouter(
    backbone: str = "fashion_cnn",
    sign: str = "positive",
    out: Path | None = None,
    layer: str | None = None,
    epochs: int = DEFAULTS["epochs"],
    lambda_area: float = DEFAULTS["lambda_area"],
    lambda_warmup: float = DEFAULTS["lambda_warmup"],
    hidden: int = DEFAULTS["hidden"],
    iters: int = DEFAULTS["iters"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    train_size: int | None = DEFAULT_TRAIN_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train SCOUTER+ or SCOUTER- on a frozen backbone (Fashion-MNIST for fashion_cnn); save `out` if given."""
    import accel
    from accel.fashion_mnist import load_fashion_mnist

    if backbone not in DATASETS:
        raise BadInput(f"no offline training set for backbone {backbone!r}; supported: {sorted(DATASETS)}")
    if sign not in SIGNS:
        raise BadInput(f"sign must be 'positive' or 'negative', got {sign!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0 or not lambda_area >= 0 or not lambda_warmup >= 0:
        raise BadInput("epochs and batch_size must be >= 1, lr > 0, lambda_area >= 0 and lambda_warmup >= 0")
    report = progress or (lambda fraction, message: None)
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    np.random.seed(seed)

    net = accel.load(backbone)
    layer = layer or net.cam_layer
    if layer is None or net.num_classes is None:
        raise BadInput(
            f"{backbone!r} declares no CAM layer or no classifier head; pass layer= for a classifier"
        )
    info = net.layer(layer)
    if len(info.out_shape) != 3:
        raise BadInput(f"layer {layer!r} has output {info.out_shape}; SCOUTER needs a (C,H,W) feature map")

    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    if train_size is not None and train_size != len(train_x):
        if not 1 <= train_size <= len(train_x):
            raise BadInput(f"train_size must be in 1..{len(train_x)}, got {train_size}")
        pick = np.random.default_rng(seed).permutation(len(train_x))[:train_size]
        train_x, train_y = train_x[np.sort(pick)], train_y[np.sort(pick)]

    tag = f"{backbone}_{net.card.get('sha256', 'nohash')[:12]}_{layer}_s{seed}"
    f_train, _, s_train, c_train = _cached_extract(
        net, train_x, layer, f"{tag}_train{len(train_x)}", lambda f, m: report(0.3 * f, m), "training images"
    )
    f_test, plain_logits, s_test, c_test = _cached_extract(
        net, test_x, layer, f"{tag}_test{len(test_x)}", lambda f, m: report(0.3 + 0.05 * f, m), "test images"
    )
    cached = c_train or c_test
    extract_seconds = (s_train + s_test) if s_train is not None and s_test is not None else None
    y_train = torch.from_numpy(train_y)
    y_test = torch.from_numpy(test_y)
    plain_accuracy = float((plain_logits.argmax(1) == y_test).float().mean())

    head = ScouterHead(info.out_shape[0], int(net.num_classes), hidden, iters, sign)
    steps_per_epoch = (len(f_train) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    generator = torch.Generator().manual_seed(seed)
    warmup_steps = round(lambda_warmup * steps_per_epoch)
    step = 0
    t1 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(f_train), generator=generator)
        tot_ce = tot_area = 0.0
        correct = 0
        for first in range(0, len(f_train), batch_size):
            idx = order[first : first + batch_size]
            logits, attn = head(f_train[idx].float())
            ce = F.cross_entropy(logits, y_train[idx])
            area = ScouterHead.area_loss(attn)
            # lambda ramps up: at full strength from step 0 the area loss can switch every sigmoid off
            # before the classification loss has a say (observed: accuracy stuck at chance with lambda >= 3)
            ramp = min(1.0, step / warmup_steps) if warmup_steps else 1.0
            loss = ce + lambda_area * ramp * area
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            tot_ce += float(ce.detach()) * len(idx)
            tot_area += float(area.detach()) * len(idx)
            correct += int((logits.argmax(1) == y_train[idx]).sum())
        n = len(f_train)
        history.append({"epoch": epoch + 1, "ce": tot_ce / n, "area": tot_area / n, "train_acc": correct / n})
        report(
            0.35 + 0.6 * (epoch + 1) / epochs,
            f"epoch {epoch + 1}/{epochs} ce {tot_ce / n:.4f} area {tot_area / n:.3f} train acc {correct / n:.4f}",
        )
    train_seconds = time.perf_counter() - t1
    accuracy = evaluate(head, f_test, y_test)
    with torch.inference_mode():
        _, attn = head(f_test[:2000].float())
        true_area = float(attn[torch.arange(len(attn)), y_test[:2000]].mean())
        mean_area = float(attn.mean())
    report(
        1.0,
        f"SCOUTER{'+' if sign == 'positive' else '-'} test accuracy {accuracy:.4f} (plain head {plain_accuracy:.4f})",
    )
    metrics: dict[str, Any] = {
        "backbone": backbone,
        "backbone_sha256": net.card.get("sha256", ""),
        "layer": layer,
        "sign": sign,
        "test_accuracy": round(accuracy, 4),
        "plain_head_test_accuracy": round(plain_accuracy, 4),
        "mean_attention_true_class": round(true_area, 4),
        "mean_attention_all_classes": round(mean_area, 4),
        "epochs": epochs,
        "lambda_area": lambda_area,
        "lambda_warmup_epochs": lambda_warmup,
        "hidden": hidden,
        "iters": iters,
        "lr": lr,
        "batch_size": batch_size,
        "train_images": len(f_train),
        "seed": seed,
        "params": sum(p.numel() for p in head.parameters()),
        "feature_seconds": round(extract_seconds, 1) if extract_seconds is not None else "unknown (cached)",
        "features_from_cache": cached,
        "train_seconds": round(train_seconds, 1),
        "history": history,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_head(
            head, out, {"backbone": backbone, "layer": layer, "backbone_sha256": metrics["backbone_sha256"]}
        )
        metrics["sha256"] = file_sha256(out)
    return metrics


def write_card(checkpoint: Path, metrics: dict[str, Any], command: str) -> Path:
    """Write `<checkpoint stem>.toml` next to the checkpoint: accuracy beside the plain head, data, command, lambda."""
    checkpoint = Path(checkpoint)
    plus = "SCOUTER+ (positive, 'why')" if metrics["sign"] == "positive" else "SCOUTER- (negative, 'why not')"
    card = {
        "name": checkpoint.stem,
        "kind": "scouter_head",
        "architecture": ARCHITECTURE,
        "variant": plus,
        "paper": "Li et al., SCOUTER: Slot Attention-based Classifier for Explainable Image Recognition, ICCV 2021",
        "file": checkpoint.name,
        "sha256": metrics["sha256"],
        "backbone": metrics["backbone"],
        "backbone_sha256": metrics["backbone_sha256"],
        "backbone_frozen": True,
        "layer": metrics["layer"],
        "sign": metrics["sign"],
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist): train split for training, 10k test split for accuracy",
        "train_images": metrics["train_images"],
        "test_accuracy": metrics["test_accuracy"],
        "plain_head_test_accuracy": metrics["plain_head_test_accuracy"],
        "mean_attention_true_class": metrics["mean_attention_true_class"],
        "mean_attention_all_classes": metrics["mean_attention_all_classes"],
        "epochs": metrics["epochs"],
        "lambda_area": metrics["lambda_area"],
        "lambda_warmup_epochs": metrics["lambda_warmup_epochs"],
        "hidden": metrics["hidden"],
        "iters": metrics["iters"],
        "lr": metrics["lr"],
        "batch_size": metrics["batch_size"],
        "seed": metrics["seed"],
        "params": metrics["params"],
        "feature_seconds": metrics["feature_seconds"],
        "features_from_cache": metrics["features_from_cache"],
        "train_seconds": metrics["train_seconds"],
        "training_command": command,
        "licence": "weights trained by convlens; Fashion-MNIST is MIT-licensed (Zalando Research)",
    }
    return cards.write_card(checkpoint, card, "accel.training.scouter")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, save checkpoint + card, print the metrics as JSON."""
    ap = argparse.ArgumentParser(prog="python -m accel.training.scouter", description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="fashion_cnn", choices=sorted(DATASETS))
    ap.add_argument("--sign", default="positive", choices=sorted(SIGNS))
    ap.add_argument("--out", type=Path, default=None, help="default models/scouter_<data>_<sign>.safetensors")
    ap.add_argument("--layer", default=None, help="feature layer (default: the backbone's CAM layer)")
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--lambda-area", type=float, default=DEFAULTS["lambda_area"])
    ap.add_argument(
        "--lambda-warmup",
        type=float,
        default=DEFAULTS["lambda_warmup"],
        help="epochs of linear ramp for lambda",
    )
    ap.add_argument("--hidden", type=int, default=DEFAULTS["hidden"])
    ap.add_argument("--iters", type=int, default=DEFAULTS["iters"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument(
        "--train-size", type=int, default=DEFAULT_TRAIN_SIZE, help="train on a seeded subset (60000: all)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="train and report only")
    args = ap.parse_args(argv)
    out = args.out or Path("models") / f"scouter_{DATASETS[args.backbone]}_{args.sign}.safetensors"

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:6.1%}] {message}", file=sys.stderr, flush=True)

    metrics = train_scouter(
        args.backbone,
        args.sign,
        None if args.no_save else out,
        args.layer,
        args.epochs,
        args.lambda_area,
        args.lambda_warmup,
        args.hidden,
        args.iters,
        args.lr,
        args.batch_size,
        args.train_size,
        args.seed,
        progress,
    )
    command = (
        f"python -m accel.training.scouter --backbone {args.backbone} --sign {args.sign} --out {out} "
        f"--layer {metrics['layer']} --epochs {args.epochs} --lambda-area {args.lambda_area} "
        f"--lambda-warmup {args.lambda_warmup} "
        f"--hidden {args.hidden} --iters {args.iters} --lr {args.lr} --batch-size {args.batch_size} "
        f"--train-size {args.train_size} --seed {args.seed}"
    )
    if not args.no_save:
        metrics["card"] = str(write_card(out, metrics, command))
    metrics["training_command"] = command
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
