"""Checkpoint files as data: reading torch pickles without running code, choosing the towers audiofind uses,
hashing, and writing the safetensors files every later run reads."""

import hashlib
import json
import logging
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safetensors import SafetensorError, safe_open

from audiofind.errors import UnsafeCheckpoint, WeightsError
from audiofind.model.family import Family

if TYPE_CHECKING:  # torch is imported where a tensor is made: reading metadata (every search) needs none
    import torch

log = logging.getLogger(__name__)

FORMAT = "audiofind"  # metadata["format"] of the files we write
CHUNK = 1 << 20
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # left by DDP and torch.compile when the wrapper was saved

Progress = Callable[[int, int], None]
Source = Literal["registered", "imported", "finetuned"]


def tower_or_none(key: str) -> str | None:
    """The tower of a key, or None for a key of no AudioCLIP tower."""
    for prefix, tower in (("audio.", "audio"), ("visual.", "visual"), ("logit_scale", "scale")):
        if key.startswith(prefix):
            return tower
    return "text" if key.startswith(_TEXT_PREFIXES) else None


def tower_of(key: str) -> str:
    """Which AudioCLIP tower a state-dict key belongs to: audio, text, visual or scale."""
    if (tower := tower_or_none(key)) is None:
        raise WeightsError(f"The key {key!r} belongs to no AudioCLIP tower.")
    return tower


def is_used(key: str, shape: Iterable[int], origin: object) -> bool:
    """Whether audiofind needs this tensor: audio and text towers plus the audio-text logit scale."""
    if (tower := tower_or_none(key)) is None:
        raise WeightsError(
            f"{origin} holds {key!r}, which belongs to no AudioCLIP tower; it is not an AudioCLIP checkpoint."
        )
    if key == "logit_scale_at":
        return True
    if tower not in ("audio", "text") or key.endswith(".num_batches_tracked"):
        return False
    # The reference keeps an empty bias in its filter bank; nothing reads it.
    return not (key == "audio.fbsp.bias" and 0 in tuple(shape))


def dtype_name(dtype: "torch.dtype") -> str:
    """A dtype as users write it: float16, not torch.float16."""
    return str(dtype).removeprefix("torch.")


def as_float32(key: str, tensor: "torch.Tensor", origin: object) -> "torch.Tensor":
    """A weight as the float32 the model computes in; a tensor that is not floating point is refused."""
    import torch

    if not tensor.is_floating_point():
        raise WeightsError(
            f"{origin} holds {key!r} as {dtype_name(tensor.dtype)}, but AudioCLIP weights are floating point; it was refused."
        )
    # Half precision overflows in the model (samples arrive in the int16 range), so every float is widened once here.
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def select(state_dict: dict, origin: object) -> "dict[str, torch.Tensor]":
    """The tensors audiofind keeps, as float32 with wrapper prefixes removed, ready for save_file."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"{origin} is not an AudioCLIP state dict: entry {key!r} is not a named tensor.")
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if not is_used(key, tensor.shape, origin):
            continue
        tensor = as_float32(key, tensor.detach(), origin).contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        # save_file refuses tensors that share memory; copy the rare ones that do.
        if ptr and (ptr in seen or tensor.untyped_storage().nbytes() != tensor.nbytes):
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    if not any(tower_or_none(k) in ("audio", "text") for k in out):
        raise WeightsError(f"{origin} holds neither an audio nor a text tower, so it is not an AudioCLIP checkpoint.")
    return out


def content_sha256(tensors: "dict[str, torch.Tensor]") -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    import torch

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # an ndarray has the buffer protocol, but numpy's stubs declare __buffer__ only for Python >= 3.12
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return h.hexdigest()


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
        if not data.startswith(b"\x80"):  # torch pickles use protocol 2 or later; anything else is not one
            return None
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


def _what_it_is(path: Path) -> str:
    """What a file that failed to load is, as the end of a sentence ("is a text file"), or "" if it cannot be told."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    if not head:
        return "is empty"
    if len(head) > 8 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "is a safetensors file; import it under a name ending in .safetensors"
    if zipfile.is_zipfile(path):
        return "is a zip archive"
    if b"\0" in head:
        return ""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not merely a character cut at the 4096th byte
            return ""
    return "is a text file"


def _not_a_checkpoint(path: Path) -> WeightsError:
    what = _what_it_is(path)
    kind = "a torch checkpoint (.pt) or a safetensors file"
    return WeightsError(f"{path} {what}, not {kind}." if what else f"{path} is not {kind}.")


def numpy_scalar_globals() -> list:
    """What a pickled numpy number needs beside the weights-only defaults: LAION-CLAP's published checkpoint holds
    some in its training state, pickled by numpy 1 as numpy.core.multiarray.scalar (numpy 2 writes numpy._core).
    Each of these builds a number from a dtype and its bytes; none can run code."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover (numpy 1)
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]  # every numeric dtype's class
    names = ["numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"]
    return [scalar, *((scalar, name) for name in names), np.dtype, *dtypes]


def load_pt(path: Path) -> dict:
    """Unpickle a torch checkpoint without running code, and find its state dict."""
    import torch

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(numpy_scalar_globals()):
            # A raw pickle draws a protocol warning on its way to being refused; the error says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # mmap needs the zip format of torch >= 1.6; older files are read into memory.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if detail := _unsafe_detail(path, str(e)):
            raise UnsafeCheckpoint(
                f"{path} tries to import {detail} while loading, so it could run code; it was refused and nothing was run."
            ) from None
        raise _not_a_checkpoint(path) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, struct.error, zipfile.BadZipFile) as e:
        log.debug("torch.load(%s) failed: %r", path, e)
        raise _not_a_checkpoint(path) from e
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path} is not a torch checkpoint: it holds no state dict of tensors.")
    return obj


def read_metadata(path: Path) -> dict[str, str]:
    """The str -> str metadata of a safetensors file."""
    try:
        with safe_open(path, framework="numpy") as f:  # metadata only; "pt" would import torch
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        what = _what_it_is(path) if isinstance(e, SafetensorError) else ""
        if what and not what.startswith("is a safetensors"):
            raise WeightsError(f"{path} {what}, not a safetensors file.") from e
        raise WeightsError(f"{path} is not a readable safetensors file: {e}.") from e


def json_or_none(text: str | None, path: Path) -> dict | None:
    """Parse a JSON metadata field; empty means None."""
    try:
        return json.loads(text) if text else None
    except ValueError as e:
        raise WeightsError(f"{path} has metadata that is not valid JSON: {e}.") from e


def write(
    tensors: "dict[str, torch.Tensor]",
    out: Path,
    name: str,
    sha256: str,
    source: Source,
    config: dict | None = None,
    card: dict | None = None,
    family: Family = "audioclip",
) -> Path:
    """Write tensors and our metadata (the model family among it) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "family": family,
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
