"""The one runner pool: parity-checked ONNX Runtime runners keyed by weights hash, taps and options.

The key never holds the backbone object or its id, so every caller holding a copy of the same weights (each
dashboard session deep-copies its backbone) shares one runner and one ONNX Runtime session. Pooled runners are
shared between threads (a runner's `last_passes` is per thread); a runner is built once even when many threads
ask at the same moment, the least recently used is dropped past `POOL_MAX`, and a key whose fresh export failed
its parity check is refused at once afterwards instead of being exported again.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .export import ParityError
from .ortrunner import OrtRunner

if TYPE_CHECKING:
    from ..backbone import Backbone

POOL_MAX = 16  # ONNX Runtime runners kept (least recently used dropped first)

_POOL: OrderedDict[tuple, OrtRunner] = OrderedDict()
_POOL_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}
_POOL_STATS = {"built": 0, "hits": 0, "evicted": 0, "rebuilt_exports": 0}
_REFUSED: OrderedDict[tuple, str] = OrderedDict()  # keys whose fresh export failed parity: not exported again


def pool_key(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None = None,
    providers: tuple[str, ...] | None = None,
    precision: str = "fp32",
) -> tuple:
    """What identifies a pooled runner: weights hash, taps and options (never the backbone object)."""
    return (net.weights_hash(), tuple(dict.fromkeys(taps)), batch_size, providers, precision)


def _hit(key: tuple) -> OrtRunner | None:
    """The pooled runner of `key`, marked most recently used and counted as a hit, or None (hold _POOL_LOCK)."""
    r = _POOL.get(key)
    if r is not None:
        _POOL.move_to_end(key)
        _POOL_STATS["hits"] += 1
    return r


def pooled_ort(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None = None,
    providers: tuple[str, ...] | None = None,
    precision: str = "fp32",
) -> OrtRunner:
    """The pooled, parity-checked ONNX Runtime runner for (weights, taps, options): built once even when many
    threads ask at the same moment, shared by every copy of the same weights, least recently used dropped."""
    key = pool_key(net, taps, batch_size, providers, precision)
    with _POOL_LOCK:
        r = _hit(key)
        if r is not None:
            return r
        if key in _REFUSED:
            raise ParityError(_REFUSED[key])
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one builder per key; the others wait and take its runner
        with _POOL_LOCK:
            r = _hit(key)
            if r is not None:
                return r
        try:
            r = _build(net, taps, batch_size, providers, precision)
        except ParityError as e:
            with _POOL_LOCK:
                _REFUSED[key] = str(e)
                while len(_REFUSED) > 4 * POOL_MAX:
                    _REFUSED.popitem(last=False)
            raise
        finally:
            with _POOL_LOCK:
                _KEY_LOCKS.pop(key, None)
        with _POOL_LOCK:
            _POOL[key] = r
            _POOL_STATS["built"] += 1
            while len(_POOL) > POOL_MAX:
                _POOL.popitem(last=False)
                _POOL_STATS["evicted"] += 1
        return r


def _build(
    net: Backbone,
    taps: Sequence[str],
    batch_size: int | None,
    providers: tuple[str, ...] | None,
    precision: str,
) -> OrtRunner:
    """A new runner, parity-checked; a cached export that fails the check is rebuilt once (with a warning)."""
    r = OrtRunner(net, taps, batch_size, providers, precision=precision)
    try:
        r.check_parity_now()
    except ParityError as e:
        from .export import export_backbone

        warnings.warn(
            f"the cached ONNX export of {net.name} failed its parity check ({e}); rebuilding it", stacklevel=4
        )
        export_backbone(net, r.taps, rebuild=True)
        with _POOL_LOCK:
            _POOL_STATS["rebuilt_exports"] += 1
        r = OrtRunner(net, taps, batch_size, providers, precision=precision)
        r.meta["rebuilt_export"] = True
        try:
            r.check_parity_now()
        except ParityError as e:  # a fresh export that disagrees is refused
            raise ParityError(f"{e}, also after rebuilding it; use backend='torch'") from None
    if r.net.module is not None:
        r.net = _detached(r.net)
    return r


def _detached(net: Backbone) -> Backbone:
    """A module-less view of `net` for a pooled runner after its parity check: preprocessing, name and shapes
    only, so the pool never keeps one caller's copy of the weights alive."""
    view = copy.copy(net)
    view.module = None
    return view


def pool_info() -> dict[str, Any]:
    """The pool's size and counters (runners built, hits, evictions, exports rebuilt after a parity failure)."""
    with _POOL_LOCK:
        return {"size": len(_POOL), "max": POOL_MAX, **_POOL_STATS}


def clear_pool() -> None:
    """Drop every pooled runner (their sessions close when no caller holds them)."""
    with _POOL_LOCK:
        _POOL.clear()
        _REFUSED.clear()
