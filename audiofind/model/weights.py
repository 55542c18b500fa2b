"""Checkpoints: the manifest, checked and resumable downloads, one-time conversion to safetensors, resolving --weights.

Published AudioCLIP checkpoints are pickled torch state dicts. They are unpickled exactly once, with
`weights_only=True`, and rewritten as `<weights_dir>/<name>.safetensors` holding only what audiofind uses
(the audio and text towers and `logit_scale_at`), so later runs read tensors without running any pickle.
"""

import importlib.resources
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safetensors import SafetensorError, safe_open

from audiofind import paths
from audiofind.errors import ChecksumError, DownloadError, UnknownModelError, UsageError, WeightsError, WeightsNotFound
from audiofind.model import checkpoint

if TYPE_CHECKING:  # only the loaders make tensors; resolving a model (every search) needs no torch
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "audioclip-full"  # used when the manifest names no default
TOWERS = ("audio", "text", "visual", "scale")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

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


@dataclass(frozen=True)
class Resolved:
    """Weights ready to load: a safetensors file and the identity an index records."""

    name: str
    path: Path
    sha256: str
    config: dict | None  # model sizes saved by fine-tuning; None means the published sizes
    card: dict | None


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
    repo = Path(__file__).resolve().parent.parent / "weights" / "manifest.json"
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


def _registered() -> dict[str, dict]:
    return {entry["name"]: entry for entry in _manifest().get("models", [])}


def default_model() -> str:
    """The manifest's default model: the one `weights download` fetches without NAME."""
    return _manifest().get("default") or DEFAULT_MODEL


def chosen_model() -> str:
    """The model commands use without --weights: the default if installed, else the only model installed."""
    default, installed = default_model(), [p.stem for p in _local_files()]
    if default in installed or not installed:
        return default  # with nothing installed, resolve says how to get it
    if len(installed) == 1:
        return installed[0]
    raise UsageError(
        f"Several models are installed ({', '.join(installed)}) and the default '{default}' is not among them; "
        "pick one with --weights NAME or by setting AUDIOFIND_WEIGHTS=NAME."
    )


# ---------------------------------------------------------------- hashing and files


def _file_sha256(path: Path, progress: Progress | None = None) -> str:
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


def _local(name: str) -> Path:
    return paths.weights_dir() / f"{name}.safetensors"


def check_name(name: str) -> str:
    """The name itself if it can name a local model file; UsageError otherwise."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid model name; use letters, digits, '.', '_' and '-'.")
    return name


def _resolved(path: Path, fallback_sha: Callable[[], str]) -> Resolved:
    meta = checkpoint.read_metadata(path)
    return Resolved(
        name=meta.get("name") or path.stem,
        path=path,
        sha256=meta.get("source_sha256") or fallback_sha(),
        config=checkpoint.json_or_none(meta.get("config"), path),
        card=checkpoint.json_or_none(meta.get("card"), path),
    )


# ---------------------------------------------------------------- downloading


def download(name: str, progress: Progress | None = None) -> Path:
    """Fetch a registered model (resuming a partial download), check its sha256, convert it; returns the safetensors."""
    out = _local(check_name(name))
    if out.exists():
        return out
    entry = _registered().get(name)
    if entry is None:
        raise UnknownModelError(f"Unknown model '{name}'; registered models: {', '.join(_registered()) or 'none'}.")
    if not entry.get("url"):
        raise DownloadError(f"Model '{name}' has no download URL in the manifest.")
    folder = paths.weights_dir()
    pt = folder / Path(entry["file"]).name
    part = pt.with_name(pt.name + ".part")
    folder.mkdir(parents=True, exist_ok=True)
    expected = entry.get("sha256")
    if pt.exists() and expected and paths.hash_file(pt) != expected:
        pt.unlink()  # a stale file from another release: fetch again
    if not pt.exists():
        from audiofind.model.download import (
            fetch,  # http.client, urllib, ssl: not for the commands that only resolve a model
        )

        try:
            actual = fetch(name, entry["url"], part, entry.get("size"), progress)
        except DownloadError as e:
            raise DownloadError(f"{e} If you already have {pt.name}, use it with: audiofind weights import PATH") from e
        if expected and actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"The download of '{name}' has sha256 {actual}, but {expected} was expected; "
                "the file was deleted, run the same command to try again."
            )
        os.replace(part, pt)
    tensors = checkpoint.select(checkpoint.load_pt(pt), pt)
    checkpoint.write(tensors, out, name, expected or paths.hash_file(pt), "registered")
    del tensors
    pt.unlink()  # keep one copy on disk; the safetensors file is all later runs read
    return out


# ---------------------------------------------------------------- importing, saving, removing


def import_checkpoint(path: Path, name: str | None = None, progress: Progress | None = None) -> Path:
    """Convert a .pt or .safetensors checkpoint into a local model; returns its safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"There is no checkpoint file at {path}.")
    is_st = path.suffix == ".safetensors"
    meta = checkpoint.read_metadata(path) if is_st else {}
    sha = meta.get("source_sha256") or _file_sha256(path, progress)
    registered = _registered()
    by_sha = next((n for n, e in registered.items() if e.get("sha256") == sha), None)
    if name is None:
        name = by_sha or re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-") or "imported"
    entry = registered.get(check_name(name))
    if entry and entry.get("sha256") and entry["sha256"] != sha:
        raise ChecksumError(
            f"{path} has sha256 {sha}, but the registered model '{name}' has {entry['sha256']}; import it under another name."
        )
    out = _local(name)
    if out.exists():
        if checkpoint.read_metadata(out).get("source_sha256") == sha:
            return out
        raise WeightsError(f"A model named '{name}' already exists; remove it first or import under another name.")
    if is_st:
        with safe_open(path, framework="pt") as f:
            # SIM118 is wrong here: a safetensors handle is no dict, it has keys() but cannot be iterated
            tensors = checkpoint.select({k: f.get_tensor(k) for k in f.keys()}, path)  # noqa: SIM118
    else:
        tensors = checkpoint.select(checkpoint.load_pt(path), path)
    source: Source = "registered" if entry else ("finetuned" if meta.get("source") == "finetuned" else "imported")
    card = checkpoint.json_or_none(meta.get("card"), path) or ({"description": f"Imported from {path.name}."} if not entry else None)
    return checkpoint.write(tensors, out, name, sha, source, checkpoint.json_or_none(meta.get("config"), path), card)


def save_model(state_dict: "dict[str, torch.Tensor]", name: str, config: dict, card: dict) -> Path:
    """Write fine-tuned weights as a local model; its identity is the sha256 of the tensors written."""
    if check_name(name) in _registered():
        raise UsageError(f"'{name}' is a registered model name; pick another name for a fine-tuned model.")
    tensors = checkpoint.select(state_dict, f"The state dict for '{name}'")
    return checkpoint.write(tensors, _local(name), name, checkpoint.content_sha256(tensors), "finetuned", config, card)


@dataclass(frozen=True)
class Removed:
    """What `remove` did: the model files deleted, and the model's training run, deleted or kept."""

    files: list[Path]
    run: Path | None  # the run folder that fine-tuned this model, if there is one
    run_bytes: int
    run_kept: bool


def _run_of(name: str) -> Path | None:
    """The folder of the run that fine-tuned NAME: its card's --out, else the default run folder, if it holds a run."""
    try:
        card = load_card(name) or {}
    except WeightsError:  # a damaged model file can still be removed; its run is then found by name only
        card = {}
    out = (card.get("recipe") or {}).get("out")
    for folder in (Path(out).expanduser() if out else None, paths.run_dir(name)):
        if folder and any((folder / f).is_file() for f in (paths.RUN_CHECKPOINT, paths.RUN_METRICS)):
            return folder
    return None


def _run_entries(folder: Path) -> list[Path]:
    names = (paths.RUN_CHECKPOINT, paths.RUN_CHECKPOINT + ".tmp", paths.RUN_METRICS, paths.RUN_CARD, paths.RUN_SNAPSHOTS)
    return [folder / n for n in names if (folder / n).exists()]


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove(name: str, keep_runs: bool = False) -> Removed:
    """Delete a local model, any partial download of it and, unless keep_runs, the run that fine-tuned it."""
    entry = _registered().get(check_name(name))
    targets = [_local(name)]
    if entry and entry.get("file"):
        pt = paths.weights_dir() / Path(entry["file"]).name
        targets += [pt, pt.with_name(pt.name + ".part")]
    existing = [p for p in targets if p.exists()]
    run = _run_of(name)
    if not existing and (run is None or keep_runs):
        if entry:
            raise WeightsNotFound(f"Model '{name}' is not downloaded, so there is nothing to remove.")
        raise UnknownModelError(f"Unknown model '{name}'; available models: {', '.join(_names()) or 'none'}.")
    for p in existing:
        p.unlink()
        log.info("removed %s", p)
    run_bytes = sum(_bytes(p) for p in _run_entries(run)) if run else 0
    if run and not keep_runs:
        # Only what fine-tuning wrote: a --out folder may hold the user's own files too.
        for p in _run_entries(run):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        if not any(run.iterdir()):
            run.rmdir()
        log.info("removed the run %s", run)
    return Removed(existing, run, run_bytes, keep_runs and run is not None)


# ---------------------------------------------------------------- listing and resolving


def _local_files() -> list[Path]:
    folder = paths.weights_dir()
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _names() -> list[str]:
    return list(dict.fromkeys([*_registered(), *(p.stem for p in _local_files())]))


def available_models() -> list[ModelInfo]:
    """Every registered model (downloaded or not) and every local model, registered ones first."""
    models, registered = [], _registered()
    for name, e in registered.items():
        local = _local(name)
        models.append(ModelInfo(name, e.get("description", ""), e.get("size"), e.get("sha256"), e.get("url"),
                                e.get("licence"), local if local.exists() else None, "registered"))
    for path in _local_files():
        if path.stem in registered:
            continue
        try:
            meta = checkpoint.read_metadata(path)
            card = checkpoint.json_or_none(meta.get("card"), path) or {}
        except WeightsError as e:
            log.warning("skipping %s", e)
            continue
        source: Source = "finetuned" if meta.get("source") == "finetuned" else "imported"
        models.append(ModelInfo(path.stem, card.get("description", ""), path.stat().st_size,
                                meta.get("source_sha256"), None, card.get("licence"), path, source))
    return models


def resolve_for_index(index_model: str | None, weights: str | Path | None) -> Resolved:
    """--weights if given, else the model that built the index, else the default (resolve's choice)."""
    if weights or not index_model:
        return resolve(weights)
    try:
        return resolve(index_model)
    except UnknownModelError:
        raise WeightsNotFound(
            f"This index was built with model '{index_model}', which is not installed any more; import it again with "
            f"'audiofind weights import PATH --name {index_model}', or rebuild the index with another model."
        ) from None


def resolve(weights: str | Path | None) -> Resolved:
    """Turn a --weights value (None, a model name, or a .pt/.safetensors path) into a safetensors file to load."""
    spec = str(weights) if weights else chosen_model()
    registered = _registered()
    if _NAME.fullmatch(spec):
        local = _local(spec)
        if local.exists():
            return _resolved(local, lambda: _file_sha256(local))
        if spec in registered:
            raise WeightsNotFound(f"Model '{spec}' is not downloaded yet; run: audiofind weights download {spec} "
                                  "(or, with a checkpoint file you already have: audiofind weights import PATH)")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UnknownModelError(
            f"Unknown model '{spec}': not a model name or an existing file; available models: {', '.join(_names()) or 'none'}."
        )
    if path.suffix == ".safetensors":
        return _resolved(path, lambda: _file_sha256(path))
    sha = _file_sha256(path)
    name = next((n for n, e in registered.items() if e.get("sha256") == sha), None)
    for local in _local_files():
        try:
            if checkpoint.read_metadata(local).get("source_sha256") == sha:
                return _resolved(local, lambda: sha)
        except WeightsError as e:
            log.warning("skipping %s", e)
    # A registered checkpoint fetched by hand becomes that model; any other .pt is cached by its sha256.
    out = _local(name) if name else paths.weights_dir() / "converted" / f"{sha}.safetensors"
    if not out.exists():
        checkpoint.write(checkpoint.select(checkpoint.load_pt(path), path), out, name or path.stem, sha, "registered" if name else "imported")
    return _resolved(out, lambda: sha)


def read_state_dict(resolved: Resolved, towers: Iterable[str] = ("audio", "text", "scale")) -> "dict[str, torch.Tensor]":
    """Read only the requested towers' tensors from the safetensors file (the others are never read)."""
    wanted = set(towers)
    if unknown := wanted - set(TOWERS):
        raise ValueError(f"unknown towers {sorted(unknown)}; use {TOWERS}")
    try:
        with safe_open(resolved.path, framework="pt", device="cpu") as f:
            # is_used also rejects keys of no tower, so a foreign file fails here, naming the key.
            return {
                key: f.get_tensor(key)
                for key in f.keys()  # noqa: SIM118 (a safetensors handle has keys() but cannot be iterated)
                if (checkpoint.tower_or_none(key) == "visual" or checkpoint.is_used(key, f.get_slice(key).get_shape(), resolved.path))
                and checkpoint.tower_or_none(key) in wanted
            }
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{resolved.path} is not a readable safetensors file: {e}.") from e


def load_card(name_or_path: str | Path) -> dict | None:
    """The model card of a local model name or a safetensors file, if it has one."""
    spec = str(name_or_path)
    path = _local(spec) if _NAME.fullmatch(spec) and _local(spec).exists() else Path(spec).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    return checkpoint.json_or_none(checkpoint.read_metadata(path).get("card"), path)
