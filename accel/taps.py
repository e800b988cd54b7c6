"""Intermediate-layer capture: forward hooks by module name, as a context manager.

A tap name is a module name from `net.layers()` (its output), or `<name>:in` (the module's first input, e.g. the
features a final Linear layer sees).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import BadInput


def resolve(module: nn.Module, name: str) -> nn.Module:
    """The sub-module called `name` (a dotted path), or BadInput listing some valid names."""
    mods = dict(module.named_modules())
    if name not in mods or name == "":
        sample = [n for n in mods if n][:12]
        raise BadInput(f"unknown layer {name!r}; layers include {sample} (see net.layers() for all)")
    return mods[name]


@contextmanager
def capture(
    module: nn.Module, names: Sequence[str], detach: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs (or `:in` inputs) of the named sub-modules during forward passes inside the block."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for tap in names:
        base, _, what = tap.partition(":")
        sub = resolve(module, base)

        if what == "in":

            def pre(_m: nn.Module, args: tuple, key: str = tap) -> None:
                store[key] = args[0].detach() if detach else args[0]

            handles.append(sub.register_forward_pre_hook(pre))
        elif what == "":

            def post(_m: nn.Module, _a: tuple, out: object, key: str = tap) -> None:
                t = out[0] if isinstance(out, (tuple, list)) else out
                if not isinstance(t, torch.Tensor):
                    raise BadInput(f"tap {key!r}: the layer's output is a {type(t).__name__}, not a tensor")
                store[key] = t.detach() if detach else t

            handles.append(sub.register_forward_hook(post))
        else:
            raise BadInput(f"tap {tap!r}: only '<layer>' or '<layer>:in' are understood")
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
