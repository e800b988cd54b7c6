"""The machine's fp32 peak that model GFLOP/s is compared with.

The peak is measured with a tiny C kernel of independent fused multiply-add chains on the widest vector unit the
CPU has (AVX-512, AVX2+FMA, else 128-bit vectors), compiled at bench time and run on one thread per core the
process may use. Without a C compiler the fallback is the best fp32 matmul (sgemm) of torch and ONNX Runtime,
labelled as such: a lower bound, which convolutions can beat. The best measurement per machine is cached in the
bench output folder, and no reported row may exceed the peak it is compared with (`settle_peak`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .harness import cpu_flags, cpu_model, usable_cores

CACHE_FILE = "peak-cache.json"

FMA_KERNEL = r"""
/* convlens fp32 FMA peak: CHAINS independent multiply-add chains per thread on the widest vector unit. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vec;
#define LANES 16
#define ISA "avx512f"
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1(x) _mm512_set1_ps(x)
static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef __m256 vec;
#define LANES 8
#define ISA "avx2+fma"
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1(x) _mm256_set1_ps(x)
static float hsum(vec v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#else
typedef float vec __attribute__((vector_size(16)));
#define LANES 4
#define ISA "vector128"
#define FMA(a, b, c) ((a) * (b) + (c))
#define SET1(x) ((vec){x, x, x, x})
static float hsum(vec v) { return v[0] + v[1] + v[2] + v[3]; }
#endif

#define CHAINS 12

static long iters;
static pthread_barrier_t start, stop;
static volatile float sink;

static double seconds(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* One thread: `iters` rounds of CHAINS independent FMAs; its own CPU time goes to *arg. */
static void *work(void *arg) {
    vec m = SET1(0.9999999f), a = SET1(1e-7f);
    vec c0 = SET1(0.1f), c1 = SET1(0.2f), c2 = SET1(0.3f), c3 = SET1(0.4f), c4 = SET1(0.5f), c5 = SET1(0.6f);
    vec c6 = SET1(0.7f), c7 = SET1(0.8f), c8 = SET1(0.9f), c9 = SET1(1.0f), c10 = SET1(1.1f), c11 = SET1(1.2f);
    pthread_barrier_wait(&start);
    double t0 = seconds(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < iters; i++) {
        c0 = FMA(c0, m, a); c1 = FMA(c1, m, a); c2 = FMA(c2, m, a); c3 = FMA(c3, m, a);
        c4 = FMA(c4, m, a); c5 = FMA(c5, m, a); c6 = FMA(c6, m, a); c7 = FMA(c7, m, a);
        c8 = FMA(c8, m, a); c9 = FMA(c9, m, a); c10 = FMA(c10, m, a); c11 = FMA(c11, m, a);
    }
    *(double *)arg = seconds(CLOCK_THREAD_CPUTIME_ID) - t0;
    sink = hsum(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
    pthread_barrier_wait(&stop);
    return NULL;
}

/* `threads` threads start together; *wall = GFLOP/s over the wall time to the last one, *cpu = the sum of each
   thread's GFLOP/s over its own CPU time (what the cores deliver while they run, even on a busy machine). */
static void run(int threads, double *wall, double *cpu) {
    pthread_t *ts = malloc(sizeof(pthread_t) * threads);
    double *cpus = calloc(threads, sizeof(double));
    pthread_barrier_init(&start, NULL, threads + 1);
    pthread_barrier_init(&stop, NULL, threads + 1);
    for (int i = 0; i < threads; i++) pthread_create(&ts[i], NULL, work, &cpus[i]);
    pthread_barrier_wait(&start);
    double t0 = seconds(CLOCK_MONOTONIC);
    pthread_barrier_wait(&stop);
    double dt = seconds(CLOCK_MONOTONIC) - t0;
    for (int i = 0; i < threads; i++) pthread_join(ts[i], NULL);
    double flops = 2.0 * CHAINS * LANES * (double)iters;
    *wall = flops * threads / dt / 1e9;
    *cpu = 0;
    for (int i = 0; i < threads; i++) *cpu += flops / (cpus[i] > 0 ? cpus[i] : dt) / 1e9;
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&stop);
    free(cpus);
    free(ts);
}

/* usage: fma THREADS SECONDS REPEATS; prints one JSON line with the best of REPEATS runs */
int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    double target = argc > 2 ? atof(argv[2]) : 0.1;
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    double wall, cpu, best_wall = 0, best_cpu = 0, one = 0;
    if (threads < 1) threads = 1;
    iters = 1000000;
    run(1, &wall, &cpu); /* calibration: iterations for about `target` seconds per run */
    iters = (long)(target * cpu * 1e9 / (2.0 * CHAINS * LANES));
    if (iters < 10000) iters = 10000;
    for (int r = 0; r < repeats; r++) {
        run(threads, &wall, &cpu);
        if (wall > best_wall) best_wall = wall;
        if (cpu > best_cpu) best_cpu = cpu;
        run(1, &wall, &cpu);
        if (cpu > one) one = cpu;
    }
    printf("{\"gflops\": %.3f, \"gflops_wall\": %.3f, \"gflops_one_thread\": %.3f, \"threads\": %d, "
           "\"isa\": \"%s\", \"lanes\": %d, \"chains\": %d, \"iterations\": %ld}\n",
           best_cpu, best_wall, one, threads, ISA, LANES, CHAINS, iters);
    return 0;
}
"""


def compiler() -> str | None:
    """The C compiler on PATH (CC first), or None."""
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def isa_flags(flags: str) -> list[str]:
    """Compiler flags for the widest fp32 FMA unit the CPU reports (/proc/cpuinfo flags), besides -march=native."""
    have = set(flags.split())
    if "avx512f" in have:
        return ["-mavx512f", "-mfma"]
    if "avx2" in have and "fma" in have:
        return ["-mavx2", "-mfma"]
    return []


def fma_peak(threads: int | None = None, seconds: float = 0.05, repeats: int = 5) -> dict[str, Any] | None:
    """Compile and run the FMA kernel on `threads` threads (default: every core this process may use); the best
    of `repeats` runs in GFLOP/s with the ISA used, or None when no C compiler works here."""
    cc = compiler()
    if cc is None:
        return None
    threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="convlens-fma-") as d:
        src, exe = Path(d) / "fma.c", Path(d) / "fma"
        src.write_text(FMA_KERNEL)
        cmd = [cc, "-O2", "-march=native", *isa_flags(cpu_flags()), "-pthread", "-o", str(exe), str(src)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            out = subprocess.run(
                [str(exe), str(threads), str(seconds), str(repeats)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120 + 4 * seconds * repeats,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res | {"compiler": Path(cc).name}


def sgemm_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s of this machine right now: the best of torch's and ONNX Runtime's (MLAS)
    sgemm, since either may be the faster on a given CPU (the fallback peak, and a figure the report shows)."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    with contextlib.suppress(Exception):  # ONNX Runtime missing or failing: torch's number stands
        best = min(best, ort_sgemm_seconds(a.numpy(), b.numpy(), reps))
    return 2 * n**3 / best / 1e9


def ort_sgemm_seconds(a: np.ndarray, b: np.ndarray, reps: int) -> float:
    """Best wall time of ONNX Runtime's MatMul of `a` by the constant `b` over `reps` runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..runtime.session import default_threads, make_session

    n = a.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sgemm.onnx"
        onnx.save(model, str(path))
        sess, _, _ = make_session(path, ("CPUExecutionProvider",), default_threads())
        sess.run(None, {"a": a})
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            best = min(best, time.perf_counter() - t0)
    return best


def machine_key() -> str:
    """What identifies a machine's peak in the cache: CPU model, vector flags and the cores this process may use."""
    return f"{cpu_model()} | {cpu_flags()} | {usable_cores()} cores"


def read_cache(out_dir: Path) -> dict[str, Any]:
    """The peak cache of a bench output folder ({} when absent or unreadable)."""
    try:
        data = json.loads((out_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(out_dir: Path, key: str, entry: dict[str, Any]) -> None:
    """Record this machine's best FMA peak in the output folder's cache (atomically replaced)."""
    data = read_cache(out_dir)
    data[key] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{CACHE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out_dir / CACHE_FILE)


def measure_peak(out_dir: Path | None = None, sgemm_n: int = 2048) -> dict[str, Any]:
    """The peak this bench compares with: the FMA kernel's best on this machine (now, or cached from an earlier
    run in `out_dir` when that was higher), else the sgemm figure labelled as a fallback. Also carries the sgemm
    figure, which the report shows beside it."""
    sgemm = sgemm_peak(sgemm_n)
    fma = fma_peak()
    if fma is None:
        return {
            "gflops": sgemm,
            "source": "sgemm",
            "label": f"fp32 matmul ({sgemm_n}^3 sgemm; no C compiler for the FMA kernel, so a lower bound)",
            "sgemm_gflops": sgemm,
        }
    key = machine_key()
    cached = read_cache(out_dir).get(key) if out_dir is not None else None
    best = fma
    if isinstance(cached, dict) and float(cached.get("gflops", 0)) > fma["gflops"]:
        best = cached
    elif out_dir is not None:
        write_cache(out_dir, key, fma | {"date": time.strftime("%Y-%m-%d %H:%M:%S")})
    return {
        "gflops": float(best["gflops"]),
        "source": "fma",
        "label": f"fp32 FMA peak ({fma['isa']} kernel on {fma['threads']} threads)",
        "measured_gflops": fma["gflops"],
        "cached_gflops": None if not isinstance(cached, dict) else float(cached.get("gflops", 0)),
        "cache_key": key,
        "fma": fma,
        "sgemm_gflops": sgemm,
    }


def settle_peak(
    peak: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path | None = None
) -> dict[str, Any]:
    """Make sure no row's GFLOP/s exceeds the peak it is compared with, and fill in each row's fraction.

    A row above the peak means the peak was under-measured (a busy machine, or the sgemm fallback): the FMA
    kernel is measured again for longer and the higher figure kept; a row still above it raises the peak to that
    row, and the label says so. Nothing is clipped: the fractions are honest against the peak reported."""
    best_row = max((r.get("gflops", 0.0) for r in rows), default=0.0)
    if best_row > peak["gflops"] and peak["source"] == "fma":
        again = fma_peak(seconds=0.2, repeats=9)
        if again is not None and again["gflops"] > peak["gflops"]:
            peak = peak | {"gflops": again["gflops"], "remeasured_gflops": again["gflops"]}
            if out_dir is not None:
                write_cache(out_dir, peak["cache_key"], again | {"date": time.strftime("%Y-%m-%d %H:%M:%S")})
    if best_row > peak["gflops"]:
        peak = peak | {
            "gflops": best_row,
            "label": peak["label"]
            + f"; raised to the best model row ({best_row:.0f} GFLOP/s), which exceeded it",
            "raised_to_row": True,
        }
    for r in rows:
        if "gflops" in r:
            r["fraction_of_peak"] = r["gflops"] / peak["gflops"]
    return peak
