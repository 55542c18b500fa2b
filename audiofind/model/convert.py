"""A checkpoint of either family made into a local model: its tensors chosen by family, and a CLAP model's tokenizer
files fetched or copied beside its safetensors file.

Torch is imported only when tensors are converted, never to resolve a model.
"""

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audiofind import paths
from audiofind.errors import ChecksumError, DownloadError, WeightsError
from audiofind.model import checkpoint
from audiofind.model.family import TOKENIZER_FILES, Family, check_tokenizer, family_of_keys, tokenizer_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Converted:
    """What audiofind keeps of a checkpoint: its family, the tensors it uses, and its sizes where not the published."""

    family: Family
    tensors: "dict[str, torch.Tensor]"
    config: dict | None


def convert(state_dict: dict, origin: object, config: dict | None = None) -> Converted:
    """The tensors audiofind keeps of a state dict of either family (told by its keys), as float32.

    config: the sizes a safetensors file records; a CLAP checkpoint without them has its sizes read from its shapes.
    """
    if family_of_keys(state_dict) == "audioclip":
        return Converted("audioclip", checkpoint.select(state_dict, origin), config)
    from audiofind.model.clap.config import CLAPConfig
    from audiofind.model.clap.convert import select

    tensors, cfg = select(state_dict, origin, CLAPConfig.from_dict(config) if config else None)
    return Converted("clap", tensors, None if cfg == CLAPConfig() else cfg.to_dict())


def install_tokenizer(source: Path, weights_file: Path) -> Path:
    """Copy vocab.json and merges.txt from source into the model's tokenizer folder (whole or not at all)."""
    dest = tokenizer_dir(weights_file)
    check_tokenizer(source)
    if dest.exists() and source.resolve() == dest.resolve():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(source / name, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsError(f"Could not copy the tokenizer into {dest}: {e.strerror or e}.") from e
    return dest


def fetch_tokenizer(name: str, files: list[dict], weights_file: Path, progress: Progress | None = None) -> Path:
    """Download a registered CLAP model's tokenizer files into its tokenizer folder: each resumable, sha256-checked,
    kept where already complete."""
    from audiofind.model.download import fetch  # http.client, urllib, ssl: only for a download

    dest = tokenizer_dir(weights_file)
    given = {Path(f.get("file", "")).name: f for f in files}
    if missing := [f for f in TOKENIZER_FILES if f not in given or not given[f].get("url")]:
        raise DownloadError(f"The manifest entry of '{name}' gives no URL for its tokenizer's {', '.join(missing)}.")
    dest.mkdir(parents=True, exist_ok=True)
    for file in TOKENIZER_FILES:
        entry, target = given[file], dest / file
        expected = entry.get("sha256")
        if target.exists() and (not expected or paths.hash_file(target) == expected):
            continue
        part = target.with_name(file + ".part")
        actual = fetch(f"{name} {file}", entry["url"], part, entry.get("size"), progress)
        if expected and actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"The download of '{name}' {file} has sha256 {actual}, but {expected} was expected; "
                "the file was deleted, run the same command to try again."
            )
        os.replace(part, target)
        log.info("fetched %s", target)
    return dest
