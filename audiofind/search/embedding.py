"""The sound side of search: a description through the text tower, or an example file's own segment vectors.

A command-line search is one query in a fresh process, so its start-up is its latency. Nothing here imports torch
until a query needs it: a description is embedded by the numpy text tower of the index's model family
(audiofind.model.textnp for AudioCLIP, audiofind.model.clap.query for CLAP), and --like on an indexed, unchanged file
reuses the index's own vectors, so neither loads torch or any model file but the text tower.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from audiofind.errors import IndexNotFound, UsageError
from audiofind.store import Filters, Hit, ModelBinding, Store

if TYPE_CHECKING:
    from audiofind.model.clap.query import ClapTextModel
    from audiofind.model.embedder import Embedder
    from audiofind.model.textnp import TextTower

NUMPY_DEVICES = ("auto", "cpu")  # "auto" too: starting CUDA takes longer than the whole query on the CPU


@runtime_checkable
class QueryModel(Protocol):
    """What search needs of a model: an Encoder, or a QueryEncoder that loads what a query needs."""

    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray: ...


def _bound(index: Store) -> ModelBinding:
    bound = index.model()
    if bound is None:
        raise IndexNotFound(f"The index at {index.location} is empty; add sounds with: audiofind index PATH...")
    return bound


def _check(index: Store, bound: ModelBinding, name: str, sha256: str, dim: int) -> None:
    """SchemaMismatch, with the exact rebuild command, if these weights did not make the index's vectors."""
    # The index's own precision: a query is never stored, so one computed in fp32 against bf16 vectors (a CPU
    # searching what a GPU indexed) only ranks within bf16's own error.
    index.check_model(ModelBinding(name, sha256, dim, bound.window, bound.hop, bound.precision))


def encoder_for(index: Store, weights: str | None, device: str, precision: str = "fp32") -> "Embedder":
    """The torch encoder of the model that built the index (or --weights, refused if it is another model); loads
    lazily. For a warm process (serve); a one-off query takes query_encoder."""
    from audiofind.model.encoder import load_for_index

    bound = _bound(index)
    enc = load_for_index(bound.name, weights, device, ["audio", "text"], precision=precision)
    _check(index, bound, enc.name, enc.sha256, enc.dim)
    return enc


@dataclass
class QueryEncoder:
    """The model of an index for one query, loading only what that query needs, when it needs it: the numpy text
    tower for a description (torch's only on an explicit GPU --device), the torch audio tower for an example file
    that is not in the index, nothing at all for one that is."""

    index: Store
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"  # of the torch towers (CUDA only but fp32); the numpy text tower is fp32
    _tower: "TextTower | ClapTextModel | None" = None
    _encoder: "Embedder | None" = None

    @property
    def dim(self) -> int:
        """Embedding size, as the index records it."""
        return _bound(self.index).dim

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32, unnormalised."""
        if (self.device or "auto").strip().lower() not in NUMPY_DEVICES:
            return self.torch().embed_text(texts)
        if self._tower is None:
            from audiofind.model.textnp import load_text_tower
            from audiofind.model.weights import resolve_for_index

            bound = _bound(self.index)
            resolved = resolve_for_index(bound.name, self.weights)
            text = (resolved.config or {}).get("text") or {}
            if resolved.family == "clap":
                from audiofind.model.clap.query import load_text_model

                tower: TextTower | ClapTextModel = load_text_model(
                    resolved.path, resolved.tokenizer, text.get("heads"), text.get("context_length", 77)
                )
            else:
                tower = load_text_tower(resolved.path, text.get("heads"))
            _check(self.index, bound, resolved.name, resolved.sha256, tower.dim)
            self._tower = tower
        return self._tower.embed_text(texts)

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono clips at sample_rate -> (B, dim) float32, on the torch audio tower."""
        return self.torch().embed_audio(clips)

    @property
    def sample_rate(self) -> int:
        """The rate the index's model takes audio at (44100 AudioCLIP, 48000 CLAP), known without loading it."""
        from audiofind.model.family import SAMPLE_RATES
        from audiofind.model.weights import resolve_for_index

        return SAMPLE_RATES[resolve_for_index(_bound(self.index).name, self.weights).family]

    def torch(self) -> "Embedder":
        """The torch encoder, loaded (and checked against the index) on first use."""
        if self._encoder is None:
            self._encoder = encoder_for(self.index, self.weights, self.device, self.precision)
        return self._encoder


def query_encoder(index: Store, weights: str | None, device: str, precision: str = "fp32") -> QueryEncoder:
    """What `audiofind search` embeds its query with: loads nothing yet, and never torch for a text query on the
    CPU or an indexed example; IndexNotFound at once for an empty index, DeviceError for a precision the device
    cannot honour."""
    _bound(index)
    if precision != "fp32":  # only CUDA offers others, and asking needs torch: fp32 alone keeps it unloaded
        from audiofind.device import check_precision, resolve_device

        check_precision(precision, resolve_device(device))
    return QueryEncoder(index, weights, device, precision)


def search_text(
    index: Store, encoder: QueryModel, query: str, k: int = 20, filters: Filters | None = None
) -> list[Hit]:
    """Files whose best segment matches the description, best first."""
    if not query or not query.strip():
        raise UsageError("The query is empty; describe the sound you are looking for, or use --like FILE.")
    vector = encoder.embed_text([query])
    return index.search(vector, k, filters)


def search_like(
    index: Store, encoder: QueryModel, path: Path, k: int = 20, filters: Filters | None = None
) -> list[Hit]:
    """Files that sound like FILE: each scored by its best cosine with any of FILE's segments; FILE first of equals."""
    hits = index.search(example_vectors(index, encoder, path), k, filters)
    itself = os.path.abspath(path)
    return sorted(hits, key=lambda h: (-h.score, h.path != itself))  # stable: copies keep their order after it


def example_vectors(index: Store, encoder: QueryModel, path: Path) -> np.ndarray:
    """FILE's segment vectors: reused from the index when FILE is indexed and unchanged, else embedded now."""
    key = os.path.abspath(path)
    row = index.get_file(key)
    try:
        st = os.stat(key)
    except OSError:
        st = None
    if (
        row is not None
        and row.status == "ok"
        and row.hash
        and st
        and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns)
    ):
        _, vectors = index.segment_vectors(row.hash)
        if len(vectors):
            return vectors
    from audiofind.audio import decode  # PyAV: only for a file the index does not hold

    bound = index.model()
    window, hop = (bound.window, bound.hop) if bound else (decode.WINDOW_SECONDS, decode.HOP_SECONDS)
    rate: int = getattr(encoder, "sample_rate", decode.SAMPLE_RATE)  # the model's own, as the index decoded at
    embedded = [encoder.embed_audio([w.samples])[0] for w in decode.iter_windows(Path(path), window, hop, rate)]
    return np.stack(embedded)
