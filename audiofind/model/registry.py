"""The models audiofind knows: the manifest of published ones, the local safetensors files, their names and families.

Torch-free and quick: every command that resolves a model (every search) goes through here. Installing and
loading models is model/weights.py's job.
"""

import importlib.resources
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from audiofind import paths
from audiofind.errors import UsageError, WeightsError
from audiofind.model import checkpoint
from audiofind.model.family import FAMILIES, Family, family_of

log = logging.getLogger(__name__)

DEFAULT_MODEL = "audioclip-full"  # used when the manifest names no default
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

Progress = Callable[[int, int], None]
Source = Literal["registered", "imported", "finetuned"]


@dataclass(frozen=True)
class ModelInfo:
    """A model audiofind knows about: a manifest entry and/or a local safetensors file."""

    name: str
    description: str
    size: int | None  # bytes of the download for registered models, of the local file otherwise
    sha256: str | None  # identity of the weights (sha256 of the original checkpoint)
    url: str | None
    licence: str | None
    path: Path | None  # the local safetensors file, if present
    source: Source
    family: Family = "audioclip"


# ---------------------------------------------------------------- manifest


def _manifest_path() -> Path | None:
    override = os.environ.get("AUDIOFIND_MANIFEST")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsError(f"AUDIOFIND_MANIFEST points to {path}, which does not exist.")
        return path
    packaged = importlib.resources.files("audiofind") / "assets" / "manifest.json"
    if packaged.is_file():
        return Path(str(packaged))
    # A source checkout has no packaged copy: the wheel build copies weights/manifest.json in.
    repo = Path(__file__).resolve().parent.parent.parent / "weights" / "manifest.json"
    return repo if repo.is_file() else None


def _manifest() -> dict:
    path = _manifest_path()
    if path is None:
        log.warning("no weights manifest found; only local models are available")
        return {"default": DEFAULT_MODEL, "models": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"The weights manifest {path} cannot be read: {e}.") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models", []), list):
        raise WeightsError(f"The weights manifest {path} has no list of models.")
    return manifest


def registered() -> dict[str, dict]:
    """The manifest's entries by name."""
    return {entry["name"]: entry for entry in _manifest().get("models", [])}


def registered_family(entry: dict) -> Family:
    """The family of a manifest entry (AudioCLIP where it names none)."""
    family = entry.get("family") or "audioclip"
    if family not in FAMILIES:
        raise WeightsError(f"The weights manifest gives '{entry.get('name')}' the unknown family {family!r}.")
    return cast(Family, family)


def default_model() -> str:
    """The manifest's default model: the one `weights download` fetches without NAME."""
    return _manifest().get("default") or DEFAULT_MODEL


def chosen_model() -> str:
    """The model commands use without --weights: the default if installed, else the only model installed."""
    default, installed = default_model(), [p.stem for p in local_files()]
    if default in installed or not installed:
        return default  # with nothing installed, resolve says how to get it
    if len(installed) == 1:
        return installed[0]
    raise UsageError(
        f"Several models are installed ({', '.join(installed)}) and the default '{default}' is not among them; "
        "pick one with --weights NAME or by setting AUDIOFIND_WEIGHTS=NAME."
    )


# ---------------------------------------------------------------- hashing and files


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a user's file, remembered by (path, size, mtime) so 537 MB is hashed once."""
    path = path.resolve()
    stat = path.stat()
    book = paths.weights_dir() / "hashes.json"
    try:
        known = json.loads(book.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    sha = paths.hash_file(path, progress=progress)
    known[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        book.parent.mkdir(parents=True, exist_ok=True)
        tmp = book.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, book)
    except OSError as e:
        log.warning("could not remember the sha256 of %s: %s", path, e)
    return sha


def local_path(name: str) -> Path:
    """Where the local model NAME lives (or would): `<weights_dir>/<name>.safetensors`."""
    return paths.weights_dir() / f"{name}.safetensors"


def check_name(name: str) -> str:
    """The name itself if it can name a local model file; UsageError otherwise."""
    if not NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid model name; use letters, digits, '.', '_' and '-'.")
    return name


def local_files() -> list[Path]:
    """Every local model file, by name."""
    folder = paths.weights_dir()
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def names() -> list[str]:
    """Every model name: registered ones first, then local ones."""
    return list(dict.fromkeys([*registered(), *(p.stem for p in local_files())]))


# ---------------------------------------------------------------- listing


def available_models() -> list[ModelInfo]:
    """Every registered model (downloaded or not) and every local model, registered ones first."""
    models, entries = [], registered()
    for name, e in entries.items():
        local = local_path(name)
        models.append(ModelInfo(name, e.get("description", ""), e.get("size"), e.get("sha256"), e.get("url"),
                                e.get("licence"), local if local.exists() else None, "registered",
                                registered_family(e)))  # fmt: skip
    for path in local_files():
        if path.stem in entries:
            continue
        try:
            meta = checkpoint.read_metadata(path)
            card = checkpoint.json_or_none(meta.get("card"), path) or {}
            family = family_of(meta)
        except WeightsError as e:
            log.warning("skipping %s", e)
            continue
        source: Source = "finetuned" if meta.get("source") == "finetuned" else "imported"
        models.append(
            ModelInfo(
                path.stem,
                card.get("description", ""),
                path.stat().st_size,
                meta.get("source_sha256"),
                None,
                card.get("licence"),
                path,
                source,
                family,
            )
        )
    return models


def load_card(name_or_path: str | Path) -> dict | None:
    """The model card of a local model name or a safetensors file, if it has one."""
    spec = str(name_or_path)
    path = local_path(spec) if NAME.fullmatch(spec) and local_path(spec).exists() else Path(spec).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    return checkpoint.json_or_none(checkpoint.read_metadata(path).get("card"), path)
