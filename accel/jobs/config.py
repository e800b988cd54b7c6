"""What decides a job's output: the job kind, the model, the shard size and, per job, its settings.

`embed` and `max_patches` run one batched forward pass of their own (backend, batch size, layer, k). `explain`
runs a registered attribution method: its parameters are that method's declaration (`spec.param_infos()`),
validated by the registry exactly as `accel.run` validates them, so the job accepts every parameter the method
has, with the method's defaults, and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from PIL import Image

    from ..registry import MethodSpec
    from ..zoo import Backbone

JOBS: tuple[str, ...] = ("embed", "explain", "max_patches")
EXPLAIN_FAMILY = "attribute"  # explain runs the registered methods of this family
DEFAULT_METHOD = "occlusion"
# JobConfig fields a caller may set for embed / max_patches (explain takes `method` and the method's parameters)
FORWARD_FIELDS = ("arch", "backend", "batch_size", "layer", "k")


@dataclass
class JobConfig:
    """Everything that decides a job's output (its fingerprint); engine and concurrency are not part of it.

    `backend`, `batch_size`, `layer` and `k` are the forward pass of embed and max_patches; `method` and
    `params` (every declared parameter of the method, defaults filled in) are explain's."""

    job: str
    model: str
    arch: str | None = None
    backend: str = "onnxruntime"
    batch_size: int = 64
    shard_size: int = 256
    layer: str = ""  # embed: tap ('' = the embedding); max_patches: layer ('' = CAM / last spatial layer)
    k: int = 9  # max_patches: patches per channel
    method: str = ""  # explain: a registered attribution method ('' = occlusion)
    params: dict[str, Any] = field(default_factory=dict)  # explain: the method's parameters

    def check(self) -> None:
        """BadInput for values no job can run with (the method's parameters are checked by resolve)."""
        if self.job not in JOBS:
            raise BadInput(f"unknown job {self.job!r}; choose one of {', '.join(JOBS)}")
        if self.backend not in ("onnxruntime", "torch", "auto"):
            raise BadInput(f"backend must be 'onnxruntime', 'torch' or 'auto', got {self.backend!r}")
        for name, lo, hi in (("batch_size", 1, 4096), ("shard_size", 1, 1_000_000), ("k", 1, 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BadInput(f"{name} must be a whole number in {lo}..{hi}, got {v!r}")
        if not isinstance(self.params, dict):
            raise BadInput(f"params must be a mapping of method parameters, got {type(self.params).__name__}")
        if self.job != "explain" and (self.method or self.params):
            raise BadInput(f"method and method parameters belong to explain jobs, not {self.job}")

    def resolve(self, net: Backbone) -> JobConfig:
        """A copy with every automatic value decided for `net` (layer; the method's parameters with defaults),
        validated against the model before any image is read."""
        self.check()
        c = JobConfig(**asdict(self))
        if c.job == "embed":
            c.layer = _embed_tap(net, c.layer)
        elif c.job == "max_patches":
            c.layer = _patch_layer(net, c.layer)
        else:
            c.method = c.method or DEFAULT_METHOD
            c.params = method_params(c.method, c.params, net)
        return c


def build_config(job: str, model: str, shard_size: int, options: Mapping[str, Any]) -> JobConfig:
    """The JobConfig of `run_job`'s keyword options: JobConfig fields for embed / max_patches; for explain
    `arch`, `method`, `params` (a mapping) and any other keyword as one of the method's parameters."""
    opts = dict(options)
    if job == "explain":
        params = dict(opts.pop("params", None) or {})
        arch = opts.pop("arch", None)
        method = opts.pop("method", None) or DEFAULT_METHOD
        clash = sorted(set(opts) & set(params))
        if clash:
            raise BadInput(f"method parameter(s) {clash} given twice (as keywords and in params)")
        return JobConfig(job, model, arch=arch, shard_size=shard_size, method=method, params=params | opts)
    bad = sorted(set(opts) - set(FORWARD_FIELDS))
    if bad:
        raise BadInput(f"unknown job parameter(s) {bad}; known: {sorted(FORWARD_FIELDS)}")
    return JobConfig(job, model, shard_size=shard_size, **opts)


def config_from_manifest(recorded: Mapping[str, Any]) -> JobConfig:
    """A JobConfig read back from a manifest (unknown keys of older outputs ignored), checked."""
    names = {f.name for f in fields(JobConfig)}
    jc = JobConfig(**{k: v for k, v in recorded.items() if k in names})
    jc.check()
    return jc


def explain_spec(name: str) -> MethodSpec:
    """The registered attribution method `name`, or BadInput naming the methods explain can run."""
    from .. import registry

    spec = registry.get(name)
    if spec.family != EXPLAIN_FAMILY:
        known = ", ".join(s.name for s in registry.methods(EXPLAIN_FAMILY))
        raise BadInput(f"explain runs attribution methods ({known}); {name!r} is a {spec.family} method")
    return spec


def method_params(name: str, given: Mapping[str, Any], net: Backbone) -> dict[str, Any]:
    """Every declared parameter of method `name` (the given values validated by the registry, the rest at the
    method's defaults), after one trial run on a synthetic image so that a value the method refuses for this
    model (a window larger than the input, a class out of range, gradients on a forward-only file) stops the
    job before any image is read, with the method's own message."""
    from .. import registry

    spec = explain_spec(name)
    p = asdict(registry.validate(spec.params, dict(given), name))
    registry.run(name, net, trial_image(net), **p)
    return p


def trial_image(net: Backbone) -> Image.Image:
    """A fixed noise image of the model's input size (not constant, so no method sees a degenerate input)."""
    import numpy as np
    from PIL import Image

    _, h, w = net.input_shape
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(rgb, "RGB")


def _embed_tap(net: Backbone, layer: str) -> str:
    """The embed job's tap: the declared embedding ('' or 'embedding') or a named layer."""
    if layer in ("", "embedding"):
        if not net.embedding_layer:
            raise BadInput(f"{net.name!r} declares no embedding layer; pass --layer with a layer name")
        return "embedding"
    net.layer(layer)
    return layer


def _patch_layer(net: Backbone, layer: str) -> str:
    """The max_patches job's layer, chosen as the max_patches method chooses it, with a receptive field."""
    from ..methods.inspect._common import default_activation_layer, spatial_layer

    name = spatial_layer(net, layer, default_activation_layer(net), "max_patches").name
    if net.layer(name).rf is None:
        raise BadInput(f"max_patches: layer {name!r} has no receptive field to crop; pick a conv layer")
    return name
