"""Architectures convlens builds itself, and the structure they declare for the engines that split them.

An architecture that can be cut into a chain of stages declares it with a `decomposition()` method (after timm's
`feature_info`: the network says how it is built, so callers never sniff attribute names); the incremental
occlusion engine (`accel.runtime.incremental`) runs the chain piece by piece on crops and the tail whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Decomposition:
    """A network as `chain` -> optional `head` -> `pool` -> flatten -> optional `fc`.

    `chain` lists (layer name as in `Backbone.layers()`, module) in execution order; every prefix of it can be
    cut off and run on a crop of its input. `crop_only`: the chain's outputs depend on the input size (TF "SAME"
    padding), so only crop mode is exact. `split_cost`: how single split points are ranked, by conv output
    "volume" or by "macs" (what was measured to rank this family's splits right)."""

    chain: list[tuple[str, nn.Module]]
    pool: nn.Module
    head: nn.Module | None = None
    fc: nn.Module | None = None
    crop_only: bool = False
    split_cost: str = "volume"


def sequential_chain(prefix: str, seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The children of a Sequential named `prefix.<child>` (how `features` stacks are chained)."""
    return [(f"{prefix}.{n}", m) for n, m in seq.named_children()]


def decomposition(module: nn.Module | None) -> Decomposition | None:
    """The decomposition `module` declares, or None (no torch module, or an architecture that declares none)."""
    declare = getattr(module, "decomposition", None)
    if module is None or not callable(declare):
        return None
    dec = declare()
    return dec if isinstance(dec, Decomposition) else None


__all__ = ["Decomposition", "decomposition", "sequential_chain"]
