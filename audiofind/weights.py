"""Checkpoints: the manifest, checked and resumable downloads, one-time conversion to safetensors, resolving --weights.

Published AudioCLIP checkpoints are pickled torch state dicts. They are unpickled exactly once, with
`weights_only=True`, and rewritten as `<weights_dir>/<name>.safetensors` holding only what audiofind uses
(the audio and text towers and `logit_scale_at`), so later runs read tensors without running any pickle.
"""

import hashlib
import http.client
import importlib.resources
import json
import logging
import os
import pickle
import pickletools
import re
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from audiofind import paths
from audiofind.errors import (ChecksumError, DownloadError, UnknownModelError, UnsafeCheckpoint, UsageError,
                              WeightsError, WeightsNotFound)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "audioclip-full"  # used when the manifest names no default
TOWERS = ("audio", "text", "visual", "scale")
FORMAT = "audiofind"  # metadata["format"] of the files we write
CHUNK = 1 << 20
TIMEOUT_S = 60
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # left by DDP and torch.compile when the wrapper was saved

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
    """The model used when no --weights is given (the manifest's "default")."""
    return _manifest().get("default") or DEFAULT_MODEL


# ---------------------------------------------------------------- keys and towers


def _tower(key: str) -> str | None:
    for prefix, tower in (("audio.", "audio"), ("visual.", "visual"), ("logit_scale", "scale")):
        if key.startswith(prefix):
            return tower
    return "text" if key.startswith(_TEXT_PREFIXES) else None


def tower_of(key: str) -> str:
    """Which AudioCLIP tower a state-dict key belongs to: audio, text, visual or scale."""
    if (tower := _tower(key)) is None:
        raise WeightsError(f"The key {key!r} belongs to no AudioCLIP tower.")
    return tower


def _used(key: str, shape: Iterable[int], origin: object) -> bool:
    """Whether audiofind needs this tensor: audio and text towers plus the audio-text logit scale."""
    if (tower := _tower(key)) is None:
        raise WeightsError(f"{origin} holds {key!r}, which belongs to no AudioCLIP tower; it is not an AudioCLIP checkpoint.")
    if key == "logit_scale_at":
        return True
    if tower not in ("audio", "text") or key.endswith(".num_batches_tracked"):
        return False
    # The reference keeps an empty bias in its filter bank; nothing reads it.
    return not (key == "audio.fbsp.bias" and 0 in tuple(shape))


def _select(state_dict: dict, origin: object) -> dict[str, torch.Tensor]:
    """The tensors audiofind keeps, with wrapper prefixes removed, ready for save_file."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"{origin} is not an AudioCLIP state dict: entry {key!r} is not a named tensor.")
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if not _used(key, tensor.shape, origin):
            continue
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        # save_file refuses tensors that share memory; copy the rare ones that do.
        if ptr and (ptr in seen or tensor.untyped_storage().nbytes() != tensor.nbytes):
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    if not any(_tower(k) in ("audio", "text") for k in out):
        raise WeightsError(f"{origin} holds neither an audio nor a text tower, so it is not an AudioCLIP checkpoint.")
    return out


# ---------------------------------------------------------------- hashing


def _hash_into(h: "hashlib._Hash", path: Path, progress: Progress | None = None) -> "hashlib._Hash":
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h


def _sha256_file(path: Path, progress: Progress | None = None) -> str:
    return _hash_into(hashlib.sha256(), path, progress).hexdigest()


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
    sha = _sha256_file(path, progress)
    known[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        book.parent.mkdir(parents=True, exist_ok=True)
        tmp = book.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, book)
    except OSError as e:
        log.warning("could not remember the sha256 of %s: %s", path, e)
    return sha


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------- reading and writing files


def _unsafe_detail(path: Path, message: str) -> str | None:
    """What a rejected pickle wanted to import, or None if the file is simply not a pickle."""
    if match := re.search(r"GLOBAL ([\w.]+)", message):
        return match.group(1)
    # Newer pickle protocols are refused before their globals are seen: look at the opcodes ourselves.
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            with open(path, "rb") as f:
                data = f.read(CHUNK)  # the object tree of a pickle comes first; enough to see what it imports
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if op.name == "STACK_GLOBAL":
                return ".".join(strings[-2:])
    except (ValueError, EOFError, struct.error, zipfile.BadZipFile, OSError, UnicodeDecodeError):
        return None
    return None


def _load_pt(path: Path) -> dict:
    """Unpickle a torch checkpoint without running code, and find its state dict."""
    try:
        with warnings.catch_warnings():
            # A raw pickle draws a protocol warning on its way to being refused; the error says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # mmap needs the zip format of torch >= 1.6; older files are read into memory.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if detail := _unsafe_detail(path, str(e)):
            raise UnsafeCheckpoint(
                f"{path} tries to import {detail} while loading, so it could run code; it was refused and nothing was run."
            ) from None
        raise WeightsError(f"{path} is not a torch checkpoint.") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, struct.error, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path} is not a torch checkpoint ({type(e).__name__}).") from e
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path} is not a torch checkpoint: it holds no state dict of tensors.")
    return obj


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file: {e}.") from e


def _json_or_none(text: str | None, path: Path) -> dict | None:
    try:
        return json.loads(text) if text else None
    except ValueError as e:
        raise WeightsError(f"{path} has metadata that is not valid JSON: {e}.") from e


def _write(tensors: dict[str, torch.Tensor], out: Path, name: str, sha256: str, source: Source,
           config: dict | None = None, card: dict | None = None) -> Path:
    metadata = {
        "format": FORMAT,
        "name": name,
        "source": source,
        "source_sha256": sha256,
        "config": json.dumps(config, sort_keys=True) if config else "",
        "card": json.dumps(card, sort_keys=True) if card else "",
    }
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"Could not write {out}: {e.strerror or e}.") from e
    log.info("wrote %s (%d tensors)", out, len(tensors))
    return out


def _local(name: str) -> Path:
    return paths.weights_dir() / f"{name}.safetensors"


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid model name; use letters, digits, '.', '_' and '-'.")
    return name


def _resolved(path: Path, fallback_sha: Callable[[], str]) -> Resolved:
    meta = _metadata(path)
    return Resolved(
        name=meta.get("name") or path.stem,
        path=path,
        sha256=meta.get("source_sha256") or fallback_sha(),
        config=_json_or_none(meta.get("config"), path),
        card=_json_or_none(meta.get("card"), path),
    )


# ---------------------------------------------------------------- downloading


def _fetch(name: str, url: str, part: Path, size: int | None, progress: Progress | None) -> str:
    """Stream url into part, resuming what is there; returns the sha256 of the whole file."""
    done = part.stat().st_size if part.exists() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    h = _hash_into(hashlib.sha256(), part) if done else hashlib.sha256()
    if size is not None and done == size:
        return h.hexdigest()
    if done and progress:
        progress(done, size or 0)
    headers = {"User-Agent": "audiofind"} | ({"Range": f"bytes={done}-"} if done else {})
    total = size
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response, \
                open(part, "ab") as out:
            length = response.headers.get("Content-Length")
            if done and response.status == 206:
                if not (response.headers.get("Content-Range") or "").startswith(f"bytes {done}-"):
                    part.unlink()
                    raise DownloadError(f"The server sent the wrong part of '{name}'; run the same command again.")
                total = done + int(length) if length else size
                log.info("resuming %s at byte %d", name, done)
            else:  # a fresh download, or a server that ignores Range: start over
                out.truncate(0)
                done, h = 0, hashlib.sha256()
                total = int(length) if length else size
            while chunk := response.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total or 0)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # nothing past what we have: the partial file is the whole file
            return h.hexdigest()
        raise DownloadError(f"Could not download '{name}' from {url}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        hint = "; run the same command again to resume" if part.exists() and part.stat().st_size else ""
        raise DownloadError(f"Could not download '{name}' from {url} ({reason}){hint}.") from e
    # http.client returns a short body without complaint when the connection drops.
    expected = total or size
    if expected is not None and done < expected:
        raise DownloadError(
            f"The connection closed after {done} of {expected} bytes of '{name}'; run the same command again to resume."
        )
    return h.hexdigest()


def download(name: str, progress: Progress | None = None) -> Path:
    """Fetch a registered model (resuming a partial download), check its sha256, convert it; returns the safetensors."""
    out = _local(_check_name(name))
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
    if pt.exists() and expected and _sha256_file(pt) != expected:
        pt.unlink()  # a stale file from another release: fetch again
    if not pt.exists():
        actual = _fetch(name, entry["url"], part, entry.get("size"), progress)
        if expected and actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"The download of '{name}' has sha256 {actual}, but {expected} was expected; "
                "the file was deleted, run the same command to try again."
            )
        os.replace(part, pt)
    tensors = _select(_load_pt(pt), pt)
    _write(tensors, out, name, expected or _sha256_file(pt), "registered")
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
    meta = _metadata(path) if is_st else {}
    sha = meta.get("source_sha256") or _file_sha256(path, progress)
    registered = _registered()
    by_sha = next((n for n, e in registered.items() if e.get("sha256") == sha), None)
    if name is None:
        name = by_sha or re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).lstrip("._-") or "imported"
    entry = registered.get(_check_name(name))
    if entry and entry.get("sha256") and entry["sha256"] != sha:
        raise ChecksumError(
            f"{path} has sha256 {sha}, but the registered model '{name}' has {entry['sha256']}; import it under another name."
        )
    out = _local(name)
    if out.exists():
        if _metadata(out).get("source_sha256") == sha:
            return out
        raise WeightsError(f"A model named '{name}' already exists; remove it first or import under another name.")
    if is_st:
        with safe_open(path, framework="pt") as f:
            tensors = _select({k: f.get_tensor(k) for k in f.keys()}, path)
    else:
        tensors = _select(_load_pt(path), path)
    source: Source = "registered" if entry else ("finetuned" if meta.get("source") == "finetuned" else "imported")
    card = _json_or_none(meta.get("card"), path) or ({"description": f"Imported from {path.name}."} if not entry else None)
    return _write(tensors, out, name, sha, source, _json_or_none(meta.get("config"), path), card)


def save_model(state_dict: dict[str, torch.Tensor], name: str, config: dict, card: dict) -> Path:
    """Write fine-tuned weights as a local model; its identity is the sha256 of the tensors written."""
    if _check_name(name) in _registered():
        raise UsageError(f"'{name}' is a registered model name; pick another name for a fine-tuned model.")
    tensors = _select(state_dict, f"The state dict for '{name}'")
    return _write(tensors, _local(name), name, _content_sha256(tensors), "finetuned", config, card)


def remove(name: str) -> None:
    """Delete a local model (and any partial download of it)."""
    entry = _registered().get(_check_name(name))
    targets = [_local(name)]
    if entry and entry.get("file"):
        pt = paths.weights_dir() / Path(entry["file"]).name
        targets += [pt, pt.with_name(pt.name + ".part")]
    existing = [p for p in targets if p.exists()]
    if not existing:
        if entry:
            raise WeightsNotFound(f"Model '{name}' is not downloaded, so there is nothing to remove.")
        raise UnknownModelError(f"Unknown model '{name}'; available models: {', '.join(_names()) or 'none'}.")
    for p in existing:
        p.unlink()
        log.info("removed %s", p)


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
            meta = _metadata(path)
            card = _json_or_none(meta.get("card"), path) or {}
        except WeightsError as e:
            log.warning("skipping %s", e)
            continue
        source: Source = "finetuned" if meta.get("source") == "finetuned" else "imported"
        models.append(ModelInfo(path.stem, card.get("description", ""), path.stat().st_size,
                                meta.get("source_sha256"), None, card.get("licence"), path, source))
    return models


def resolve(weights: str | Path | None) -> Resolved:
    """Turn a --weights value (None, a model name, or a .pt/.safetensors path) into a safetensors file to load."""
    spec = str(weights) if weights is not None else default_model()
    registered = _registered()
    if _NAME.fullmatch(spec):
        local = _local(spec)
        if local.exists():
            return _resolved(local, lambda: _file_sha256(local))
        if spec in registered:
            raise WeightsNotFound(f"Model '{spec}' is not downloaded yet; run: audiofind weights download {spec}")
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
            if _metadata(local).get("source_sha256") == sha:
                return _resolved(local, lambda: sha)
        except WeightsError as e:
            log.warning("skipping %s", e)
    # A registered checkpoint fetched by hand becomes that model; any other .pt is cached by its sha256.
    out = _local(name) if name else paths.weights_dir() / "converted" / f"{sha}.safetensors"
    if not out.exists():
        _write(_select(_load_pt(path), path), out, name or path.stem, sha, "registered" if name else "imported")
    return _resolved(out, lambda: sha)


def read_state_dict(resolved: Resolved, towers: Iterable[str] = ("audio", "text", "scale")) -> dict[str, torch.Tensor]:
    """Read only the requested towers' tensors from the safetensors file (the others are never read)."""
    wanted = set(towers)
    if unknown := wanted - set(TOWERS):
        raise ValueError(f"unknown towers {sorted(unknown)}; use {TOWERS}")
    try:
        with safe_open(resolved.path, framework="pt", device="cpu") as f:
            # _used also rejects keys of no tower, so a foreign file fails here, naming the key.
            return {
                key: f.get_tensor(key)
                for key in f.keys()
                if (_tower(key) == "visual" or _used(key, f.get_slice(key).get_shape(), resolved.path))
                and _tower(key) in wanted
            }
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{resolved.path} is not a readable safetensors file: {e}.") from e


def load_card(name_or_path: str | Path) -> dict | None:
    """The model card of a local model name or a safetensors file, if it has one."""
    spec = str(name_or_path)
    path = _local(spec) if _NAME.fullmatch(spec) and _local(spec).exists() else Path(spec).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    return _json_or_none(_metadata(path).get("card"), path)
