"""The optimisation loop every synthesis technique shares (Lucent's `render.render_vis`, ours with a result type).

`optimize` minimises an objective over an image parameterisation with Adam, plain gradient steps or L-BFGS, and
talks back through the Observer (progress, snapshots, one LossRecord per step, cancellation); it stops early on
a plateau or a caller's condition and never returns a NaN image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ....errors import BadInput
from ....registry import SILENT, Observer
from ....result import LossRecord
from .forward import check_layers, forward
from .objectives import Ctx, Objective
from .param import ImageParam
from .render import OptResult, to_pil
from .transforms import Transform

if TYPE_CHECKING:
    from ....backbone import Backbone

OPTIMIZERS = ("adam", "sgd", "lbfgs")


class _Diverged(Exception):
    """The loss or a parameter became NaN/inf (args[0]: the loss value)."""


def check_steps_lr(steps: int, lr: float, what: str) -> None:
    """BadInput for 0/negative steps or a non-positive / non-finite learning rate."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise BadInput(f"{what}: steps must be a whole number >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise BadInput(f"{what}: lr must be a positive finite number, got {lr!r}")


def make_optimizer(kind: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, plain SGD, or L-BFGS with a strong-Wolfe line search taking one step per call."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=1,
        max_eval=25,  # the default (1.25 * max_iter) would allow the line search a single evaluation
        history_size=50,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )


class _Evaluator:
    """The closure: one forward/objective/backward per call (L-BFGS calls it several times a step).

    It remembers the unscaled loss and terms of the first call of each step (what the loss curve records) and,
    for L-BFGS, divides every loss by the first one so networks with large activations do not stall it."""

    def __init__(
        self,
        net: Backbone,
        obj: Objective,
        param: ImageParam,
        opt: torch.optim.Optimizer,
        transform: Transform | None,
        seed: int,
        grad_hook: Callable[[ImageParam], None] | None,
        rescale: bool,
    ) -> None:
        self.net, self.obj, self.param, self.opt = net, obj, param, opt
        self.transform, self.grad_hook, self.rescale = transform, grad_hook, rescale
        self.gen = torch.Generator().manual_seed(int(seed))
        self.taps, self.need_logits = obj.taps, obj.needs_logits
        self.scale: float | None = None
        self.step = 0
        self.raw: float | None = None
        self.terms: dict[str, float] = {}

    def __call__(self) -> float:
        """Gradients of the (scaled) loss at the current image; returns that loss."""
        self.opt.zero_grad(set_to_none=True)
        img = self.param()
        x = self.transform(img, self.gen) if self.transform is not None else img
        acts, logits = forward(self.net, x, self.taps, self.need_logits)
        loss, terms = self.obj.evaluate(Ctx(img, x, self.net, acts, logits, self.step))
        if not torch.isfinite(loss):
            raise _Diverged(float(loss.detach()))
        if self.scale is None:
            self.scale = 1.0 / max(abs(float(loss.detach())), 1e-12) if self.rescale else 1.0
        scaled = loss * self.scale
        scaled.backward()
        if self.grad_hook is not None:
            self.grad_hook(self.param)
        if self.raw is None:
            self.raw, self.terms = float(loss.detach()), terms
        return float(scaled.detach())


@dataclass
class _Loop:
    """The steps of one `optimize` call: its settings, the loss curve so far and the last finite parameters."""

    ev: _Evaluator
    param: ImageParam
    params: list[nn.Parameter]
    obs: Observer
    steps: int
    lr: float
    optimizer: str
    lr_schedule: str
    span: tuple[float, float]
    snapshot_every: int
    early_stop: int
    early_stop_tol: float
    stop_when: Callable[[int, torch.Tensor], str | None] | None
    post_step: Callable[[ImageParam, int], None] | None
    history: list[float] = field(default_factory=list)
    terms_history: dict[str, list[float]] = field(default_factory=dict)
    good: list[torch.Tensor] = field(default_factory=list)
    step: int = 0

    def run(self) -> str | None:
        """Take up to `steps` steps; returns why it stopped early (None: it ran them all). Raises _Diverged."""
        self.good = [p.detach().clone() for p in self.params]
        for step in range(self.steps):
            self.step = self.ev.step = step
            if self.obs.should_stop():
                return f"cancelled at step {step}"
            self._one_step(step)
            self._record(step)
            reason = self._stop_reason(step)
            if reason:
                return reason
        return None

    def _one_step(self, step: int) -> None:
        """One optimiser step, the projections after it, and the finiteness check of the parameters."""
        opt = self.ev.opt
        if self.lr_schedule == "cosine" and self.optimizer != "lbfgs":
            for g in opt.param_groups:
                g["lr"] = self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / self.steps)))
        self.ev.raw = None
        if self.optimizer == "lbfgs":
            opt.step(self.ev)
        else:
            self.ev()
            opt.step()
            # Projecting between L-BFGS steps would break its curvature pairs: it is projected once, at the end.
            self.param.post_step()
        if self.post_step is not None:
            with torch.no_grad():
                self.post_step(self.param, step)
        if not all(torch.isfinite(p).all() for p in self.params):
            raise _Diverged(float("nan"))
        self.good = [p.detach().clone() for p in self.params]

    def _record(self, step: int) -> None:
        """Append the step's loss to the curve and tell the observer (loss record, progress, snapshot)."""
        loss_v = self.ev.raw if self.ev.raw is not None else float("nan")  # set by the step's first call
        self.history.append(loss_v)
        for k, v in self.ev.terms.items():
            self.terms_history.setdefault(k, []).append(v)
        self.obs.loss(LossRecord(step + 1, loss_v, {k: float(v) for k, v in self.ev.terms.items()}))
        lo, hi = self.span
        self.obs.progress(
            lo + (hi - lo) * (step + 1) / self.steps, f"step {step + 1}/{self.steps}  loss {loss_v:.4g}"
        )
        if self.snapshot_every > 0 and (step + 1) % self.snapshot_every == 0:
            with torch.no_grad():
                self.obs.snapshot(to_pil(self.param()), step + 1)

    def _stop_reason(self, step: int) -> str | None:
        """The caller's reason to stop, or a plateau of `early_stop` steps without relative improvement."""
        if self.stop_when is not None:
            with torch.no_grad():
                reason = self.stop_when(step, self.param())
            if reason:
                return reason
        h, n = self.history, self.early_stop
        if n > 0 and len(h) > n:
            best_before = min(h[:-n])
            if min(h[-n:]) >= best_before - self.early_stop_tol * abs(best_before):
                return f"early stop: no improvement over {n} steps (converged)"
        return None

    def restore_good(self) -> None:
        """Put back the last finite parameters (after a divergence)."""
        with torch.no_grad():
            for p, g in zip(self.params, self.good):
                p.copy_(g)


def _check_options(optimizer: str, transform: Transform | None, on_nan: str, what: str) -> None:
    """BadInput for an unknown optimiser or NaN policy, or L-BFGS with random transforms."""
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"{what}: optimizer must be adam, sgd or lbfgs, got {optimizer!r}")
    if optimizer == "lbfgs" and transform is not None:
        raise BadInput(
            f"{what}: L-BFGS needs a deterministic objective; turn random transforms off or use adam"
        )
    if on_nan not in ("raise", "stop"):
        raise BadInput(f"on_nan must be 'raise' or 'stop', got {on_nan!r}")


def optimize(
    net: Backbone,
    obj: Objective,
    param: ImageParam,
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    transform: Transform | None = None,
    seed: int = 0,
    observer: Observer | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    snapshot_every: int = 10,
    early_stop: int = 0,
    early_stop_tol: float = 1e-4,
    stop_when: Callable[[int, torch.Tensor], str | None] | None = None,
    grad_hook: Callable[[ImageParam], None] | None = None,
    post_step: Callable[[ImageParam, int], None] | None = None,
    lr_schedule: str = "constant",
    on_nan: str = "raise",
    what: str = "synthesis",
) -> OptResult:
    """Minimise `obj` over `param` for up to `steps` steps; returns the image, losses per step and the stop reason.

    optimizer: "adam", "sgd" (plain steps; pair with a `grad_hook` that normalises) or "lbfgs" (deterministic
    objectives only; the loss is rescaled by its starting value so networks with large activations, like the
    Caffe VGG19, do not stall it). `early_stop` = patience in steps without a relative improvement of
    `early_stop_tol`; `stop_when(step, image)` may return a reason to stop; `observer` gets progress (mapped onto
    `progress_span`), a snapshot every `snapshot_every` steps and a loss record per step, and cancels. A NaN/inf
    loss or image raises BadInput (on_nan="raise") or stops at the last finite image (on_nan="stop")."""
    check_steps_lr(steps, lr, what)
    _check_options(optimizer, transform, on_nan, what)
    check_layers(net, obj.taps)
    params = [p for p in param.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, lr)
    ev = _Evaluator(net, obj, param, opt, transform, seed, grad_hook, rescale=optimizer == "lbfgs")
    t0 = time.perf_counter()
    loop = _Loop(
        ev,
        param,
        params,
        observer if observer is not None else SILENT,
        steps,
        lr,
        optimizer,
        lr_schedule,
        progress_span,
        snapshot_every,
        early_stop,
        early_stop_tol,
        stop_when,
        post_step,
    )
    try:
        stopped = loop.run()
    except _Diverged as e:
        loop.restore_good()
        msg = (
            f"{what}: the optimisation diverged at step {loop.step + 1} (loss became {e.args[0]}); "
            f"lower lr (was {lr}) or the loss weights"
        )
        if on_nan == "raise" or not loop.history:
            raise BadInput(msg) from None
        stopped = msg + "; returning the last finite image"
    param.post_step()
    with torch.no_grad():
        final = param().detach().clone()
    final_terms = {k: v[-1] for k, v in loop.terms_history.items()}
    return OptResult(
        final,
        loop.history,
        len(loop.history),
        stopped,
        final_terms,
        loop.terms_history,
        time.perf_counter() - t0,
    )
