"""Forward passes of untrusted ONNX graphs (uploaded .onnx files) in a child process that can be stopped.

ONNX Runtime cannot be interrupted from Python, and a user's graph can loop for ever (a `Loop` of 2**62
iterations) or ask for terabytes. So a user's graph never runs in the convlens process: it runs in a *host*, a child
process with an address-space cap (RLIMIT_AS = CONVLENS_ONNX_MAX_MB) where every request (open a session, run a
batch) has a wall-clock limit (CONVLENS_ONNX_TIMEOUT_S). Past the limit the host is killed (SIGKILL) and the caller
gets a `ResourceLimit` naming the setting; the next request starts a fresh host. Allocation failures come back as
`OrtAllocationError` (the runner halves its batch), every other ONNX Runtime error as `BadInput`. This module is
the parent's side; the child's is `accel.runtime.sandbox_host`, the frames they exchange `sandbox_wire`.

Graphs convlens exported itself from its own torch modules (parity-checked) keep running in-process, for speed.

Hosts are few (`POOL_SIZE`) and shared: a graph is bound to one host, which keeps up to `sandbox_host.SESSIONS_PER_HOST`
sessions (least recently used closed first) and reopens a graph it dropped. Requests to one host take turns.
Requests and answers are frames over the child's stdin/stdout (`accel.runtime.sandbox_wire`); nothing is pickled.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..errors import BadInput, ResourceLimit
from .export import file_digest
from .sandbox_wire import Died, TimedOut, frame, read_frame, write_all

TIMEOUT_VAR = "CONVLENS_ONNX_TIMEOUT_S"
MEMORY_VAR = "CONVLENS_ONNX_MAX_MB"
POOL_SIZE = 2  # host processes; a graph stays on one host
IDLE_S = 300.0  # a host idle this long is stopped (its memory goes back); the next request starts a fresh one
STARTUP_S = 60.0  # a host must say "ready" within this (python + numpy + onnxruntime imports)
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the accel package


def timeout_s() -> float:
    """The current wall-clock limit per sandboxed request, in seconds."""
    return float(settings.get(TIMEOUT_VAR))


def memory_mb() -> float:
    """The current address-space cap of a sandbox process, in MiB."""
    return float(settings.get(MEMORY_VAR))


# ----------------------------------------------------------------------------------------------- the host (parent side)


class _Host:
    """One child process hosting ONNX Runtime sessions; one request at a time (its lock)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys: OrderedDict[str, None] = OrderedDict()  # sessions open in the child, oldest first
        self.cap_mb = 0.0
        self.owner = os.getpid()
        self.started = 0
        self.last_used = time.monotonic()
        self._err: Any = None

    def alive(self) -> bool:
        """Whether this process started the child and it is still running."""
        return self.proc is not None and self.proc.poll() is None and self.owner == os.getpid()

    def ensure(self) -> None:
        """Start the child if it is not running (or runs under an old memory cap); wait for its hello."""
        if self.owner != os.getpid():  # a forked copy of the parent: the pipes belong to the original
            self.proc, self.keys, self.owner = None, OrderedDict(), os.getpid()
        cap = memory_mb()
        if self.alive() and cap == self.cap_mb:
            return
        self.kill()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MiB of address space per thread arena otherwise
        env.pop("PYTHONSTARTUP", None)
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "accel.runtime.sandbox_host", str(int(cap * 2**20))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            cwd=str(_ROOT),
            close_fds=True,
            start_new_session=True,
        )
        self.cap_mb = cap
        self.started += 1
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        try:
            hello, _ = read_frame(self.proc.stdout.fileno(), time.monotonic() + STARTUP_S)
        except (Died, TimedOut):
            why = self._stderr_tail()
            self.kill()
            if "MemoryError" in why or "bad_alloc" in why or "Cannot allocate" in why:
                raise ResourceLimit(
                    f"the sandbox for uploaded ONNX graphs cannot start within {MEMORY_VAR}={cap:g} MiB; "
                    f"raise it (e.g. {MEMORY_VAR}={int(cap * 2)})"
                ) from None
            raise BadInput(
                "the sandbox process for uploaded ONNX graphs did not start (is onnxruntime installed?)"
            ) from None
        if not hello.get("ready"):
            self.kill()
            raise BadInput("the sandbox process for uploaded ONNX graphs did not start")

    def _stderr_tail(self) -> str:
        """The last 4 KiB the child wrote to stderr (why it died), or ""."""
        try:
            self._err.seek(0, os.SEEK_END)
            size = self._err.tell()
            self._err.seek(max(0, size - 4096))
            return self._err.read().decode(errors="replace")
        except (OSError, ValueError, AttributeError):
            return ""

    def kill(self) -> None:
        """Stop the child now (SIGKILL to its process group) and forget its sessions."""
        proc, self.proc = self.proc, None
        self.keys.clear()
        if proc is not None and self.owner == os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL is not ignorable
                proc.wait(timeout=10)
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        if self._err is not None:
            with contextlib.suppress(OSError):
                self._err.close()
            self._err = None

    def request(
        self, header: dict[str, Any], payload: bytes | memoryview, name: str
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its answer within the timeout; kill the child past it."""
        limit = timeout_s()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.last_used = time.monotonic()
        _start_reaper()
        deadline = time.monotonic() + limit
        try:
            write_all(self.proc.stdin.fileno(), frame({**header, "timeout": limit}, payload), deadline)
            return read_frame(self.proc.stdout.fileno(), deadline)
        except TimedOut:
            self.kill()
            raise ResourceLimit(
                f"{name}: the ONNX graph ran longer than {limit:g} s and was stopped (the limit is the setting "
                f"{TIMEOUT_VAR}); it may loop without end. If it is genuinely this slow, raise the limit, e.g. "
                f"{TIMEOUT_VAR}={max(1, int(limit * 4))}"
            ) from None
        except Died:
            code = self.proc.poll() if self.proc is not None else None
            why = self._stderr_tail()
            self.kill()
            if code == -signal.SIGKILL or "MemoryError" in why or "bad_alloc" in why:
                raise ResourceLimit(
                    f"{name}: the process running the ONNX graph ran out of memory and stopped (the limit is "
                    f"{MEMORY_VAR}={self.cap_mb:g} MiB); raise it if the graph is genuine"
                ) from None
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise BadInput(
                f"{name}: the process running the ONNX graph stopped unexpectedly ({how}); the graph may crash "
                "ONNX Runtime, so it is refused"
            ) from None


_HOSTS = [_Host(i) for i in range(POOL_SIZE)]
_ASSIGN: OrderedDict[str, int] = (
    OrderedDict()
)  # graph key -> host slot (bounded, least recently used dropped)
_ASSIGN_MAX = 512
_IO: dict[str, tuple[list[Any], list[Any]]] = {}  # graph key -> (inputs, outputs) as the host reported them
_POOL_LOCK = threading.Lock()


def _host_for(key: str) -> _Host:
    """The host a graph is bound to (a new graph goes to the least busy one; old bindings are dropped)."""
    with _POOL_LOCK:
        slot = _ASSIGN.get(key)
        if slot is None:
            slot = min(range(POOL_SIZE), key=lambda i: (len(_HOSTS[i].keys), _HOSTS[i].lock.locked(), i))
        _ASSIGN[key] = slot
        _ASSIGN.move_to_end(key)
        while len(_ASSIGN) > _ASSIGN_MAX:
            _ASSIGN.popitem(last=False)
        return _HOSTS[slot]


_REAPER: dict[int, threading.Thread] = {}  # process id -> its reaper thread


def _start_reaper() -> None:
    """Start (once per process) the daemon thread that stops hosts idle for IDLE_S."""
    with _POOL_LOCK:
        t = _REAPER.get(os.getpid())
        if t is not None and t.is_alive():
            return
        t = threading.Thread(target=_reap, name="convlens-sandbox-reaper", daemon=True)
        _REAPER[os.getpid()] = t
        t.start()


def _reap() -> None:
    """The reaper thread: every little while, stop hosts idle for IDLE_S."""
    while True:
        time.sleep(min(30.0, IDLE_S / 4))
        reap_idle()


def reap_idle(idle_s: float | None = None) -> int:
    """Stop hosts that have been idle for `idle_s` seconds (default IDLE_S); returns how many were stopped."""
    limit = IDLE_S if idle_s is None else idle_s
    stopped = 0
    for h in _HOSTS:
        if h.alive() and time.monotonic() - h.last_used >= limit and h.lock.acquire(blocking=False):
            try:
                if h.alive() and time.monotonic() - h.last_used >= limit:
                    h.kill()
                    stopped += 1
            finally:
                h.lock.release()
    return stopped


def shutdown() -> None:
    """Stop every sandbox process of this process (also at exit)."""
    for h in _HOSTS:
        with h.lock:
            h.kill()
    with _POOL_LOCK:
        _ASSIGN.clear()
        _IO.clear()


def host_pids() -> list[int]:
    """Process ids of the running sandbox hosts (for tests and `convlens` diagnostics)."""
    return [h.proc.pid for h in _HOSTS if h.alive() and h.proc is not None]


def hosts_started() -> int:
    """How many host processes this process has started so far."""
    return sum(h.started for h in _HOSTS)


atexit.register(shutdown)


class SandboxedGraph:
    """One untrusted ONNX graph, opened in a sandbox host; `run(x)` returns its outputs as float32 arrays.

    `name` is what messages call the graph (the user's file name). The host checks that the file it reads has
    the SHA-256 computed here, so the graph that runs is the one that was checked."""

    def __init__(
        self, path: str | os.PathLike[str], name: str | None = None, threads: int | None = None
    ) -> None:
        from .session import default_threads

        self.path = Path(path)
        self.name = name or self.path.name
        try:
            self.sha256 = file_digest(self.path)[1]
        except OSError as e:
            raise BadInput(f"{self.name}: cannot read the file ({e.strerror or type(e).__name__})") from None
        self.threads = int(threads or default_threads())
        self.spin = bool(settings.get("CONVLENS_ORT_SPIN"))
        self.key = f"{self.sha256}:{self.threads}:{int(self.spin)}"
        self.inputs: list[tuple[str, list[Any]]] = []
        self.outputs: list[tuple[str, list[Any]]] = []
        host = _host_for(self.key)
        with host.lock:
            host.ensure()
            if self.key in host.keys and self.key in _IO:  # already open there: reuse the session
                self.inputs, self.outputs = _IO[self.key]
                host.keys.move_to_end(self.key)
            else:
                self._open(host)

    def _open(self, host: _Host) -> None:
        """Open the graph in `host` and record its inputs and outputs (and the sessions the host closed for it)."""
        head, _ = host.request(
            {
                "op": "open",
                "key": self.key,
                "path": str(self.path.resolve()),
                "sha256": self.sha256,
                "threads": self.threads,
                "spin": self.spin,
            },
            b"",
            self.name,
        )
        if not head.get("ok"):
            raise self._error(head, "ONNX Runtime cannot load this model")
        host.keys[self.key] = None
        host.keys.move_to_end(self.key)
        for gone in head.get("evicted", []):
            host.keys.pop(str(gone), None)
        self.inputs = [(str(n), list(s)) for n, s in head.get("inputs", [])]
        self.outputs = [(str(n), list(s)) for n, s in head.get("outputs", [])]
        with _POOL_LOCK:
            _IO[self.key] = (self.inputs, self.outputs)
            while len(_IO) > _ASSIGN_MAX:
                _IO.pop(next(iter(_IO)))

    def _error(self, head: dict[str, Any], doing: str) -> Exception:
        """The exception for a failed answer: OrtAllocationError (the runner halves its batch) or BadInput."""
        from .session import OrtAllocationError, human_bytes

        msg = str(head.get("msg", "no message"))[:400]
        if head.get("kind") == "alloc":
            n = head.get("requested")
            size = f" ({human_bytes(n)} requested)" if isinstance(n, int) else ""
            return OrtAllocationError(
                f"{self.name}: ONNX Runtime could not allocate memory{size} within the sandbox's "
                f"{MEMORY_VAR}={memory_mb():g} MiB",
                n if isinstance(n, int) else None,
                MEMORY_VAR,
            )
        if head.get("kind") == "changed":
            return BadInput(f"{self.name}: the file changed after it was checked; load it again")
        return BadInput(f"{self.name}: {doing} ({msg})")

    def run(self, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Forward one float32 batch in the sandbox; the named outputs (default: all, in graph order)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        host = _host_for(self.key)
        with host.lock:
            for attempt in range(2):
                host.ensure()
                if self.key not in host.keys:
                    self._open(host)
                head, data = host.request(
                    {"op": "run", "key": self.key, "shape": list(x.shape), "outputs": outputs},
                    x.data,
                    self.name,
                )
                if head.get("ok"):
                    host.keys.move_to_end(self.key)
                    return self._unpack(head, data)
                if head.get("kind") == "missing" and attempt == 0:
                    host.keys.pop(self.key, None)
                    continue
                raise self._error(head, "ONNX Runtime failed to run the graph")
        raise BadInput(f"{self.name}: the sandbox lost the graph twice; load it again")  # pragma: no cover

    def _unpack(self, head: dict[str, Any], data: bytes) -> list[np.ndarray]:
        """The float32 outputs of an answer, checked against the shapes its header announces."""
        outs = []
        off = 0
        for shape in head.get("outs", []):
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise BadInput(f"{self.name}: the sandbox sent a malformed answer")
            n = int(np.prod(shape, dtype=np.int64)) * 4
            if off + n > len(data):
                raise BadInput(f"{self.name}: the sandbox sent a truncated answer")
            outs.append(np.frombuffer(data, np.float32, n // 4, off).reshape(shape).copy())
            off += n
        return outs
