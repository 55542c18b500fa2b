"""audiofind: search a sound library by describing what you hear (AudioCLIP embeddings in SQLite + sqlite-vec).

The public API, loaded on first use so that importing audiofind (and running `audiofind --help`) stays instant:

    enc = audiofind.load_model("audioclip-full", device="auto")
    with audiofind.open_index() as index:
        hits = audiofind.search_text(index, enc, "rain on a tin roof", k=10)
"""

from importlib import import_module
from typing import Any

_API = {
    "load_model": ("audiofind.model.encoder", "load_encoder"),
    "available_models": ("audiofind.model.weights", "available_models"),
    "open_index": ("audiofind.store", "open_index"),
    "search_text": ("audiofind.search.embedding", "search_text"),
    "search_like": ("audiofind.search.embedding", "search_like"),
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'audiofind' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(import_module(module), attr)
