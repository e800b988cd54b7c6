"""Byte-level fuzzing kit (issue 16): arbitrary short byte strings and structured mutations of real files.

Every parser of untrusted bytes (images, checkpoints, ONNX graphs, job shards) is fuzzed with the same property:
*a result or a `BadInput`, in bounded time and memory*. A domain test builds a strategy with `byte_inputs` from
its seed files and hands a target to `fuzz`, which runs hypothesis for `scaled(n)` examples, counts outcomes
instead of stopping at the first escape (so the summary says how many of how many), and returns a `FuzzReport`.

`make test` runs the fixed-seed slice (FUZZ_SCALE=1); `make fuzz` runs ten times as many (FUZZ_SCALE=10).
"""

from __future__ import annotations

import os
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from accel.errors import BadInput

# Test-only knob (not a product setting): how many times the fixed slice to run.
SCALE = float(os.environ.get("FUZZ_SCALE", "1") or 1)
# Any single input that takes longer than this is an escape ("bounded time").
MAX_SECONDS_PER_INPUT = 10.0
# Examples per hypothesis run (a long fuzz is several runs with their own seeds).
CHUNK = 2000

# Every domain's report lands here; test_fuzz_summary prints one line over all of them.
REPORTS: dict[str, FuzzReport] = {}


def scaled(n: int) -> int:
    """`n` examples times FUZZ_SCALE (at least 1)."""
    return max(1, int(round(n * SCALE)))


@dataclass
class FuzzReport:
    """Outcome counts of one fuzzed domain: ok (a result), refused (BadInput), escapes (anything else)."""

    domain: str
    tried: int = 0
    ok: int = 0
    refused: int = 0
    escapes: list[tuple[str, bytes]] = field(default_factory=list)  # (description, the input)
    escape_kinds: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"{self.domain}: {self.tried} inputs, {self.ok} accepted, {self.refused} refused with BadInput, "
            f"{len(self.escapes)} escapes, slowest {self.slowest_s:.2f} s, {self.seconds:.1f} s in all"
        )

    def assert_clean(self) -> None:
        """Fail with the first few escapes (type, message, the input's first bytes) if there were any."""
        if self.escapes:
            shown = "\n".join(
                f"  {d}\n    input[:64]={b[:64]!r} ({len(b)} bytes)" for d, b in self.escapes[:5]
            )
            raise AssertionError(f"{self.line()}\nkinds: {dict(self.escape_kinds)}\n{shown}")


# ----------------------------------------------------------------------------------------------- strategies


@st.composite
def _mutated(draw: Any, seeds: Sequence[bytes]) -> bytes:
    """One structured mutation of one seed file: bit flips, truncation, a chunk deleted / duplicated /
    overwritten / inserted, a splice of two seeds, or an edit of one of the first 64 bytes (headers)."""
    data = bytearray(draw(st.sampled_from(list(seeds))))
    n = len(data)
    kind = draw(
        st.sampled_from(("flip", "truncate", "delete", "dup", "overwrite", "insert", "splice", "head"))
    )
    if n == 0:
        return bytes(draw(st.binary(max_size=32)))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, n - 1))]
    elif kind in ("delete", "dup", "overwrite"):
        a = draw(st.integers(0, n - 1))
        b = min(n, a + draw(st.integers(1, max(1, min(n, 4096)))))
        if kind == "delete":
            del data[a:b]
        elif kind == "dup":
            data[b:b] = data[a:b]
        else:
            data[a:b] = draw(st.binary(min_size=b - a, max_size=b - a))
    elif kind == "insert":
        a = draw(st.integers(0, n))
        data[a:a] = draw(st.binary(min_size=1, max_size=256))
    elif kind == "splice":
        other = draw(st.sampled_from(list(seeds)))
        a = draw(st.integers(0, n))
        data = data[:a] + other[draw(st.integers(0, len(other))) :]
    else:  # header byte: small magic/length fields live in the first bytes of every format
        i = draw(st.integers(0, min(n, 64) - 1))
        data[i] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF, data[i] ^ 0xFF, data[i] + 1 & 0xFF)))
    return bytes(data)


def byte_inputs(seeds: Sequence[bytes], short_share: float = 0.3) -> st.SearchStrategy[bytes]:
    """Arbitrary short byte strings (0..64 bytes, and the 0-3 byte edge cases) mixed with structured
    mutations of `seeds`; `short_share` of draws are the arbitrary kind."""
    short = st.one_of(st.binary(max_size=3), st.binary(max_size=64))
    mutated = _mutated(tuple(seeds)) if seeds else short
    weight = max(1, round(10 * short_share))
    return st.one_of(*([short] * weight), *([mutated] * (10 - weight)))


# ----------------------------------------------------------------------------------------------- runner


def fuzz(
    domain: str,
    target: Callable[[bytes], Any],
    strategy: st.SearchStrategy[bytes],
    n: int,
    *,
    rng_seed: int = 0,
    allowed: tuple[type[BaseException], ...] = (BadInput,),
) -> FuzzReport:
    """Feed `scaled(n)` drawn inputs to `target`; count results, `allowed` refusals and escapes.

    Deterministic for a given `rng_seed` (hypothesis' own seed; no example database)."""
    rep = FuzzReport(domain)
    runs = scaled(n)

    def one_input(data: bytes) -> None:
        rep.tried += 1
        t0 = time.perf_counter()
        try:
            target(data)
            rep.ok += 1
        except allowed:
            rep.refused += 1
        except Exception as e:  # noqa: BLE001 - the whole point: record what escaped
            tb = traceback.extract_tb(e.__traceback__)[-1]
            desc = f"{type(e).__name__}: {str(e)[:160]} (at {os.path.basename(tb.filename)}:{tb.lineno})"
            rep.escape_kinds[type(e).__name__] += 1
            if len(rep.escapes) < 50:
                rep.escapes.append((desc, data))
        dt = time.perf_counter() - t0
        rep.slowest_s = max(rep.slowest_s, dt)
        if dt > MAX_SECONDS_PER_INPUT:
            rep.escape_kinds["slow"] += 1
            rep.escapes.append((f"took {dt:.1f} s (> {MAX_SECONDS_PER_INPUT} s)", data))

    # Hypothesis remembers every choice of a run (to avoid repeats), so long runs are split into chunks with
    # their own seeds: memory stays bounded at any FUZZ_SCALE.
    t0 = time.perf_counter()
    done, chunk = 0, 0
    while done < runs:
        size = min(CHUNK, runs - done)

        @seed(rng_seed * 1_000_003 + chunk)
        @settings(
            max_examples=size,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            phases=("generate",),  # counts, not minimal examples: escapes are reported with their input
        )
        @given(strategy)
        def one(data: bytes) -> None:
            one_input(data)

        random.seed(rng_seed + chunk)
        one()
        done += size
        chunk += 1
    rep.seconds = time.perf_counter() - t0
    REPORTS[domain] = rep
    return rep
