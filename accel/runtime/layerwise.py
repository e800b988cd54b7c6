"""Krypton's layer-wise projection (Nakandala et al., SIGMOD 2019) for incremental occlusion: the changed region
of an occluded copy grows layer by layer through the prefix, and each layer recomputes only that region from the
unchanged activation around it (less arithmetic than crop stages, but many small torch calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .sweep import Occlusion

Box = tuple[int, int, int, int]  # rows [r0, r1), columns [c0, c1)
Step = tuple[str, Box | None, Box | None]  # kind, input slice a layer needs, changed region of its input


def _pair(v: Any) -> tuple[int, int]:
    """A layer's int-or-pair hyperparameter as a pair."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def plan(prefix: nn.Sequential, H: int, W: int, r0: int, r1: int, c0: int, c1: int) -> list[Step]:
    """Per prefix layer: the input slice it needs and the output region that changes (Krypton's projection)."""
    steps: list[Step] = []
    h, w = H, W
    for m in prefix:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = _pair(m.kernel_size)
            st = _pair(m.stride)
            pd = _pair(m.padding)
            dil = _pair(getattr(m, "dilation", 1))
            ek = (dil[0] * (k[0] - 1) + 1, dil[1] * (k[1] - 1) + 1)
            oh = (h + 2 * pd[0] - ek[0]) // st[0] + 1
            ow = (w + 2 * pd[1] - ek[1]) // st[1] + 1
            i0 = max(0, -(-(r0 + pd[0] - ek[0] + 1) // st[0]))
            i1 = min(oh - 1, (r1 - 1 + pd[0]) // st[0])
            j0 = max(0, -(-(c0 + pd[1] - ek[1] + 1) // st[1]))
            j1 = min(ow - 1, (c1 - 1 + pd[1]) // st[1])
            y0, y1 = i0 * st[0] - pd[0], i1 * st[0] - pd[0] + ek[0]
            x0, x1 = j0 * st[1] - pd[1], j1 * st[1] - pd[1] + ek[1]
            steps.append(("win", (y0, y1, x0, x1), (r0, r1, c0, c1)))
            r0, r1, c0, c1 = i0, i1 + 1, j0, j1 + 1
            h, w = oh, ow
        else:
            steps.append(("pointwise", None, None))
    steps.append(("out", (r0, r1, c0, c1), None))
    return steps


def signature(step: Step) -> tuple:
    """A plan step without its absolute position (patches whose steps agree batch together)."""
    kind, g, rr = step
    if g is None:
        return (kind,)
    if rr is None:
        return (kind, g[1] - g[0], g[3] - g[2])
    return (kind, g[1] - g[0], g[3] - g[2], rr[0] - g[0], rr[1] - g[0], rr[2] - g[2], rr[3] - g[2])


def _window(base: torch.Tensor, g: Box, rr: Box, region: torch.Tensor, is_max: bool) -> torch.Tensor:
    """The slice [y0:y1, x0:x1] of the unchanged activation (padding outside), with the changed region pasted."""
    y0, y1, x0, x1 = g
    C, h, w = base.shape
    fill = float("-inf") if is_max else 0.0
    out = torch.full((C, y1 - y0, x1 - x0), fill, dtype=base.dtype)
    ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = base[:, ya:yb, xa:xb]
    r0, r1, c0, c1 = rr
    out[:, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = region
    return out


def _apply_unpadded(m: nn.Module, S: torch.Tensor) -> torch.Tensor:
    """Run a conv/pool layer on an already padded slice (padding 0)."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(S, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(S, m.kernel_size, m.stride, 0, m.dilation)
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(S, m.kernel_size, m.stride, 0)
    raise TypeError(
        f"layer-wise occlusion cannot window a {type(m).__name__}"
    )  # pragma: no cover - plan() guards


class Layerwise:
    """One image through the prefix, kept layer by layer, and the windows of an occlusion planned over it; gives
    the split activation of any run of windows with only their changed regions recomputed."""

    def __init__(self, prefix: nn.Sequential, x: torch.Tensor, occ: Occlusion) -> None:
        self.prefix = prefix
        self.occ = occ
        self.image = x[0].numpy()
        _, _, H, W = x.shape
        self.bases = [x[0]]
        with torch.no_grad():
            cur = x
            for m in prefix:
                cur = m(cur)
                self.bases.append(cur[0])
        self.base_split = self.bases[-1].numpy()
        wh, ww = occ.window
        self.plans: list[tuple[list[Step], tuple]] = []
        for r, c in occ.positions:
            steps = plan(prefix, H, W, r, r + wh, c, c + ww)
            self.plans.append((steps, tuple(signature(s) for s in steps)))

    def patched(self, start: int, stop: int) -> np.ndarray:
        """The split activations of windows [start, stop): the unchanged one with each changed region pasted in;
        windows whose plans agree go through each layer together."""
        acts = np.repeat(self.base_split[None], stop - start, axis=0)
        groups: dict[tuple, list[int]] = {}
        for idx in range(start, stop):
            groups.setdefault(self.plans[idx][1], []).append(idx)
        for members in groups.values():
            changed = self._changed(members)
            for n, idx in enumerate(members):
                out = self.plans[idx][0][-1][1]
                assert out is not None
                r0, r1, c0, c1 = out
                acts[idx - start, :, r0:r1, c0:c1] = changed[n]
        return acts

    def _changed(self, members: list[int]) -> np.ndarray:
        """The changed region at the split of each window in `members` (windows whose plans agree), grown layer by
        layer from the occluded patch."""
        occ = self.occ
        wh, ww = occ.window
        regions = []
        for idx in members:
            r, c = occ.positions[idx]
            regions.append(occ.make(self.image, idx, idx + 1)[0][:, r : r + wh, c : c + ww])
        R = torch.from_numpy(np.stack(regions))
        with torch.no_grad():
            for li, m in enumerate(self.prefix):
                if self.plans[members[0]][0][li][0] == "pointwise":
                    R = m(R)
                    continue
                slices: list[torch.Tensor] = []
                for idx in members:
                    _k, g, rr = self.plans[idx][0][li]
                    assert g is not None and rr is not None
                    slices.append(_window(self.bases[li], g, rr, R[len(slices)], isinstance(m, nn.MaxPool2d)))
                R = _apply_unpadded(m, torch.stack(slices))
        return R.numpy()
