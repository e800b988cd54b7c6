"""Errors that convlens raises for bad input: one family, so callers can catch them in one place."""

from __future__ import annotations


class BadInput(ValueError):
    """The input (image, file, parameter, checkpoint) is not usable; the message says why and what to change."""


class UntrustedFile(BadInput):
    """A file would need arbitrary code execution (a full pickle) to load; refused unless trusted explicitly."""


class NotDifferentiable(BadInput):
    """A gradient method was asked to run on a forward-only backbone (an ONNX file)."""


class ResourceLimit(BadInput):
    """A request exceeds a configured cap (image size, steps, batch, dataset size); the message names the knob."""
