"""`convlens job embed|explain|max_patches|verify|repair|bench`: the job verbs of the `convlens` command line.

explain's method flags are generated from the declarations of the registered attribution methods (one flag per
parameter name; a name that is also a job flag, such as occlusion's `engine`, gets the prefix `--method-`); the
chosen method's declaration validates them, so a flag of another method is refused with the registry's message.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from ..errors import BadInput
from .config import DEFAULT_METHOD, EXPLAIN_FAMILY
from .driver import repair_job_output, run_job
from .engines import ENGINES
from .manifest import ERRORS
from .outputs import verify_job_output

# every option of a job verb; a method parameter with one of these names is offered as --method-NAME
JOB_FLAGS = frozenset(
    {
        "out",
        "model",
        "arch",
        "engine",
        "address",
        "concurrency",
        "cpus-per-actor",
        "shard-size",
        "limit",
        "overwrite",
        "json",
        "method",
        "help",
    }
)
METHOD_DEST = "p_"  # argparse dest prefix of a method parameter


def add_job_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `job embed|explain|max_patches|verify|repair|bench` to a `convlens` subparsers object; handlers call
    `cmd_job`."""
    p = subparsers.add_parser(
        "job",
        help="dataset-scale jobs (embed, explain, max_patches) on this machine or a Ray cluster",
        description="Run a job over an image folder (class subfolders = labels), a text list of paths/URIs or a "
        "Parquet manifest with a 'path' column. Outputs: Parquet shards + manifest.json + errors.json in --out; "
        "an interrupted job resumes where it stopped when run again with the same arguments. "
        "`convlens job verify OUT` checks every shard against the manifest; `convlens job repair OUT` recomputes "
        "the damaged or missing ones.",
    )
    sub = p.add_subparsers(dest="job", required=True)
    for name, text in (
        ("embed", "embeddings + labels + paths (+ predictions) as Parquet shards"),
        ("explain", "an attribution map per image from a registered attribution method, as Parquet shards"),
        ("max_patches", "per-channel top-k maximally activating patches over the dataset"),
    ):
        q = sub.add_parser(name, help=text, description=text)
        _add_common_args(q)
        if name == "explain":
            _add_explain_args(q)
        else:
            _add_forward_args(q, name)
        q.set_defaults(fn=cmd_job)
    _add_maintenance_parsers(sub)
    return p


def _add_common_args(q: argparse.ArgumentParser) -> None:
    """The input, output, model and engine flags every job verb takes."""
    q.add_argument("input", help="image folder, .txt list (path[<TAB>label] per line) or .parquet manifest")
    q.add_argument("--out", "-o", required=True, help="output folder (shards, manifest.json, errors.json)")
    q.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name, torchvision name or file")
    q.add_argument("--arch", default=None, help="architecture for a state-dict checkpoint")
    q.add_argument("--engine", choices=ENGINES, default="local", help="local (default, no Ray) or ray")
    q.add_argument(
        "--address", default=None, help="Ray cluster to join: ray://host:10001 or auto (default: start one)"
    )
    q.add_argument("--concurrency", type=int, default=None, help="Ray actors (default: GPUs, else CPUs)")
    q.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per Ray actor")
    q.add_argument("--shard-size", type=int, default=256, help="images per shard (the unit of resumption)")
    q.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by path)")
    q.add_argument("--overwrite", action="store_true", help="discard a previous job in --out")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_forward_args(q: argparse.ArgumentParser, name: str) -> None:
    """embed / max_patches: the settings of their own batched forward pass."""
    q.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    q.add_argument("--backend", choices=("onnxruntime", "torch", "auto"), default="onnxruntime")
    q.add_argument(
        "--layer",
        default="",
        help="embed: tap (default: the embedding); max_patches: conv layer (default: the CAM layer)",
    )
    if name == "max_patches":
        q.add_argument("--k", type=int, default=9, help="patches per channel")


def method_flag(name: str) -> str:
    """The command-line flag of method parameter `name` (--method-NAME where NAME is also a job flag)."""
    flag = name.replace("_", "-")
    return f"--method-{flag}" if flag in JOB_FLAGS else f"--{flag}"


def _add_explain_args(q: argparse.ArgumentParser) -> None:
    """--method and one flag per parameter name declared by the registered attribution methods."""
    from .. import registry

    specs = registry.methods(EXPLAIN_FAMILY)
    q.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"a registered attribution method: {', '.join(s.name for s in specs)} (default: {DEFAULT_METHOD})",
    )
    seen: dict[str, list[Any]] = {}
    for spec in specs:
        for info in spec.param_infos():
            seen.setdefault(info.name, []).append((spec.name, info))
    g = q.add_argument_group(
        "method parameters",
        "Declared by the methods named in brackets; the chosen --method's declaration validates them "
        "(defaults: the method's own, as for `convlens explain`).",
    )
    for pname in sorted(seen):
        g.add_argument(
            method_flag(pname),
            dest=METHOD_DEST + pname,
            default=None,
            metavar="VALUE",
            help=_param_help(seen[pname]).replace("%", "%%"),  # argparse %-formats help texts
        )


def _param_help(owners: list[Any]) -> str:
    """The help of one parameter name: each distinct declaration (help, choices, default) with the methods
    that declare it in brackets."""
    groups: dict[str, list[str]] = {}
    for method, info in owners:
        text = info.help
        if info.choices:
            text += f" (choices: {', '.join(map(str, info.choices))})"
        if info.default is not None:
            text += f" (default: {info.default})"
        groups.setdefault(text, []).append(method)
    return " | ".join(f"[{', '.join(ms)}] {text}" for text, ms in groups.items())


def _add_maintenance_parsers(sub: Any) -> None:
    """`job verify`, `job repair` and `job bench`."""
    v = sub.add_parser(
        "verify",
        help="check every shard of a job output against its manifest (size, SHA-256); exit 2 if any is damaged",
        description="Lists damaged or missing shards (and merged outputs) of OUT; exit status 2 if there are any.",
    )
    v.add_argument("out", help="the job's output folder (the --out of the job)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(fn=cmd_job)
    r = sub.add_parser(
        "repair",
        help="recompute exactly the damaged or missing shards of a job output and rewrite its manifest",
        description="Verifies OUT, recomputes the shards that are damaged or missing with the job's own settings "
        "(same inputs and model weights required) and rewrites the manifest.",
    )
    r.add_argument("out", help="the job's output folder (the --out of the job)")
    r.add_argument(
        "--model", "-m", default=None, help="the job's model, if its recorded name or path no longer loads"
    )
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(fn=cmd_job)
    b = sub.add_parser("bench", help="throughput of embed: local vs Ray with 1 and 2 actors")
    b.add_argument("--n", type=int, default=500, help="generated images")
    b.add_argument("--models", default="fashion_cnn", help="comma-separated models")
    b.add_argument("--actors", default="1,2", help="comma-separated Ray actor counts ('' = local only)")
    b.add_argument("--shard-size", type=int, default=50)
    b.add_argument("--repeats", type=int, default=1, help="runs per configuration (the best is kept)")
    b.add_argument("--out", default=None, help="report folder (default artifacts/bench)")
    b.set_defaults(fn=cmd_job)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """run_job's job-specific keywords from parsed flags: the forward settings, or the method and the method
    parameters given on the command line (the others keep the method's defaults)."""
    if args.job == "explain":
        params = {
            k[len(METHOD_DEST) :]: v
            for k, v in vars(args).items()
            if k.startswith(METHOD_DEST) and v is not None
        }
        return {"arch": args.arch, "method": args.method, "params": params}
    opts = {"arch": args.arch, "batch_size": args.batch_size, "backend": args.backend, "layer": args.layer}
    if args.job == "max_patches":
        opts["k"] = args.k
    return opts


def cmd_job(args: argparse.Namespace) -> int:
    """Handler of `convlens job ...`: runs, verifies or repairs a job (progress bar on a terminal) and prints a
    summary. Errors are raised as BadInput after the progress bar is closed: one stderr line, exit 2."""
    if args.job == "bench":
        return _cmd_bench(args)
    if args.job == "verify":
        return _cmd_verify(args)
    with ProgressBar(f"job {args.job}") as bar:
        if args.job == "repair":
            s = repair_job_output(args.out, model=args.model, progress=bar.progress)
        else:
            s = run_job(
                args.job,
                args.input,
                args.out,
                model=args.model,
                engine=args.engine,
                address=args.address,
                concurrency=args.concurrency,
                cpus_per_actor=args.cpus_per_actor,
                shard_size=args.shard_size,
                limit=args.limit,
                overwrite=args.overwrite,
                progress=bar.progress,
                **options_from_args(args),
            )
    if getattr(args, "json", False):
        print(json.dumps(s))
    elif args.job == "repair":
        what = ", ".join(s["repaired"]) if s["repaired"] else "nothing was damaged or missing"
        print(f"repaired {s['out']}: {what} ({s['computed_shards']} shards computed, {s['wall_s']} s)")
    else:
        print(
            f"{s['job']}: {s['ok']}/{s['images']} images -> {s['out']} ({s['computed_shards']} shards computed, "
            f"{s['skipped_shards']} reused, {s['errors']} unreadable listed in {ERRORS}, {s['wall_s']} s)"
        )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """`convlens job bench`: embed throughput, local vs Ray; prints the Markdown table."""
    from .bench import bench_jobs

    rep = bench_jobs(
        n=args.n,
        models=[m for m in args.models.split(",") if m],
        actors=[int(a) for a in args.actors.split(",") if a.strip()],
        shard_size=args.shard_size,
        out=args.out,
        repeats=args.repeats,
    )
    print(rep["markdown"])
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """`convlens job verify OUT`: one line per damaged or missing file on stdout, then BadInput (exit 2)."""
    rep = verify_job_output(args.out)
    if args.json:
        print(json.dumps(rep))
    else:
        for p in rep["problems"]:
            print(f"{p['file']}: {p['problem']}")
    if rep["problems"]:
        raise BadInput(
            f"{rep['out']}: {len(rep['problems'])} job file(s) damaged or missing; "
            f"run `convlens job repair {shlex.quote(rep['out'])}` to recompute them"
        )
    if not args.json:
        print(f"{rep['out']}: all {rep['verified']} recorded shards verified ({rep['job']}, {rep['status']})")
    return 0


class ProgressBar:
    """A tqdm progress bar on stderr, drawn only on a terminal and only once there is progress, and always
    closed (its line cleared) before the context exits, so an error prints as one clean line."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def progress(self, frac: float, msg: str) -> None:
        """Move the bar to `frac` (0..1) with `msg` beside it (nothing off a terminal)."""
        if self.bar is None:
            if not sys.stderr.isatty():
                return
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=self.desc, unit="‰", leave=False, file=sys.stderr)
        self.bar.n = int(round(1000 * frac))
        self.bar.set_postfix_str(msg, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        sys.stderr.flush()
