"""The one result type every technique returns, with display helpers that keep rendering out of the methods, and
its codec: how a Result is written to a folder (arrays as .npy, images as PNG, the rest as a JSON-safe tree) and
read back, which the run store uses for every run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import colorize

KINDS = ("map", "image", "grid", "points", "patches")


@dataclass(frozen=True)
class LossRecord:
    """One step of an optimisation: the total loss and, where the objective has named parts, each part's value."""

    step: int
    value: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    """What a method produced: `data` (numpy), its `kind`, the input it explains, metadata (params, timings) and,
    for optimisation methods, the loss history (`losses`, one typed record per step)."""

    kind: str
    data: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    image: Image.Image | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    losses: list[LossRecord] = field(
        default_factory=list
    )  # optimisation methods: the loss curve, step by step

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Result kind must be one of {KINDS}, got {self.kind!r}")

    def overlay(
        self,
        alpha: float = 0.5,
        cmap: str = "jet",
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> Image.Image:
        """Blend a map over the image it explains (maps only); shared vmin/vmax give one colour scale across maps."""
        if self.kind != "map":
            return self.to_image()
        heat = Image.fromarray(colorize(self.data, cmap, vmin, vmax))
        if self.image is None:
            return heat
        base = self.image.convert("RGB").resize(heat.size, Image.Resampling.BILINEAR)
        return Image.blend(base, heat, float(alpha))

    def loss_curve(self) -> list[float]:
        """The total loss per recorded step (empty for methods that do not optimise)."""
        return [r.value for r in self.losses]

    def to_image(self, cmap: str = "jet") -> Image.Image:
        """A PIL image for display: the synthesized image, the rendered grid, or a colour-mapped map."""
        d = self.data
        if self.kind == "map":
            return Image.fromarray(colorize(d, cmap))
        if self.kind in ("image", "grid", "patches") and d.ndim == 3 and d.shape[-1] in (1, 3):
            arr = d if d.dtype == np.uint8 else (np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)
            return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        if self.kind in ("image", "grid") and d.ndim == 2:
            return Image.fromarray(colorize(d, "gray"))
        if "image" in self.extras and isinstance(self.extras["image"], Image.Image):
            return self.extras["image"]
        raise ValueError(f"cannot render a {self.kind!r} result with data of shape {d.shape} as an image")


# ---------------------------------------------------------------------------------------------------- the codec
# A Result in a folder: `data` as data.npy, the input as input.png, the picture a person looks at as rendered.png,
# and meta, extras and losses as JSON-safe trees whose images and arrays are files referenced by name
# ({"__png__": name}, {"__npy__": name}). Arrays are never pickled; names never leave the folder.

INPUT_PNG = "input.png"  # the image the result explains
RENDERED_PNG = "rendered.png"  # the overlay (maps) or the result's own picture


class ArtifactWriter:
    """Writes one result's files into a folder, each under a unique name made from a stem."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[str] = []

    def name(self, stem: str, suffix: str) -> str:
        """A new file name from `stem` (unsafe characters replaced, numbered when taken) and `suffix`."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "x"
        name, i = f"{base}{suffix}", 1
        while name in self.files:
            name, i = f"{base}_{i}{suffix}", i + 1
        self.files.append(name)
        return name

    def png(self, img: Image.Image, stem: str) -> str:
        """Save an image losslessly (modes PNG cannot hold become RGB); returns its file name."""
        name = self.name(stem, ".png")
        im = img if img.mode in ("RGB", "RGBA", "L", "LA", "I", "I;16", "1", "P") else img.convert("RGB")
        im.save(self.folder / name, format="PNG", compress_level=1)
        return name

    def npy(self, a: np.ndarray, stem: str) -> str:
        """Save an array as .npy without pickling; returns its file name."""
        name = self.name(stem, ".npy")
        with open(self.folder / name, "wb") as f:
            np.save(f, a, allow_pickle=False)
        return name


def encode_value(v: Any, w: ArtifactWriter, stem: str) -> Any:
    """A JSON-safe tree for meta/extras values: images and arrays go to files and are referenced by name."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, np.generic):
        return encode_value(v.item(), w, stem)
    if isinstance(v, Image.Image):
        return {"__png__": w.png(v, stem)}
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):  # a torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return {"__list__": [encode_value(x, w, f"{stem}_{i}") for i, x in enumerate(v.tolist())]}
        return {"__npy__": w.npy(v, stem)}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: encode_value(x, w, f"{stem}.{k}") for k, x in v.items()}
        return {
            "__items__": [
                [encode_value(k, w, stem), encode_value(x, w, f"{stem}_{i}")]
                for i, (k, x) in enumerate(v.items())
            ]
        }
    if isinstance(v, list):
        return [encode_value(x, w, f"{stem}_{i}") for i, x in enumerate(v)]
    if isinstance(v, tuple):
        return {"__tuple__": [encode_value(x, w, f"{stem}_{i}") for i, x in enumerate(v)]}
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return encode_value(dataclasses.asdict(v), w, stem)
    return {"__repr__": repr(v)[:2000]}


def artifact_path(folder: Path, name: Any) -> Path:
    """The file `name` inside `folder`; ValueError for a name that would reach outside it."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError("refers to a file outside the run folder")
    return folder / name


def load_png(path: Path) -> Image.Image:
    """A stored PNG, fully decoded (Pillow reads PNG only here, whatever the file holds)."""
    with Image.open(path, formats=("PNG",)) as im:
        im.load()
        return im.copy()


def decode_value(v: Any, folder: Path) -> Any:
    """The value `encode_value` wrote, read back from its tree and the files in `folder`."""
    if isinstance(v, list):
        return [decode_value(x, folder) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 1:
        ((k, x),) = v.items()
        if k == "__png__":
            return load_png(artifact_path(folder, x))
        if k == "__npy__":
            return np.load(artifact_path(folder, x), allow_pickle=False)
        if k == "__float__":
            return float(x)
        if k == "__tuple__":
            return tuple(decode_value(i, folder) for i in x)
        if k == "__list__":
            return [decode_value(i, folder) for i in x]
        if k == "__items__":
            return {_hashable(decode_value(a, folder)): decode_value(b, folder) for a, b in x}
        if k == "__repr__":
            return x
    return {k: decode_value(x, folder) for k, x in v.items()}


def _hashable(v: Any) -> Any:
    """A decoded dict key: JSON turned tuple keys into lists, so lists become tuples again."""
    return tuple(v) if isinstance(v, list) else v


def encode_result(result: Result, folder: Path) -> dict[str, Any]:
    """Write `result`'s files into `folder` and return the JSON-safe fields that describe it (kind, data file,
    input and rendered pictures, meta, extras, losses); `decode_result` reads them back."""
    w = ArtifactWriter(folder)
    fields: dict[str, Any] = {
        "kind": result.kind,
        "data": w.npy(np.asarray(result.data), "data"),
        "image": w.png(result.image, Path(INPUT_PNG).stem) if isinstance(result.image, Image.Image) else None,
    }
    shown = _rendered(result)
    fields["rendered"] = w.png(shown, Path(RENDERED_PNG).stem) if shown is not None else None
    fields["meta"] = encode_value(dict(result.meta), w, "meta")
    fields["extras"] = encode_value(dict(result.extras), w, "extras")
    fields["losses"] = encode_value([dataclasses.asdict(r) for r in result.losses], w, "losses")
    return fields


def _rendered(result: Result) -> Image.Image | None:
    """The picture a person would look at for this result (an overlay for maps), or None if it has none."""
    try:
        return result.overlay()
    except (ValueError, TypeError, OSError):
        return None


class ResultDecodeError(Exception):
    """A stored result could not be read back: `part` names the file or section, `cause` what went wrong."""

    def __init__(self, part: str, cause: BaseException) -> None:
        super().__init__(f"{part}: {cause}")
        self.part = part
        self.cause = cause


def decode_result(fields: dict[str, Any], folder: Path) -> Result:
    """The Result that `encode_result` wrote into `folder`, rebuilt without recomputing anything; any failure is a
    ResultDecodeError naming the part that could not be read."""
    part = str(fields.get("data"))
    try:
        data = np.load(artifact_path(folder, fields["data"]), allow_pickle=False)
        part = str(fields.get("image"))
        image = load_png(artifact_path(folder, fields["image"])) if fields.get("image") else None
        part = "meta"
        meta = decode_value(fields.get("meta", {}), folder)
        part = "extras"
        extras = decode_value(fields.get("extras", {}), folder)
        part = "losses"
        losses = [_loss_record(r) for r in decode_value(fields.get("losses", []), folder)]
        part = "manifest.json"
        return Result(fields["kind"], data, meta, image, extras, losses)
    except Exception as e:  # noqa: BLE001 - any failure to read a part is reported with the part's name
        raise ResultDecodeError(part, e) from None


def _loss_record(r: dict[str, Any]) -> LossRecord:
    """One stored loss record as a LossRecord (numbers checked by their types)."""
    parts = {str(k): float(v) for k, v in dict(r.get("parts") or {}).items()}
    return LossRecord(int(r["step"]), float(r["value"]), parts)


def artifact_files(fields: dict[str, Any]) -> list[str]:
    """Every file the fields of an encoded result refer to (data, pictures, arrays and images inside the trees)."""
    refs = [fields[k] for k in ("data", "image", "rendered") if isinstance(fields.get(k), str)]

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            if (
                len(v) == 1
                and next(iter(v)) in ("__png__", "__npy__")
                and isinstance(next(iter(v.values())), str)
            ):
                refs.append(next(iter(v.values())))
                return
            for x in v.values():
                walk(x)

    for tree in ("meta", "extras", "losses"):
        walk(fields.get(tree))
    return refs


def read_artifact(path: Path) -> None:
    """Read one stored file back to prove it is intact (PNGs decoded fully, arrays by their header, JSON parsed);
    raises whatever the decoder raises when it is damaged."""
    if path.suffix == ".png":
        load_png(path)
    elif path.suffix == ".npy":
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        del a
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
