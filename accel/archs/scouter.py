"""SCOUTER head (Li et al., ICCV 2021): an explainable slot-attention classifier on top of frozen conv features.

One slot per class attends over the feature map with a *sigmoid* (not softmax) attention, so each class owns an
independent map A_k in [0,1]^(h x w). The class score is the attended feature mass, e * mean_d(A_k V): with e = +1
(SCOUTER+) a class scores high by finding evidence *for* it ("why"), with e = -1 (SCOUTER-) the winning class is
the one with the least attended mass, and every other class's map shows the evidence *against* it ("why not").
The area loss lambda * mean(A) keeps the explanatory regions small.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from accel.errors import BadInput

ARCHITECTURE = "accel.archs.scouter.ScouterHead"
SIGNS = {"positive": 1, "negative": -1}


def position_embedding(dim: int, h: int, w: int) -> torch.Tensor:
    """A fixed 2-D sine/cosine position code (dim, h, w): half the channels encode the row, half the column."""
    if dim % 4:
        raise BadInput(f"SCOUTER hidden size must be a multiple of 4 for the position code, got {dim}")
    quarter = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    py = ys[:, None] * freq[None]  # (h, q)
    px = xs[:, None] * freq[None]  # (w, q)
    row = torch.cat([py.sin(), py.cos()], 1).T[:, :, None].expand(2 * quarter, h, w)
    col = torch.cat([px.sin(), px.cos()], 1).T[:, None, :].expand(2 * quarter, h, w)
    return torch.cat([row, col], 0).contiguous()


class ScouterHead(nn.Module):
    """xSlot attention classifier: features (N,C,h,w) -> (logits (N,K), attention (N,K,h,w))."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 64,
        iters: int = 3,
        sign: str = "positive",
    ) -> None:
        """Build a head with freshly initialised weights; `sign` is "positive" (SCOUTER+) or "negative" (SCOUTER-)."""
        super().__init__()
        if sign not in SIGNS:
            raise BadInput(f"SCOUTER sign must be 'positive' or 'negative', got {sign!r}")
        if iters < 1 or hidden < 4 or in_channels < 1 or num_classes < 2:
            raise BadInput("SCOUTER needs iters >= 1, hidden >= 4, in_channels >= 1 and at least 2 classes")
        self.config: dict[str, int | str] = {
            "in_channels": int(in_channels),
            "num_classes": int(num_classes),
            "hidden": int(hidden),
            "iters": int(iters),
            "sign": sign,
        }
        self.e = float(SIGNS[sign])
        self.iters = iters
        self.scale = hidden**-0.5
        self.reduce = nn.Conv2d(in_channels, hidden, 1)
        self.slots = nn.Parameter(
            torch.randn(1, num_classes, hidden) * hidden**-0.5
        )  # one learned slot per class
        self.to_q = nn.Linear(hidden, hidden)
        self.to_k = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.gru = nn.GRUCell(hidden, hidden)
        self._pos: dict[tuple[int, int], torch.Tensor] = {}

    def _position(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        if (h, w) not in self._pos:
            self._pos[(h, w)] = position_embedding(int(self.config["hidden"]), h, w)
        return self._pos[(h, w)].to(like.dtype)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (N, K) and each class's final attention map (N, K, h, w) in [0, 1]."""
        n, _, h, w = feats.shape
        v = F.relu(self.reduce(feats))  # (N, d, h, w)
        keys = self.to_k((v + self._position(h, w, v)).flatten(2).transpose(1, 2))  # (N, hw, d)
        vals = v.flatten(2).transpose(1, 2)  # (N, hw, d)
        d = vals.shape[-1]
        slots = self.slots.expand(n, -1, -1)
        for _ in range(self.iters):
            q = self.to_q(slots)  # (N, K, d)
            attn = torch.sigmoid(torch.einsum("nkd,npd->nkp", q, keys) * self.scale)  # (N, K, hw)
            updates = torch.einsum("nkp,npd->nkd", attn, vals)  # attended feature mass per class
            slots = self.gru(updates.reshape(-1, d), slots.reshape(-1, d)).reshape(n, -1, d)
        logits = self.e * updates.mean(-1)
        return logits, attn.reshape(n, -1, h, w)

    @staticmethod
    def area_loss(attn: torch.Tensor) -> torch.Tensor:
        """The SCOUTER area loss before lambda: the mean attention over batch, classes and positions."""
        return attn.mean()


def save_head(head: ScouterHead, path: Path, extra: dict[str, Any]) -> None:
    """Write the head's weights (safetensors) with its config and `extra` (backbone, layer, ...) as metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous() for k, v in head.state_dict().items()}
    meta = {"format": "pt", "architecture": ARCHITECTURE, "config": json.dumps({**head.config, **extra})}
    save_file(state, str(path), metadata=meta)
    Path(path).chmod(0o644)  # safetensors writes 0600; checkpoints are shared files


def load_head(path: str | Path) -> tuple[ScouterHead, dict[str, Any]]:
    """Read a head written by `save_head`: (eval-mode head with frozen weights, its config incl. backbone/layer)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise BadInput(
            f"no SCOUTER checkpoint at {p}; train one with "
            "`python -m accel.training.scouter --backbone fashion_cnn --sign positive`"
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"{p.name}: not a valid safetensors file ({e})") from None
    if meta.get("architecture") != ARCHITECTURE or "config" not in meta:
        raise BadInput(
            f"{p.name} is not a SCOUTER head checkpoint (architecture {meta.get('architecture')!r})"
        )
    cfg = json.loads(meta["config"])
    head = ScouterHead(cfg["in_channels"], cfg["num_classes"], cfg["hidden"], cfg["iters"], cfg["sign"])
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise BadInput(f"{p.name}: weights do not fit the SCOUTER config in its metadata ({e})") from None
    head.eval()
    for prm in head.parameters():
        prm.requires_grad_(False)
    return head, cfg
