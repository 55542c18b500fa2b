"""Search on a synthetic index of AudioCLIP-like vectors: recall@10 of the quantised search against exact, and warm
query times. Needs no model and no torch: `bench speed`'s cold-search and serve parts build their index with it."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.errors import UsageError
from audiofind.store import AudioRow, FileRow, ModelBinding, open_store
from audiofind.store import vectors as vec


@dataclass(frozen=True)
class SearchBench:
    """Quality and speed of search on a synthetic index."""

    segments: int
    dim: int
    queries: int
    recall_at_10: float  # of files, quantised search against exact
    build_s: float
    quantised_ms: float | None  # median warm query: vector search and grouping
    exact_ms: float | None  # median query scoring every segment


def bench_search(
    path: Path,
    segments: int = 100_000,
    dim: int = 1024,
    queries: int = 50,
    seed: int = 0,
    timing: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SearchBench:
    """Fill a new index at path with AudioCLIP-like synthetic vectors; measure recall@10 and warm query times."""
    if Path(path).exists():
        raise UsageError(f"{path} already exists; the search benchmark builds a new index and overwrites none.")
    data = vec.synthetic(segments, dim, queries, seed)
    starts = np.flatnonzero(np.diff(data.file_of, prepend=-1))  # first segment of each file
    ends = np.append(starts[1:], segments)
    t0 = time.perf_counter()
    with open_store(path, create=True) as index:
        index.bind_model(ModelBinding("synthetic", "0" * 64, dim, 2.0, 1.0))
        for batch in range(0, len(starts), 500):
            with index.transaction():
                for f in range(batch, min(batch + 500, len(starts))):
                    n, h = int(ends[f] - starts[f]), f"{f:064x}"
                    row = FileRow(f"{path}.files/{f}.wav", f"{path}.files", 0, 0, h)
                    spans = [(float(j), j + 2.0) for j in range(n)]
                    index.add_file(row, AudioRow(h, n + 1.0, 44100, 1), spans, data.vectors[starts[f] : ends[f]])
            if progress:
                progress(int(ends[min(batch + 500, len(starts)) - 1]), segments)
        build_s = time.perf_counter() - t0
        truth = [vec.top_files(data.vectors, data.file_of, q) for q in data.queries]
        found = [[int(Path(h.path).stem) for h in index.search(q, 10, exact=False)] for q in data.queries]
        quantised_ms = exact_ms = None
        if timing:  # the recall pass above loaded the codes and warmed the page cache
            quantised_ms = _median_ms(lambda q: index.search(q, 10), data.queries)
            exact_ms = _median_ms(lambda q: index.search(q, 10, exact=True), data.queries[:3])
    return SearchBench(segments, dim, queries, vec.recall(found, truth), build_s, quantised_ms, exact_ms)


def _median_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))
