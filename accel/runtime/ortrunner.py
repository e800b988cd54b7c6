"""The ONNX Runtime runner: a cached, parity-checked export of the backbone with its taps as outputs, run in this
process (convlens' own exports; fp32, static INT8 on CPU or fp16 on GPU, IO binding on GPU providers), or a
user's .onnx file run as it is in a sandbox process (`accel.runtime.sandbox`). Callers get these through the
runner pool (`accel.runtime.pool`), which checks parity before handing one out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BadInput
from .alloc import pooled_arena
from .export import compare_to_torch
from .forward import Runner

if TYPE_CHECKING:
    from ..backbone import Backbone


class OrtRunner(Runner):
    """ONNX Runtime forward passes over a cached export of the backbone with its taps as outputs.

    A forward-only backbone (a user's .onnx file) runs in a sandbox process with a timeout and a memory cap;
    convlens' own exports run in this process."""

    backend = "onnxruntime"

    def __init__(
        self,
        net: Backbone,
        taps: Sequence[str],
        batch_size: int | None = None,
        providers: tuple[str, ...] | None = None,
        check_parity: bool = True,
        precision: str = "fp32",
        io_binding: bool | None = None,
    ) -> None:
        super().__init__(net, taps, batch_size)
        from .session import make_session

        if precision not in ("fp32", "int8", "fp16"):
            raise BadInput(
                f"precision must be 'fp32', 'int8' (CPU, static QDQ) or 'fp16' (GPU), got {precision!r}"
            )
        self.precision = precision
        self.sandboxed = net.module is None
        self._graph: Any = None
        self.fixed_batch: int | None = None

        t0 = time.perf_counter()
        if self.sandboxed:
            self._init_sandboxed(net, precision)
            self._parity_pending = False
            self.meta["setup_s"] = round(time.perf_counter() - t0, 3)
            return
        from .export import export_backbone

        for t in self.taps:
            if t not in ("logits", "embedding"):
                net.layer(t.partition(":")[0])
        path = export_backbone(net, self.taps)
        fp32_path = path
        if precision != "fp32":
            from .quantize import packaged_photo_batches, quantize_int8

            calib, held_out = packaged_photo_batches(net)
            if precision == "int8":
                path = quantize_int8(path, calib)
        self.path = path
        self.session, self.provider, failures = make_session(
            path,
            providers,
            fp16=precision == "fp16",
            arena=pooled_arena(),  # pooled: shared by every caller; no arena where malloc is tuned
        )
        if precision == "fp16":
            if self.provider == "CPUExecutionProvider":
                raise BadInput(
                    "fp16 is offered on GPU providers only: on the CPU provider it is slower than fp32"
                )
            if self.provider == "CUDAExecutionProvider":  # TensorRT builds fp16 engines from the fp32 graph
                from .quantize import to_fp16

                self.session, self.provider, _ = make_session(to_fp16(fp32_path), providers)
        if precision != "fp32":
            self._record_cost(fp32_path, held_out)
            check_parity = False
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # IO binding (inputs from pinned host memory, outputs bound on the device) on GPU providers by default
        self.io_binding = self.provider != "CPUExecutionProvider" if io_binding is None else bool(io_binding)
        self.meta["io_binding"] = self.io_binding
        self.meta.update(
            provider=self.provider,
            provider_failures=failures,
            onnx=str(path),
            setup_s=round(time.perf_counter() - t0, 3),
        )
        self._parity_pending = check_parity

    def _init_sandboxed(self, net: Backbone, precision: str) -> None:
        """A user's ONNX file: logits only, fp32, run in a sandbox process (timeout and memory cap)."""
        from .sandbox import MEMORY_VAR, TIMEOUT_VAR, SandboxedGraph

        if self.taps != ["logits"]:
            raise BadInput(
                f"{net.name!r} is an ONNX file: only the 'logits' tap is available, not {self.taps}"
            )
        if precision != "fp32":
            raise BadInput(
                f"precision {precision!r} is offered for convlens' own exports only; {net.name!r} is a "
                "user-supplied ONNX file, which convlens runs as it is, in its sandbox"
            )
        if net.onnx_path is None:
            raise BadInput(f"{net.name!r} has neither a torch module nor an ONNX file")
        self.path = Path(net.onnx_path)
        self._graph = SandboxedGraph(self.path, name=self.path.name)
        ishape = self._graph.inputs[0][1] if self._graph.inputs else []
        if ishape and isinstance(ishape[0], int) and ishape[0] > 0:  # a fixed batch: feed that many (padded)
            self.fixed_batch = int(ishape[0])
            self.batch_size = min(self.batch_size, self.fixed_batch)
            self.meta["batch_size"] = self.batch_size
        self.input_name = self._graph.inputs[0][0] if self._graph.inputs else "input"
        self.output_names = [n for n, _ in self._graph.outputs]
        self.provider = "CPUExecutionProvider"
        self.io_binding = False
        self.meta.update(
            provider=self.provider,
            provider_failures=[],
            onnx=str(self.path),
            io_binding=False,
            sandbox={"timeout_s": TIMEOUT_VAR, "max_mb": MEMORY_VAR},
        )

    def _record_cost(self, fp32_path: Any, held_out: np.ndarray) -> None:
        """Accuracy cost of a reduced-precision session against the fp32 graph on held-out packaged photos."""
        from .quantize import accuracy_cost
        from .session import make_session, run_session

        ref_sess, _, _ = make_session(fp32_path, ("CPUExecutionProvider",))
        ref = run_session(ref_sess, {"input": held_out}, f"{self.net.name} (fp32 reference)")
        got = run_session(
            self.session, {self.session.get_inputs()[0].name: held_out}, f"{self.net.name} ({self.precision})"
        )
        self.meta["accuracy_cost"] = accuracy_cost(ref, got, self.taps) | {"held_out_images": len(held_out)}
        self.meta["precision"] = self.precision

    def _forward_bound(self, x: np.ndarray) -> list[np.ndarray]:
        """One batch through IO binding: on CUDA the input goes from pinned host memory to the device
        asynchronously (torch) and outputs stay on the device until one copy back; elsewhere host OrtValues."""
        import onnxruntime as ort

        from .session import ort_error

        b = self.session.io_binding()
        on_gpu = self.provider != "CPUExecutionProvider" and torch.cuda.is_available()
        if on_gpu:
            xt = torch.from_numpy(x).pin_memory().to("cuda", non_blocking=True)
            b.bind_input(self.input_name, "cuda", 0, np.float32, list(xt.shape), xt.data_ptr())
            torch.cuda.current_stream().synchronize()
        else:
            b.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x))
        for name in self.output_names:
            b.bind_output(name, "cuda" if on_gpu else "cpu")
        try:
            self.session.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - ORT's own exception types
            raise ort_error(e, f"running {self.net.name}") from None

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._graph is not None:
            return self._forward_sandboxed(x)
        if self.io_binding:
            outs = self._forward_bound(x)
        else:
            from .session import run_session

            outs = run_session(self.session, {self.input_name: x}, f"running {self.net.name}")
        if self._parity_pending:
            self._parity_pending = False
            compare_to_torch(self.net, self.taps, x[:2], outs, self.meta)
        return outs

    def _forward_sandboxed(self, x: np.ndarray) -> list[np.ndarray]:
        """One batch through the sandboxed user graph, padded to its fixed batch size if it has one."""
        n = len(x)
        if self.fixed_batch is not None and n < self.fixed_batch:  # pad to the graph's fixed batch, then cut
            pad = np.repeat(x[-1:], self.fixed_batch - n, axis=0)
            outs = self._graph.run(np.concatenate([x, pad]), self.output_names[:1])
            return [o[:n] if o.ndim and o.shape[0] == self.fixed_batch else o for o in outs]
        return self._graph.run(x, self.output_names[:1])

    def check_parity_now(self) -> None:
        """Run the pending parity check now on a real-looking input (seeded noise through the backbone's own
        normalisation), so a bad export is refused (`ParityError`) before any result is used."""
        if self._parity_pending:
            g = torch.Generator().manual_seed(0)
            x01 = torch.rand(2, 3, self.net.pre.size, self.net.pre.size, generator=g)
            self._forward(self.net.normalize(x01).numpy())
