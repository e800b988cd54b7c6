"""Running a job: plan the shards, resume from a verified manifest, let an engine compute what is missing, and
write each shard atomically with its size and SHA-256 in the manifest; `repair_job_output` recomputes exactly the
damaged or missing shards of an output with the job's own settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from .config import JobConfig, build_config, config_from_manifest
from .engines import ENGINES, Progress, local_results, ray_results
from .inputs import Inputs, list_inputs
from .manifest import (
    ERRORS,
    FORMAT,
    MANIFEST,
    MERGED,
    SHARD_DIR,
    OutputLock,
    atomic_write,
    clean_temporaries,
    find_problems,
    is_count,
    prepare_out,
    read_manifest,
    shard_name,
    verified,
    write_json,
)
from .outputs import job_manifest, merge_max_patches
from .worker import Shard, load_model, plan_shards

if TYPE_CHECKING:
    from ..zoo import Backbone

OnShard = Callable[[int, dict[str, Any]], None] | None


def run_job(
    job: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | Backbone = "efficientnet_lite0",
    engine: str = "local",
    address: str | None = None,
    concurrency: int | None = None,
    cpus_per_actor: float = 1.0,
    shard_size: int = 256,
    limit: int | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    on_shard: OnShard = None,
    model_name: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run (or resume) `job` over `source` into folder `out`; returns a summary. Finished shards are verified
    and skipped.

    `model` is a name or a loaded Backbone (Ray actors load it by its name, or by `model_name` when given: what
    the job records and resumes by). `options`: for embed and max_patches, arch, backend, batch_size, layer, k;
    for explain, arch, method (a registered attribution method, default occlusion) and that method's parameters,
    as keywords or as `params={...}` (the form for names that are also run_job keywords, such as occlusion's
    `engine`), validated by the method's declaration like `accel.run`."""
    _check_engine(engine, address, concurrency, cpus_per_actor)
    t_start = time.perf_counter()
    from ..zoo import Backbone

    outp = Path(out).expanduser()
    name = model_name or (model.name if isinstance(model, Backbone) else os.fspath(model))
    cfg0 = build_config(job, name, shard_size, options)
    cfg0.check()
    inputs = list_inputs(source, limit)
    prepare_out(outp)  # before the model loads and any image is decoded
    net = model if isinstance(model, Backbone) else load_model(os.fspath(model), cfg0.arch)
    cfg = cfg0.resolve(net)
    model_info = {"name": net.name, "weights": net.weights_hash(), "input_shape": list(net.input_shape)}
    fingerprint = _fingerprint(cfg, model_info, inputs)

    with OutputLock(outp):
        cleaned = clean_temporaries(outp)  # left by a killed job: we hold the lock, nobody else writes here
        shards = plan_shards(inputs, cfg.shard_size)
        manifest = _start_manifest(outp, cfg, model_info, inputs, len(shards), fingerprint, overwrite)
        manifest.update(engine=engine)
        done, todo = _resume(outp, manifest, shards, overwrite)
        n_total = len(inputs)
        n_done = sum(manifest["shards"][str(k)]["count"] for k in done)
        _report(progress, n_done / n_total, f"{n_done}/{n_total} images ({len(done)} shards already done)")
        info: dict[str, Any] = {}
        t_run = time.perf_counter()
        computed = 0
        if todo:
            if engine == "local":
                results = local_results(cfg, todo, net, progress, n_done, n_total)
            else:
                results = ray_results(cfg, todo, address, concurrency, cpus_per_actor, info)
            computed = _write_results(outp, manifest, todo, results, n_done, n_total, progress, on_shard)
        run_s = time.perf_counter() - t_run
        summary = _finish(outp, manifest, net, cleaned, info)
        computed_images = sum(len(s.paths) for s in todo)
        summary |= {
            "shards": len(shards),
            "computed_shards": computed,
            "skipped_shards": len(done),
            "run_s": round(run_s, 3),
            "wall_s": round(time.perf_counter() - t_start, 3),
            "images_per_s": round(computed_images / run_s, 2) if computed and run_s > 0 else None,
        }
        summary = {k: summary[k] for k in _SUMMARY_ORDER if k in summary} | info
        manifest.update(summary=summary, finished=time.time())
        write_json(outp / MANIFEST, manifest)
        _report(progress, 1.0, f"{n_total} images, {summary['errors']} unreadable")
        return summary


_SUMMARY_ORDER = (
    "job",
    "out",
    "engine",
    "images",
    "ok",
    "errors",
    "shards",
    "computed_shards",
    "skipped_shards",
    "run_s",
    "wall_s",
    "images_per_s",
    "cleaned_temporaries",
)


def _check_engine(engine: str, address: str | None, concurrency: int | None, cpus_per_actor: float) -> None:
    """BadInput for engine settings that cannot work together."""
    if engine not in ENGINES:
        raise BadInput(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if address and engine != "ray":
        raise BadInput("--address joins a Ray cluster; use it with --engine ray")
    if concurrency is not None and (isinstance(concurrency, bool) or int(concurrency) < 1):
        raise BadInput(f"concurrency must be >= 1 actors, got {concurrency!r}")
    if not cpus_per_actor > 0:
        raise BadInput(f"cpus_per_actor must be > 0, got {cpus_per_actor!r}")


def _fingerprint(cfg: JobConfig, model_info: dict[str, Any], inputs: Inputs) -> str:
    """SHA-256 of everything that decides the output: settings, model weights, input listing, format."""
    doc = {"config": asdict(cfg), "model": model_info, "inputs": inputs.sha256(), "format": FORMAT}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _start_manifest(
    out: Path,
    cfg: JobConfig,
    model_info: dict[str, Any],
    inputs: Inputs,
    num_shards: int,
    fingerprint: str,
    overwrite: bool,
) -> dict[str, Any]:
    """OUT's manifest to resume (the same job), or a new one; BadInput when OUT holds a different job."""
    old = None if overwrite else read_manifest(out)
    if old is not None and old.get("fingerprint") != fingerprint:
        why = (
            "its inputs changed"
            if old.get("inputs", {}).get("sha256") != inputs.sha256()
            else "it used other settings or another model"
        )
        raise BadInput(
            f"{out} holds a different job ({old.get('job')}; {why}); choose another --out or pass --overwrite"
        )
    return old or {
        "format": FORMAT,
        "job": cfg.job,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "model": model_info,
        "inputs": {
            "source": inputs.source,
            "count": len(inputs),
            "sha256": inputs.sha256(),
            "classes": inputs.classes,
            "duplicates": inputs.duplicates,
        },
        "num_shards": num_shards,
        "shards": {},
        "created": time.time(),
    }


def _resume(
    out: Path, manifest: dict[str, Any], shards: list[Shard], overwrite: bool
) -> tuple[set[int], list[Shard]]:
    """The shards already done (recorded and verified byte for byte) and those to compute; the manifest is
    rewritten first without the records of missing or altered shards, so readers never see them."""
    recs: dict[str, Any] = manifest["shards"]
    done = {s.index for s in shards if str(s.index) in recs and verified(out, recs[str(s.index)])}
    for key in [k for k in recs if int(k) not in done]:
        del recs[key]  # recorded but missing or altered: compute again
    manifest.update(status="running")
    manifest.pop("output_files", None)
    write_json(out / MANIFEST, manifest)  # first: readers never see a manifest naming deleted files
    if overwrite:
        for f in list((out / SHARD_DIR).glob("*.parquet")) + [out / n for n in MERGED]:
            f.unlink(missing_ok=True)
    return done, [s for s in shards if s.index not in done]


def _write_results(
    out: Path,
    manifest: dict[str, Any],
    todo: list[Shard],
    results: Iterator[dict[str, Any]],
    n_done: int,
    n_total: int,
    progress: Progress,
    on_shard: OnShard,
) -> int:
    """Write each shard an engine returns (atomically), record it in the manifest, report progress; returns
    how many shards were written. The engine is closed however this ends."""
    by_index = {s.index: s for s in todo}
    computed = 0
    try:
        for r in results:
            s = by_index[r["shard"]]
            name = shard_name(manifest["job"], s.index)
            atomic_write(out / name, r["payload"])
            rec = {
                "file": name,
                "first": s.first,
                "count": len(s.paths),
                "rows": r["rows"],
                "errors": r["errors"],
                "bytes": len(r["payload"]),
                "sha256": hashlib.sha256(r["payload"]).hexdigest(),
                "seconds": r["seconds"],
                "backend": r["backend"],
                "engine": manifest["engine"],
            }
            manifest["shards"][str(s.index)] = rec
            write_json(out / MANIFEST, manifest)
            computed += 1
            n_done += len(s.paths)
            _report(progress, n_done / n_total, f"{n_done}/{n_total} images")
            if on_shard is not None:
                on_shard(s.index, rec)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    return computed


def _finish(
    out: Path, manifest: dict[str, Any], net: Backbone, cleaned: list[str], info: dict[str, Any]
) -> dict[str, Any]:
    """errors.json, max_patches' merged files, and the manifest marked complete; the summary's counts."""
    recs = manifest["shards"]
    errors = sorted(
        ({"path": p, "error": e} for rec in recs.values() for p, e in rec["errors"]),
        key=lambda d: d["path"],
    )
    write_json(out / ERRORS, {"count": len(errors), "files": errors})
    outputs = {"errors": ERRORS}
    if manifest["job"] == "max_patches":
        names, files = merge_max_patches(out, manifest, net)
        outputs.update(names)
        manifest["output_files"] = files
    manifest.update(status="complete", outputs=outputs)
    return {
        "job": manifest["job"],
        "out": str(out),
        "engine": manifest["engine"],
        "images": manifest["inputs"]["count"],
        "ok": sum(rec["rows"] for rec in recs.values()),
        "errors": len(errors),
        "cleaned_temporaries": len(cleaned),
    }


def _report(progress: Progress, frac: float, msg: str) -> None:
    """Call `progress` if given, with the fraction clipped to 0..1."""
    if progress is not None:
        progress(max(0.0, min(1.0, frac)), msg)


def repair_job_output(
    out_dir: str | os.PathLike[str],
    model: str | Backbone | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Recompute exactly the damaged or missing shards of a job output (and its merged files) with the job's own
    settings, and rewrite its manifest. `model` overrides the recorded model name (the same weights are
    required). Returns run_job's summary plus 'repaired' (the files that were damaged or missing)."""
    out, m = job_manifest(out_dir)
    problems = find_problems(out, m)
    try:
        jc = config_from_manifest(m["config"])
    except (TypeError, BadInput) as e:
        raise BadInput(
            f"{out / MANIFEST}: the job settings cannot be read back ({e}); rerun the job with --overwrite"
        ) from None
    src, count = m["inputs"].get("source"), m["inputs"].get("count")
    if not isinstance(src, str) or not is_count(count) or count == 0:
        raise BadInput(f"{out / MANIFEST}: the job's inputs are not recorded; rerun the job with --overwrite")
    inputs = list_inputs(src, limit=count)
    if inputs.sha256() != m["inputs"].get("sha256"):
        raise BadInput(
            f"the inputs of the job in {out} changed since it ran ({src}), so its shards cannot be recomputed "
            "as they were; rerun the whole job with --overwrite"
        )
    from ..zoo import Backbone

    net = model if isinstance(model, Backbone) else load_model(model or jc.model, jc.arch)
    if net.weights_hash() != m["model"].get("weights"):
        raise BadInput(
            f"the model {net.name!r} has other weights than the one that ran the job in {out}; pass the same "
            "model with --model, or rerun the whole job with --overwrite"
        )
    summary = run_job(
        jc.job,
        src,
        out,
        model=net,
        model_name=jc.model,
        shard_size=jc.shard_size,
        limit=count,
        progress=progress,
        **job_options(jc),
    )
    summary["repaired"] = [p["file"] for p in problems]
    return summary


def job_options(jc: JobConfig) -> dict[str, Any]:
    """The run_job keywords that reproduce `jc` (explain: the method and its parameters as `params`)."""
    if jc.job == "explain":
        return {"arch": jc.arch, "method": jc.method, "params": dict(jc.params)}
    return {"arch": jc.arch, "backend": jc.backend, "batch_size": jc.batch_size, "layer": jc.layer, "k": jc.k}
