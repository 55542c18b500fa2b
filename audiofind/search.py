"""Finding sounds: by a description (text tower only) or by example (a file's own segment vectors)."""

import os
from pathlib import Path

import numpy as np

from audiofind import decode
from audiofind.encoder import Encoder, load_for_index
from audiofind.errors import IndexNotFound, SchemaMismatch, UsageError
from audiofind.store import Filters, Hit
from audiofind.store import Index


def encoder_for(index: Index, weights: str | None, device: str) -> Encoder:
    """The encoder of the model that built the index (or --weights, refused if it is another model); loads lazily."""
    bound = index.model()
    if bound is None:
        raise IndexNotFound(f"The index at {index.path} is empty; add sounds with: audiofind index PATH...")
    enc = load_for_index(bound.name, weights, device, ["audio", "text"])
    if enc.sha256 != bound.sha256 or enc.dim != bound.dim:
        raise SchemaMismatch(
            f"This index was built with model '{bound.name}' (sha256 {bound.sha256[:12]}...); you asked for "
            f"'{enc.name}' (sha256 {enc.sha256[:12]}...). Rebuild it with: audiofind index --rebuild PATH..."
        )
    return enc


def search_text(index: Index, encoder: Encoder, query: str, k: int = 20, filters: Filters | None = None) -> list[Hit]:
    """Files whose best segment matches the description, best first."""
    if not query or not query.strip():
        raise UsageError("The query is empty; describe the sound you are looking for, or use --like FILE.")
    vector = encoder.embed_text([query])
    return index.search(vector, k, filters)


def search_like(index: Index, encoder: Encoder, path: Path, k: int = 20, filters: Filters | None = None) -> list[Hit]:
    """Files that sound like FILE: each scored by its best cosine with any of FILE's segments."""
    return index.search(example_vectors(index, encoder, path), k, filters)


def example_vectors(index: Index, encoder: Encoder, path: Path) -> np.ndarray:
    """FILE's segment vectors: reused from the index when FILE is indexed and unchanged, else embedded now."""
    key = os.path.abspath(path)
    row = index.get_file(key)
    try:
        st = os.stat(key)
    except OSError:
        st = None
    if row is not None and row.status == "ok" and row.hash and st and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
        _, vectors = index.segment_vectors(row.hash)
        if len(vectors):
            return vectors
    bound = index.model()
    window, hop = (bound.window, bound.hop) if bound else (decode.WINDOW_SECONDS, decode.HOP_SECONDS)
    vectors = [encoder.embed_audio([w.samples])[0] for w in decode.iter_windows(Path(path), window, hop)]
    return np.stack(vectors)
