"""`convlens` command line: the zoo, predictions, ONNX export, and every registered technique.

Technique flags are generated from each method's parameter declaration. Bad input exits with code 2 and a
one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import BadInput

FAMILY_VERBS = {
    "explain": "attribute",
    "inspect": "inspect",
    "synthesize": "synthesize",
    "concepts": "concepts",
}


class _Parser(argparse.ArgumentParser):
    """argparse with convlens's error convention: one line on stderr, exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        print(f"convlens: error: {' '.join(message.split())}{hint}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (`--top 0` is refused, not silently taken as 1)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_out_file(path: str | os.PathLike[str], suffixes: Sequence[str], what: str) -> Path:
    """Validate an output file path before any work starts: a known suffix, not a folder, and a folder that
    exists (or can be made) and takes a new file. Returns the path; BadInput saying what to change otherwise."""
    text = os.fspath(path)
    if not text or "\x00" in text:
        raise BadInput(f"{what}: the output path is empty or holds a NUL character")
    out = Path(text).expanduser()
    if out.is_dir():
        raise BadInput(
            f"{what}: {text!r} is a folder; give a file name such as {Path(text) / ('out' + suffixes[0])}"
        )
    if suffixes and out.suffix.lower() not in suffixes:
        raise BadInput(f"{what}: {out.name!r} has an unsupported extension; use one of {', '.join(suffixes)}")
    _check_writable_dir(out.parent, what)
    if out.exists() and not os.access(out, os.W_OK):
        raise BadInput(f"{what}: {text!r} exists and is not writable")
    return out


def check_out_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Validate an output folder before any work starts: it exists or can be made, and takes new files."""
    out = Path(os.fspath(path)).expanduser()
    if out.exists() and not out.is_dir():
        raise BadInput(f"{what}: {str(out)!r} exists and is not a folder")
    _check_writable_dir(out, what)
    return out


def _check_writable_dir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"{what}: cannot create the folder {str(folder)!r} ({e.strerror or e})") from None
    probe = folder / f".convlens-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
    except OSError as e:
        raise BadInput(f"{what}: cannot write into {str(folder)!r} ({e.strerror or e})") from None
    finally:
        probe.unlink(missing_ok=True)


def _save_output(write: Any, out: Path, what: str) -> None:
    """Run `write(tmp)` into a temporary name beside `out`, then move it in place: a full disk or a killed
    process never leaves half a file under the user's name; OSError becomes one clear line."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise BadInput(f"{what}: could not write {str(out)!r} ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


class _ProgressBar:
    """A `callback(frac, msg)` that draws a tqdm bar on stderr (terminals only); close() removes it."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr, disable=None)

    def __call__(self, frac: float, msg: str = "") -> None:
        self._bar.n = int(round(100 * max(0.0, min(1.0, frac))))
        if msg:
            self._bar.set_postfix_str(msg, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Remove the bar from the terminal."""
        self._bar.close()


class RandomWeights(Exception):
    """A backbone with random weights was loaded without --allow-random (exit status 3; the notice is on stdout)."""


def _load(args: argparse.Namespace) -> Any:
    """The backbone the flags name; a random-weight one (a torchvision architecture without cached weights) is
    announced on stdout and refused unless --allow-random, because its predictions and maps mean nothing."""
    import warnings

    from . import load  # accel.load: gives an .onnx file its sandboxed engine

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = load(args.model, arch=getattr(args, "arch", None), trust=getattr(args, "trust", False))
    allow = bool(getattr(args, "allow_random", False))
    random = not getattr(net, "pretrained", True)
    for w in caught:  # said once, in our words below, instead of a raw Python warning
        if not (random and "RANDOM" in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if random:
        why = next((str(w.message) for w in caught if "RANDOM" in str(w.message)), net.source)
        print(
            f"{net.name} has RANDOM WEIGHTS, so its predictions and explanations mean nothing ({why})."
            + ("" if allow else " Pass --allow-random to run it anyway.")
        )
        if not allow:
            raise RandomWeights(net.name)
    return net


def cmd_models(args: argparse.Namespace) -> int:
    from .zoo import zoo_table

    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "yes" if r["weights_present"] else "NO "
        print(f"{r['name']:<{w}}  weights:{mark}  {r['description']}  [{r['source']}]")
    print(
        "\nAlso: any torchvision classifier by name (e.g. resnet50; pretrained weights if cached or downloadable),"
    )
    print("a .pt/.pth/.safetensors state dict with --arch NAME, or an .onnx file (forward-only).")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import open_image

    img = open_image(args.image)
    net = _load(args)
    preds = net.predict(img, top=args.top)
    if not getattr(net, "pretrained", True) and not args.json:
        print("(random weights: these classes are noise)")
    if args.json:
        print(json.dumps([{"label": lab, "probability": p} for lab, p in preds], indent=2))
    else:
        for lab, p in preds:
            print(f"{p:7.2%}  {lab}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .runtime.export import check_file_parity, export_backbone

    out = check_out_file(args.out, (".onnx",), "--out")
    net = _load(args)
    taps = args.taps or (["logits"] if net.has_head else ["embedding"])
    path = export_backbone(net, taps, opset=args.opset, out=out)
    try:
        meta = check_file_parity(net, taps, path)  # the file just written, not a cached copy
    except BadInput:
        path.unlink(
            missing_ok=True
        )  # never leave a graph that disagrees with its model under the user's name
        raise
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB), taps {taps}, opset {args.opset}")
    print(f"parity vs torch (max abs diff per tap): {json.dumps(meta.get('parity_max_abs', {}))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    if args.out is not None:
        check_out_dir(args.out, "--out")
    bar = _ProgressBar("bench")
    try:
        rep = run_bench(quick=args.quick, out_dir=args.out, int8=True if args.int8 else None, progress=bar)
    finally:
        bar.close()
    print(rep["markdown"])
    print("wrote " + ", ".join(rep["files"]))
    return 0


def _add_method_args(p: argparse.ArgumentParser, spec: Any) -> None:
    """One flag per declared parameter; its help is the declaration's own line (range with the cap in force,
    default once)."""
    for info in spec.param_infos():
        flag = "--" + info.name.replace("_", "-")
        p.add_argument(
            flag,
            dest=f"p_{info.name}",
            default=None,
            metavar=_metavar(info),
            help=info.describe().replace("%", "%%"),
        )


def _metavar(info: Any) -> str:
    """What a flag takes, in words: N, X, NAME, PATH, a kind."""
    if info.choices:
        return "{" + ",".join(map(str, info.choices)) + "}" if len(info.choices) <= 4 else "CHOICE"
    if info.kind:
        return info.kind.upper()
    base = info.type
    text = str(base)
    if "bool" in text:
        return "BOOL"
    if "int" in text:
        return "N"
    if "float" in text:
        return "X"
    return "VALUE"


def _method_args(args: argparse.Namespace, rest: list[str]) -> argparse.Namespace:
    """Second parsing phase: the chosen method's own flags, generated from its parameter declaration."""
    from . import registry

    spec = registry.get(args.method)
    if spec.family != args.family:
        raise BadInput(f"{spec.name} is a {spec.family} method; use `convlens {_verb(spec.family)}`")
    mp = _Parser(
        prog=f"convlens {_verb(spec.family)} --method {spec.name}",
        description=f"{spec.summary} (Also: --model, --arch, --trust, --out; see `convlens {_verb(spec.family)} -h`.)",
    )
    mp.add_argument(
        "image",
        nargs=None if spec.needs_image else "?",
        default=None,
        help="input image" + ("" if spec.needs_image else " (optional)"),
    )
    _add_method_args(mp, spec)
    margs = mp.parse_args(rest)
    for k, v in vars(margs).items():
        setattr(args, k, v)
    if args.out is None:
        args.out = f"{spec.name}.png"
    return args


def _pil_format(out: Path) -> str:
    """PIL's format name for an output suffix (the temporary name hides it)."""
    from PIL import Image

    Image.init()
    return Image.EXTENSION[out.suffix.lower()]


def _verb(family: str) -> str:
    return next(v for v, f in FAMILY_VERBS.items() if f == family)


def cmd_method(args: argparse.Namespace) -> int:
    from . import registry
    from .images import open_image

    spec = registry.get(args.method)
    if spec.needs_image and not args.image:
        raise BadInput(
            f"{spec.name} needs an input image: convlens {_verb(spec.family)} IMAGE --method {spec.name}"
        )
    out = check_out_file(args.out, IMAGE_SUFFIXES, "--out")
    img = open_image(args.image) if args.image else None
    net = _load(args)
    params = {k[2:]: v for k, v in vars(args).items() if k.startswith("p_") and v is not None}
    bar = _ProgressBar(spec.name)
    run_id = ""
    try:
        obs = registry.ProgressObserver(bar)
        if args.save:  # the stored-run service: an identical request is answered from the store
            from .runs import answer
            from .store import RunStore

            a = answer(RunStore(), spec.name, net, img, params, model=args.model, observer=obs)
            res, run_id = a.result, a.run_id + (" (answered from the store)" if a.from_store else "")
        else:
            res = registry.run(spec.name, net, img, observer=obs, **params)
    finally:
        bar.close()
    picture = res.overlay() if res.kind == "map" else res.to_image()
    _save_output(lambda tmp: picture.save(tmp, format=_pil_format(out)), out, "--out")
    summary = {k: v for k, v in res.meta.items() if isinstance(v, (int, float, str, bool))}
    print(f"wrote {out}  {json.dumps(summary)}" + (f"  run {run_id}" if run_id else ""))
    _save_extras(args, spec.name, net, img, res)
    return 0


def _save_extras(args: argparse.Namespace, method: str, net: Any, img: Any, res: Any) -> None:
    """--raw: the result's array as .npy (maps: float32 HxW aligned with the network input, unnormalised);
    --full: a map over the original photo at its own resolution, with a colour bar and what was explained."""
    import numpy as np

    if args.raw:
        raw = check_out_file(args.raw, (".npy",), "--raw")
        _save_output(lambda tmp: np.save(tmp, np.asarray(res.data), allow_pickle=False), raw, "--raw")
        print(f"wrote {raw} (array {tuple(np.shape(res.data))} {np.asarray(res.data).dtype})")
    if args.full:
        full = check_out_file(args.full, (".png",), "--full")
        if res.kind != "map":
            raise BadInput(f"--full draws maps over the photo; {method} returns a {res.kind}: use --out")
        from .images.figure import map_figure, map_title

        photo = img if img is not None else res.image
        box = net.input_box(photo.size) if img is not None else None
        fig = map_figure(photo, res.data, box, title=map_title(method, res.meta))
        _save_output(lambda tmp: fig.save(tmp, format="PNG"), full, "--full")
        print(f"wrote {full} ({fig.width}x{fig.height}, colour bar)")


def _model_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose a backbone: --model, --arch, --trust."""
    p.add_argument("--model", "-m", default="efficientnet_lite0", help="zoo name, torchvision name, or file")
    p.add_argument("--arch", default=None, help="architecture for a state-dict checkpoint")
    p.add_argument(
        "--trust", action="store_true", help="allow full pickles in checkpoints (runs their code!)"
    )
    p.add_argument(
        "--allow-random",
        action="store_true",
        help="run a backbone that has random weights (a torchvision architecture without pretrained weights)",
    )


def _add_model_verbs(sub: Any) -> None:
    """`models`, `predict` and `export`: the zoo and what a backbone does on its own."""
    p = sub.add_parser("models", help="list the model zoo and whether weights are present")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("predict", help="top-k classes for an image")
    p.add_argument("image")
    _model_args(p)
    p.add_argument("--top", type=_positive_int, default=5, help="how many classes to print (>= 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("export", help="export a backbone (with taps as outputs) to ONNX, parity-checked")
    _model_args(p)
    p.add_argument("--taps", nargs="*", default=None, help="logits, embedding, or layer names")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(fn=cmd_export)


def _add_tool_verbs(sub: Any) -> None:
    """`bench`, `train`, `limits`, `store` and `config`: the workbench's own tools."""
    p = sub.add_parser(
        "bench", help="benchmark torch eager vs ONNX Runtime (and Captum) on convlens workloads"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer workloads and repeats (about 2 minutes on 2 cores)"
    )
    p.add_argument("--int8", action="store_true", help="include the opt-in INT8 rows in a quick run")
    p.add_argument(
        "--out", default=None, help="folder for the JSON and Markdown report (default artifacts/bench)"
    )
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser(
        "train",
        help="train a model this project ships: fashion_cnn, fast_style (one style), scouter (SCOUTER head)",
        description="`convlens train WHAT --help` lists WHAT's own flags, e.g. "
        "`convlens train fast_style --style IMG --content-dir DIR --out models/fast_style_mine.safetensors`.",
    )
    p.add_argument("what", choices=TRAINABLE)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the training command's own flags")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("limits", help="the resource caps, their environment variables and current values")
    p.set_defaults(fn=cmd_limits)

    p = sub.add_parser(
        "store",
        help="check the run store, or rebuild its index from the run folders",
        description="`check` reports rows, run folders, damaged rows and artifacts (exit 1 if anything is wrong); "
        "`rebuild` re-creates the index from every run folder's manifest (a damaged index is kept aside).",
    )
    p.add_argument("action", choices=("check", "rebuild"))
    p.add_argument(
        "--store", default=None, help="store folder (default: CONVLENS_STORE or the user data dir)"
    )
    p.add_argument("--quick", action="store_true", help="check: skip reading every artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_store)

    p = sub.add_parser("config", help="every CONVLENS_* setting: default, current value and meaning")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="the README's table of settings and defaults")
    p.set_defaults(fn=cmd_config)


def _add_method_verbs(sub: Any) -> None:
    """`explain`, `inspect` and `synthesize`: one verb per family; method flags come in a second parse."""
    from . import registry

    for verb, family in FAMILY_VERBS.items():
        names = ", ".join(sp.name for sp in registry.methods(family)) or "(none yet)"
        p = sub.add_parser(
            verb,
            help=f"run a technique of the {family} family",
            description=f"Methods: {names}. Method flags: `convlens {verb} --method NAME --help`.",
        )
        p.add_argument(
            "--method", required=True, help=f"one of: {names}; the input IMAGE goes before or after it"
        )
        _model_args(p)
        p.add_argument("--out", default=None, help="output PNG (default: <method>.png)")
        p.add_argument(
            "--raw", default=None, help="also save the raw result array as .npy (maps: unnormalised)"
        )
        p.add_argument(
            "--full",
            default=None,
            help="also save the map over the full-resolution photo with a colour bar (.png)",
        )
        p.add_argument(
            "--save",
            action="store_true",
            help="keep the result in the run store (CONVLENS_STORE) and answer an identical request from it",
        )
        p.set_defaults(fn=cmd_method, family=family)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (technique subcommands generated from the registry)."""
    from .jobs import add_job_parser

    ap = _Parser(prog="convlens", description="See inside convolutional networks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_model_verbs(sub)
    _add_tool_verbs(sub)
    add_job_parser(sub)
    _add_method_verbs(sub)
    return ap


TRAINABLE = ("fashion_cnn", "fast_style", "scouter")


def cmd_train(args: argparse.Namespace) -> int:
    """Hand the remaining flags to the training module's own command line."""
    import importlib

    mod = importlib.import_module(f"accel.training.{args.what}")
    return int(mod.main(list(args.rest)) or 0)


def cmd_limits(args: argparse.Namespace) -> int:
    """Print every resource cap (accel.limits) with its variable, default and current value."""
    from .limits import CAPS
    from .settings import SettingError, get

    bad = []
    for c in CAPS.values():
        try:
            current = f"{get(c.env):>12,}"
        except SettingError as e:
            current = f"{'INVALID':>12}"
            bad.append(str(e))
        print(f"{c.env:<26} {current}  (default {c.default:,}): {c.what}")
    if bad:
        raise BadInput(bad[0])
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """`convlens store check|rebuild`: the store's health, or its index rebuilt from the run folders."""
    from .store import RunStore

    store = RunStore.unopened(args.store)
    rep: Any = store.check(deep=not args.quick) if args.action == "check" else store.rebuild()
    print(json.dumps(rep.to_dict(), indent=2, default=str) if args.json else "\n".join(rep.lines()))
    return 0 if args.action == "rebuild" or rep.ok else 1


def cmd_config(args: argparse.Namespace) -> int:
    """Print every CONVLENS_* setting (accel.settings) with its kind, default, current value and meaning."""
    from .settings import markdown_table, table

    if args.markdown:
        print(markdown_table())
        return 0
    rows = table()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            mark = "*" if r["set"] else " "
            print(f"{r['name']:<{w}} {mark} {r['current']!s:<14} (default {r['default']}) {r['meaning']}")
        print("\n* set in this environment")
    bad = [r for r in rows if isinstance(r["current"], str) and r["current"].startswith("INVALID")]
    if bad:
        raise BadInput(str(bad[0]["current"]).removeprefix("INVALID: "))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `convlens` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    helps = ("-h", "--help")
    method_help = (
        bool(argv)
        and argv[0] in FAMILY_VERBS
        and any(a in helps for a in argv)
        and any(a == "--method" or a.startswith("--method=") for a in argv)
    )
    if method_help:  # `convlens explain --method gradcam --help`: the method's own flags (second phase)
        argv = [a for a in argv if a not in helps]
    try:
        args, rest = ap.parse_known_args(argv)
        if method_help:
            rest = [*rest, "--help"]
        if (
            getattr(args, "fn", None) is not cmd_bench
        ):  # the bench measures torch as users run it (default heap)
            from .runtime.alloc import tune_allocator

            tune_allocator()
        if getattr(args, "family", None):
            args = _method_args(args, rest)
        elif rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        return int(args.fn(args) or 0)
    except BadInput as e:
        _error_line(str(e))
        return 2
    except RandomWeights:
        return 3
    except OSError as e:  # the environment (disk full, permissions, an unusable cache folder), not a bug
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _error_line(f"{e.strerror or e}{where}; check free space and permissions (or CONVLENS_CACHE / --out)")
        return 2
    except MemoryError:
        _error_line("out of memory; use a smaller input, batch or parameter")
        return 2
    except KeyboardInterrupt:
        print("convlens: interrupted", file=sys.stderr)
        return 130


def _error_line(msg: str) -> None:
    """The one stderr line every convlens error becomes (after any progress bar has been closed)."""
    sys.stderr.flush()
    print(f"convlens: error: {' '.join(msg.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
