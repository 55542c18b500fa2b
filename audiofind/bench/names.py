"""What reading names costs, for `bench speed`: the time hybrid search adds to an audio query at 100k files, a
names-only query, and the time to fill the full-text index of an existing 100k-file index (what the first run of
this release does once, on an index made before names were indexed)."""

import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from audiofind.bench import speed as bench
from audiofind.search import search
from audiofind.search.embedding import search_text
from audiofind.store import AudioRow, FileRow, ModelBinding, open_store, vectors

# A sound-effects library's way of naming: a UCS-like category id, three descriptive words, a take; a third of the
# files tagged. 40 categories and 400 words, so a query word is in about 1% of the files, as "door" or "creak" are
# in a large general library (a word in 40% of them makes the names' ranking 20-25 ms at 100k files).
CATEGORIES = ("DOORWood", "DOORMetal", "FOLYFeet", "RAINRoof", "WINDGust", "DRUMKick", "AMBForest", "WATRDrip",
              "VEHCar", "MACHMotor") + tuple(f"CAT{i:02d}Misc" for i in range(30))  # fmt: skip
WORDS: tuple[str, ...] = ("creak", "slow", "old", "barn", "slam", "gravel", "tin", "heavy", "light", "distant", "close", "wet", "dry",
         "808", "squeak", "metal", "wood", "loop", "soft", "hard", "gust", "drip", "pass", "idle")  # fmt: skip
WORDS += tuple(
    a + b + c
    for a in ("ba", "ko", "ri", "tu", "me")
    for b in ("lon", "var", "sek", "dim", "pau")
    for c in ("a", "o", "is", "um", "et", "ix", "or", "an", "el", "uz", "ep", "ot", "ak", "in", "us", "ra")
)[: 400 - 24]
FOLDERS = ("Foley/Doors", "Foley/Doors", "Foley/Footsteps/Gravel", "Ambience/Rain", "Ambience/Wind", "Drums/Kicks",
           "Ambience/Forest", "Water/Drips", "Vehicles", "Machines") + tuple(f"Library/Pack {i:02d}" for i in range(30))  # fmt: skip
QUERIES = (
    "door creak",
    "kick 808",
    "rain on a tin roof",
    "footsteps gravel",
    "wind gust distant",
    '"creak slow" -metal',
)


class _FixedQueries:
    """Stands in for the text tower: a fixed vector per query, so the timings hold search alone."""

    def __init__(self, dim: int) -> None:
        self.rng, self.dim = np.random.default_rng(1), dim

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError("the names benchmark searches by description only")


def names_index(path: Path, files: int, dim: int, seed: int = 0) -> None:
    """A new index of `files` descriptively named files, one segment each, a third of them tagged."""
    rng = np.random.default_rng(seed)
    data = vectors.synthetic(files, dim, queries=1, seed=seed).vectors
    with open_store(path, create=True) as index:
        index.bind_model(ModelBinding("synthetic", "0" * 64, dim, 10.0, 5.0))
        for start in range(0, files, 1000):
            with index.transaction():
                for f in range(start, min(start + 1000, files)):
                    picked = rng.choice(len(WORDS), 3, replace=False)
                    words = "_".join(WORDS[w].capitalize() for w in picked)
                    name = f"{CATEGORIES[f % len(CATEGORIES)]}_{words}_{f % 97:02d}.wav"
                    tags: dict[str, str | list[str]] = (
                        {"title": f"{WORDS[picked[0]]} {WORDS[picked[1]]}"} if f % 3 == 0 else {}
                    )
                    h = f"{f:064x}"
                    row = FileRow(f"/bench/{FOLDERS[f % len(CATEGORIES)]}/{f:06d} {name}", "/bench", 1, 1, h, tags=tags)
                    index.add_file(row, AudioRow(h, 10.0, 44100, 1), [(0.0, 10.0)], data[f : f + 1])


def names_speed(files: int = 100_000, dim: int = 1024, repeat: int = 3) -> dict[str, float]:
    """Seconds: what hybrid adds to an audio query (median over queries of hybrid minus the vector search alone,
    each the fastest of `repeat` interleaved runs), a names-only query, and filling the full-text index of an
    index that has none."""
    key = f"{files // 1000}k" if files >= 1000 else str(files)
    out: dict[str, float] = {}
    with bench.scratch_dir() as tmp:
        db = Path(tmp) / "names.db"
        names_index(db, files, dim)
        with open_store(db, create=True) as index:
            encoder, cpu = _FixedQueries(dim), torch.device("cpu")
            adds, names_only = [], []
            for q in QUERIES:
                t = bench.side_by_side({
                    "audio": partial(search_text, index, encoder, q, 20),  # the sound alone, as before names
                    "hybrid": partial(search, index, q, k=20, mode="hybrid", model=encoder),
                    "text": partial(search, index, q, k=20, mode="text"),
                }, cpu, repeat)  # fmt: skip
                adds.append(t["hybrid"] - t["audio"])
                names_only.append(t["text"])
            out[f"hybrid_adds_{key}_s"] = max(0.0, statistics.median(adds))
            out[f"text_query_{key}_s"] = statistics.median(names_only)
            start = time.perf_counter()
            filled = index.reindex_names()  # what the upgrade of an index from before names were indexed runs
            out[f"fts_fill_{key}_s"] = time.perf_counter() - start
    if filled != files:  # the measurement means nothing if the fill did not index every file
        raise RuntimeError(f"the full-text fill indexed {filled} of {files} files")
    return out
