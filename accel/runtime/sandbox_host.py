"""The sandbox host: the child process that runs untrusted ONNX graphs for `accel.runtime.sandbox`.

Started as `python -m accel.runtime.sandbox_host <max bytes>`: it caps its own address space, answers open / run /
close requests framed as in `accel.runtime.sandbox_wire` until the parent closes the pipe, and exits by itself
when the parent is gone or a request runs far past its limit. It keeps up to `SESSIONS_PER_HOST` sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from .sandbox_wire import Died, frame, read_frame, write_all

SESSIONS_PER_HOST = 8  # sessions a host keeps open (least recently used closed first)


def _limit_memory(max_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) and turn off core dumps."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):  # pragma: no cover - a platform without RLIMIT_AS: the timeout still holds
        pass
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _watchdog(state: dict[str, Any], parent: int) -> None:
    """Exit when the parent is gone, or when one request runs far past its limit (belt and braces: the parent
    kills the host at the limit itself)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)
        t0, limit = state.get("t0"), state.get("limit")
        if t0 is not None and limit is not None and time.monotonic() - t0 > limit + 10:
            os._exit(4)


def serve(max_bytes: int) -> None:  # pragma: no cover - runs in the child process (tested through the parent)
    """The child's loop: answer open / run / close requests until the parent closes the pipe."""
    _limit_memory(max_bytes)
    rfd = os.dup(0)
    wfd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol stream
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    state: dict[str, Any] = {}
    threading.Thread(target=_watchdog, args=(state, os.getppid()), daemon=True).start()

    import onnxruntime as ort

    from .session import QUIET, clean_ort_message, is_allocation_failure, requested_bytes

    ort.set_default_logger_severity(QUIET)
    sessions: OrderedDict[str, Any] = OrderedDict()

    def send(header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        write_all(wfd, frame(header, payload), None)

    def fail(e: BaseException) -> dict[str, Any]:
        raw = str(e) or type(e).__name__
        if isinstance(e, MemoryError) or is_allocation_failure(raw):
            return {
                "ok": False,
                "kind": "alloc",
                "msg": clean_ort_message(raw),
                "requested": requested_bytes(raw),
            }
        return {"ok": False, "kind": "error", "msg": clean_ort_message(raw)}

    send({"ready": True, "pid": os.getpid()})
    while True:
        try:
            head, payload = read_frame(rfd, None)
        except Died:
            return
        op = head.get("op")
        state["t0"], state["limit"] = time.monotonic(), float(head.get("timeout", 60.0))
        try:
            if op == "open":
                reply = _open_session(head, sessions, ort)
            elif op == "run":
                key = str(head.get("key"))
                if key not in sessions:
                    reply, out = {"ok": False, "kind": "missing"}, b""
                else:
                    sessions.move_to_end(key)
                    reply, out = _run_session(sessions[key], head, payload, ort)
                state["t0"] = None
                send(reply, out)
                continue
            elif op == "close":
                sessions.pop(str(head.get("key")), None)
                reply = {"ok": True}
            else:
                reply = {"ok": False, "kind": "error", "msg": f"unknown request {op!r}"}
        except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
            reply = fail(e)
        state["t0"] = None
        send(reply)


def _open_session(
    head: dict[str, Any], sessions: OrderedDict[str, Any], ort: Any
) -> dict[str, Any]:  # pragma: no cover
    """Open the graph file named in `head` if it still has the SHA-256 the parent checked; keep at most
    SESSIONS_PER_HOST sessions (least recently used closed first); answer with its inputs and outputs."""
    key = str(head["key"])
    with open(str(head["path"]), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != head.get("sha256"):
        return {"ok": False, "kind": "changed", "msg": "the file changed after it was checked"}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = max(1, int(head.get("threads", 1)))
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    if not head.get("spin"):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    del data
    evicted = []
    sessions[key] = sess
    sessions.move_to_end(key)
    while len(sessions) > SESSIONS_PER_HOST:
        evicted.append(sessions.popitem(last=False)[0])

    def io(vs: Any) -> list[Any]:
        return [[v.name, [d if isinstance(d, int) else -1 for d in (v.shape or [])]] for v in vs]

    return {
        "ok": True,
        "inputs": io(sess.get_inputs()),
        "outputs": io(sess.get_outputs()),
        "evicted": evicted,
    }


def _run_session(
    sess: Any, head: dict[str, Any], payload: bytes, ort: Any
) -> tuple[dict[str, Any], bytes]:  # pragma: no cover
    """Forward one float32 batch; answer with the outputs' shapes and their float32 bytes (numbers only)."""
    shape = [int(d) for d in head["shape"]]
    x = np.frombuffer(payload, np.float32).reshape(shape)
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    names = head.get("outputs")
    outs = sess.run([str(n) for n in names] if names else None, {sess.get_inputs()[0].name: x}, ro)
    shapes, parts = [], []
    for o in outs:
        if not isinstance(o, np.ndarray) or o.dtype.kind not in "fiub":
            kind = getattr(o, "dtype", type(o).__name__)
            return {
                "ok": False,
                "kind": "error",
                "msg": f"an output is of type {kind}; convlens needs numbers",
            }, b""
        a = np.ascontiguousarray(o, dtype=np.float32)
        shapes.append(list(a.shape))
        parts.append(a.tobytes())
    return {"ok": True, "outs": shapes}, b"".join(parts)


if __name__ == "__main__":  # pragma: no cover - the host process
    serve(int(sys.argv[1]))
