"""Checkpoints: checked and resumable downloads, one-time conversion to safetensors, resolving --weights.

Published checkpoints of both families (AudioCLIP, LAION-CLAP) are pickled torch state dicts. They are unpickled
exactly once, with `weights_only=True`, and rewritten as `<weights_dir>/<name>.safetensors` holding only what
audiofind uses (the audio and text towers and the audio-text logit scale), with the model's family in its metadata,
so later runs read tensors without running any pickle. A CLAP model's tokenizer files sit beside it
(model/family.py). The manifest and the list of models are model/registry.py's.
"""

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from audiofind import paths
from audiofind.errors import ChecksumError, DownloadError, UnknownModelError, UsageError, WeightsError, WeightsNotFound
from audiofind.model import checkpoint
from audiofind.model.convert import convert, fetch_tokenizer, install_tokenizer
from audiofind.model.family import CLAP_TOWER_PREFIXES, Family, check_tokenizer, family_of, tokenizer_dir
from audiofind.model.registry import (
    DEFAULT_MODEL,
    NAME,
    ModelInfo,
    Progress,
    Source,
    available_models,
    check_name,
    chosen_model,
    default_model,
    file_sha256,
    load_card,
    local_files,
    local_path,
    names,
    registered,
    registered_family,
)

if TYPE_CHECKING:  # only the loaders make tensors; resolving a model (every search) needs no torch
    import torch

__all__ = [
    "DEFAULT_MODEL", "ModelInfo", "Removed", "Resolved", "available_models", "check_name", "chosen_model",
    "default_model", "download", "import_checkpoint", "load_card", "read_state_dict", "remove", "resolve",
    "resolve_for_index", "save_model",
]  # fmt: skip

log = logging.getLogger(__name__)

TOWERS = ("audio", "text", "visual", "scale")


@dataclass(frozen=True)
class Resolved:
    """Weights ready to load: a safetensors file, the identity an index records, and the model's family."""

    name: str
    path: Path
    sha256: str
    config: dict | None  # model sizes saved by fine-tuning (or read from a small CLAP); None means the published sizes
    card: dict | None
    family: Family = "audioclip"

    @property
    def tokenizer(self) -> Path:
        """A CLAP model's tokenizer folder (vocab.json, merges.txt), checked; WeightsError if it is not there."""
        return check_tokenizer(tokenizer_dir(self.path), " Import the model again with --tokenizer DIR.")


def _resolved(path: Path, fallback_sha: Callable[[], str]) -> Resolved:
    meta = checkpoint.read_metadata(path)
    return Resolved(
        name=meta.get("name") or path.stem,
        path=path,
        sha256=meta.get("source_sha256") or fallback_sha(),
        config=checkpoint.json_or_none(meta.get("config"), path),
        card=checkpoint.json_or_none(meta.get("card"), path),
        family=family_of(meta),
    )


# ---------------------------------------------------------------- downloading


def download(name: str, progress: Progress | None = None) -> Path:
    """Fetch a registered model (resuming a partial download), check its sha256, convert it; returns the safetensors."""
    out = local_path(check_name(name))
    if out.exists():
        return out
    entry = registered().get(name)
    if entry is None:
        raise UnknownModelError(f"Unknown model '{name}'; registered models: {', '.join(registered()) or 'none'}.")
    if not entry.get("url"):
        raise DownloadError(f"Model '{name}' has no download URL in the manifest.")
    folder = paths.weights_dir()
    pt = folder / Path(entry["file"]).name
    part = pt.with_name(pt.name + ".part")
    folder.mkdir(parents=True, exist_ok=True)
    family = registered_family(entry)
    if family == "clap":  # the tokenizer first: a few hundred kB, and the model is complete only with it
        fetch_tokenizer(name, entry.get("tokenizer") or [], out, progress)
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
    converted = convert(checkpoint.load_pt(pt), pt)
    if converted.family != family:
        raise WeightsError(f"{pt.name} holds a {converted.family} model, but the manifest says '{name}' is {family}.")
    checkpoint.write(
        converted.tensors,
        out,
        name,
        expected or paths.hash_file(pt),
        "registered",
        converted.config,
        family=converted.family,
    )
    del converted
    pt.unlink()  # keep one copy on disk; the safetensors file is all later runs read
    return out


# ---------------------------------------------------------------- importing, saving, removing


def import_checkpoint(
    path: Path, name: str | None = None, progress: Progress | None = None, tokenizer: Path | None = None
) -> Path:
    """Convert a .pt or .safetensors checkpoint of either family into a local model; returns its safetensors file.

    A CLAP checkpoint needs its tokenizer: `tokenizer`, a folder holding vocab.json and merges.txt (for a
    .safetensors file, the `.tokenizer` folder beside it serves too).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"There is no checkpoint file at {path}.")
    if tokenizer is not None:  # before hashing a large file: a wrong folder is told at once
        tokenizer = check_tokenizer(Path(tokenizer).expanduser())
    is_st = path.suffix == ".safetensors"
    meta = checkpoint.read_metadata(path) if is_st else {}
    sha = meta.get("source_sha256") or file_sha256(path, progress)
    entries = registered()
    by_sha = next((n for n, e in entries.items() if e.get("sha256") == sha), None)
    if name is None:
        name = by_sha or re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-") or "imported"
    entry = entries.get(check_name(name))
    if entry and entry.get("sha256") and entry["sha256"] != sha:
        raise ChecksumError(
            f"{path} has sha256 {sha}, but the registered model '{name}' has {entry['sha256']}; import it under another name."
        )
    out = local_path(name)
    if out.exists():
        if checkpoint.read_metadata(out).get("source_sha256") == sha:
            return out
        raise WeightsError(f"A model named '{name}' already exists; remove it first or import under another name.")
    if is_st:
        with safe_open(path, framework="pt") as f:
            # SIM118 is wrong here: a safetensors handle is no dict, it has keys() but cannot be iterated
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    else:
        state = checkpoint.load_pt(path)
    converted = convert(state, path, checkpoint.json_or_none(meta.get("config"), path))
    del state
    if converted.family == "clap":
        hint = " Give it with --tokenizer DIR: a folder holding RoBERTa's vocab.json and merges.txt (laion/clap-htsat-unfused)."
        if tokenizer is None and not (is_st and tokenizer_dir(path).is_dir()):
            raise WeightsError(f"{path} is a CLAP checkpoint, which needs its tokenizer.{hint}")
        install_tokenizer(tokenizer or check_tokenizer(tokenizer_dir(path), hint), out)
    elif tokenizer is not None:
        raise UsageError(
            f"{path} is an AudioCLIP checkpoint, whose tokenizer ships with audiofind; leave out --tokenizer."
        )
    source: Source = "registered" if entry else ("finetuned" if meta.get("source") == "finetuned" else "imported")
    card = checkpoint.json_or_none(meta.get("card"), path) or (
        {"description": f"Imported from {path.name}."} if not entry else None
    )
    return checkpoint.write(converted.tensors, out, name, sha, source, converted.config, card, converted.family)


def save_model(
    state_dict: "dict[str, torch.Tensor]", name: str, config: dict, card: dict, tokenizer: Path | None = None
) -> Path:
    """Write fine-tuned weights of either family as a local model; its identity is the sha256 of the tensors written.
    A CLAP model takes its tokenizer folder (its starting model's, Resolved.tokenizer)."""
    if check_name(name) in registered():
        raise UsageError(f"'{name}' is a registered model name; pick another name for a fine-tuned model.")
    converted = convert(state_dict, f"The state dict for '{name}'", config)
    out = local_path(name)
    if converted.family == "clap":
        if tokenizer is None:
            raise WeightsError(f"The CLAP model '{name}' needs its tokenizer folder to be saved.")
        install_tokenizer(tokenizer, out)
    sha = checkpoint.content_sha256(converted.tensors)
    return checkpoint.write(converted.tensors, out, name, sha, "finetuned", config, card, converted.family)


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
    names = (
        paths.RUN_CHECKPOINT,
        paths.RUN_CHECKPOINT + ".tmp",
        paths.RUN_METRICS,
        paths.RUN_CARD,
        paths.RUN_SNAPSHOTS,
    )
    return [folder / n for n in names if (folder / n).exists()]


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove(name: str, keep_runs: bool = False) -> Removed:
    """Delete a local model, any partial download of it and, unless keep_runs, the run that fine-tuned it."""
    entry = registered().get(check_name(name))
    targets = [local_path(name), tokenizer_dir(local_path(name))]
    if entry and entry.get("file"):
        pt = paths.weights_dir() / Path(entry["file"]).name
        targets += [pt, pt.with_name(pt.name + ".part")]
    existing = [p for p in targets if p.exists()]
    run = _run_of(name)
    if not existing and (run is None or keep_runs):
        if entry:
            raise WeightsNotFound(f"Model '{name}' is not downloaded, so there is nothing to remove.")
        raise UnknownModelError(f"Unknown model '{name}'; available models: {', '.join(names()) or 'none'}.")
    for p in existing:
        if p.is_dir():  # a CLAP model's tokenizer folder
            shutil.rmtree(p)
        else:
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
    entries = registered()
    if NAME.fullmatch(spec):
        local = local_path(spec)
        if local.exists():
            return _resolved(local, lambda: file_sha256(local))
        if spec in entries:
            raise WeightsNotFound(
                f"Model '{spec}' is not downloaded yet; run: audiofind weights download {spec} "
                "(or, with a checkpoint file you already have: audiofind weights import PATH)"
            )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UnknownModelError(
            f"Unknown model '{spec}': not a model name or an existing file; available models: {', '.join(names()) or 'none'}."
        )
    if path.suffix == ".safetensors":
        return _resolved(path, lambda: file_sha256(path))
    sha = file_sha256(path)
    name = next((n for n, e in entries.items() if e.get("sha256") == sha), None)
    for local in local_files():
        try:
            if checkpoint.read_metadata(local).get("source_sha256") == sha:
                return _resolved(local, lambda: sha)
        except WeightsError as e:
            log.warning("skipping %s", e)
    # A registered checkpoint fetched by hand becomes that model; any other .pt is cached by its sha256.
    out = local_path(name) if name else paths.weights_dir() / "converted" / f"{sha}.safetensors"
    if not out.exists():
        converted = convert(checkpoint.load_pt(path), path)
        if converted.family == "clap":  # its tokenizer is not in the file: only an import can say where it is
            raise WeightsError(f"{path} is a CLAP checkpoint; import it once with its tokenizer: "
                               f"audiofind weights import {path} --tokenizer DIR")  # fmt: skip
        checkpoint.write(converted.tensors, out, name or path.stem, sha, "registered" if name else "imported")
    return _resolved(out, lambda: sha)


def read_state_dict(
    resolved: Resolved, towers: Iterable[str] = ("audio", "text", "scale")
) -> "dict[str, torch.Tensor]":
    """Read only the requested towers' tensors from the safetensors file (the others are never read)."""
    if resolved.family == "clap":
        return _read_clap(resolved, towers)
    wanted = set(towers)
    if unknown := wanted - set(TOWERS):
        raise ValueError(f"unknown towers {sorted(unknown)}; use {TOWERS}")
    try:
        with safe_open(resolved.path, framework="pt", device="cpu") as f:
            # is_used also rejects keys of no tower, so a foreign file fails here, naming the key.
            return {
                key: f.get_tensor(key)
                for key in f.keys()  # noqa: SIM118 (a safetensors handle has keys() but cannot be iterated)
                if (
                    checkpoint.tower_or_none(key) == "visual"
                    or checkpoint.is_used(key, f.get_slice(key).get_shape(), resolved.path)
                )
                and checkpoint.tower_or_none(key) in wanted
            }
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{resolved.path} is not a readable safetensors file: {e}.") from e


def _read_clap(resolved: Resolved, towers: Iterable[str]) -> "dict[str, torch.Tensor]":
    """A CLAP model's tensors of the requested towers, under CLAP's keys."""
    if unknown := set(towers) - set(CLAP_TOWER_PREFIXES):
        raise ValueError(f"unknown towers {sorted(unknown)}; use {tuple(CLAP_TOWER_PREFIXES)}")
    prefixes = tuple(p for tower in towers for p in CLAP_TOWER_PREFIXES[tower])
    try:
        with safe_open(resolved.path, framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys() if key.startswith(prefixes)}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{resolved.path} is not a readable safetensors file: {e}.") from e
