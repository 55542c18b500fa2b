"""Speed of the PostgreSQL backend: bulk loading, warm queries with their recall, SQLite beside it, two writers.

Plain functions over the store protocol, each returning figures (floats by name); `bench speed` shows them. They
need a server: `url` names a database whose index they may reset (never one that holds a real index).
"""

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from audiofind.errors import UsageError
from audiofind.store import AudioRow, FileRow, ModelBinding, RootRow, open_store
from audiofind.store import vectors as vec
from audiofind.store.protocol import Store
from audiofind.store.records import Content, PlacedFile, Portion

ROOT = "/bench"
PORTION = 2_000  # files a load portion


def _files(data: vec.Synthetic) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.diff(data.file_of, prepend=-1))  # first segment of each file
    return starts, np.append(starts[1:], len(data.file_of))


def fill(ix: Store, data: vec.Synthetic, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Load synthetic files into an empty index by the bulk path (`Store.load`: binary COPY on PostgreSQL), then
    optimize it (the HNSW index); figures: load seconds and rate, optimize seconds."""
    if ix.model() is not None or ix.stats().files:
        raise UsageError(f"{ix.location} holds an index; the benchmark fills only an empty one.")
    dim = data.vectors.shape[1]
    starts, ends = _files(data)
    t0 = time.perf_counter()
    centre = data.vectors[: min(1024, len(data.vectors))].mean(axis=0).astype(np.float32)
    ix.load(Portion(ModelBinding("synthetic", "0" * 64, dim, 2.0, 1.0), centre, [RootRow(ROOT, None, ROOT, True)]))
    for batch in range(0, len(starts), PORTION):
        contents, placed = [], []
        for f in range(batch, min(batch + PORTION, len(starts))):
            n, h = int(ends[f] - starts[f]), f"{f:064x}"
            spans = [(float(j), j + 2.0) for j in range(n)]
            contents.append(Content(AudioRow(h, n + 1.0, 44100, 1), spans, data.vectors[starts[f] : ends[f]]))
            row = FileRow(f"{ROOT}/{f}.wav", ROOT, 0, 0, h, indexed_at=time.time())
            placed.append(PlacedFile(f + 1, ROOT, f"{f}.wav", row))
        ix.load(Portion(contents=contents))
        ix.load(Portion(files=placed))
        if progress:
            progress(int(ends[min(batch + PORTION, len(starts)) - 1]), len(data.vectors))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ix.optimize()
    return {"load_s": load_s, "load_segments_per_s": len(data.vectors) / load_s, "optimize_s": time.perf_counter() - t0}


def queries(ix: Store, data: vec.Synthetic, k: int = 10, exact_runs: int = 3) -> dict[str, float]:
    """Warm query times (median and 90th percentile, ms) and recall@k of files against exact ground truth."""
    truth = [vec.top_files(data.vectors, data.file_of, q, k) for q in data.queries]
    ix.search(data.queries[0], k)  # warm: connection, caches, plans
    times, found = [], []
    for q in data.queries:
        t = time.perf_counter()
        hits = ix.search(q, k)
        times.append((time.perf_counter() - t) * 1000)
        found.append([int(os.path.splitext(os.path.basename(h.path))[0]) for h in hits])
    exact = []
    for q in data.queries[:exact_runs]:
        t = time.perf_counter()
        ix.search(q, k, exact=True)
        exact.append((time.perf_counter() - t) * 1000)
    return {"query_ms": float(np.median(times)), "query_p90_ms": float(np.percentile(times, 90)),
            "recall_at_10": vec.recall(found, truth), "exact_ms": float(np.median(exact))}  # fmt: skip


def _writer(db: str, first: int, files: int, per_file: int, dim: int) -> float:
    """One writer process: add files one transaction each (as `index` does), claiming each content; seconds."""
    rng = np.random.default_rng(first)
    with open_store(db, create=True) as ix:
        t0 = time.perf_counter()
        for f in range(first, first + files):
            h = f"w{f:063x}"
            if not ix.claim(h):
                continue
            spans = [(float(j), j + 2.0) for j in range(per_file)]
            row = FileRow(f"{ROOT}/w{f}.wav", ROOT, 0, 0, h)
            ix.add_file(row, AudioRow(h, per_file + 1.0, 44100, 1), spans, rng.standard_normal((per_file, dim)))
            ix.release(h)
        return time.perf_counter() - t0


def writers(db: str, dim: int = 1024, files: int = 400, per_file: int = 10) -> dict[str, float]:
    """Segments a second stored through `add_file` (one transaction a file) by one writer, then by two at once."""
    with open_store(db, create=True) as ix:
        if ix.model() is None:
            ix.bind_model(ModelBinding("synthetic", "0" * 64, dim, 2.0, 1.0))
    one = _writer(db, 0, files, per_file, dim)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        t0 = time.perf_counter()
        runs = [pool.submit(_writer, db, (1 + i) * files, files, per_file, dim) for i in range(2)]
        for r in runs:
            r.result()
        both = time.perf_counter() - t0
    return {
        "one_writer_segments_per_s": files * per_file / one,
        "two_writers_segments_per_s": 2 * files * per_file / both,
    }


def check_scratch(ix: Store) -> None:
    """UsageError unless ix is empty or holds only what a benchmark left (its synthetic model): the benchmark resets
    the database it is given, and must never be given a real index."""
    binding, files = ix.model(), ix.stats().files
    if files and (binding is None or binding.name != "synthetic"):
        raise UsageError(
            f"{ix.location} holds an index ({files:,} files); the benchmark resets the database it measures in: give "
            "it a scratch database, or leave --postgres out to let it start a server of its own."
        )


def postgres_speed(url: str, sizes: tuple[int, ...] = (100_000, 1_000_000), dim: int = 1024, sqlite: str | None = None,
                   sqlite_sizes: tuple[int, ...] | None = None, queries_n: int = 50,
                   progress: Callable[[str], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Every figure: for each size, PostgreSQL's load rate, optimize (HNSW build) time, warm query and recall;
    SQLite's load rate, warm query and recall beside it at each of sqlite_sizes (all sizes unless given; in the file
    sqlite, if given); the writers' rates."""
    say = progress or (lambda text: None)
    out: dict[str, float] = {}
    with open_store(url, create=True) as ix:
        check_scratch(ix)
    for size in sizes:
        data = vec.synthetic(size, dim, queries_n, seed=0)
        tag = f"{size // 1000}k"
        with open_store(url, create=True) as ix:
            ix.reset()
            say(f"postgres {tag}: loading")
            out |= {f"pg_{k}_{tag}": v for k, v in fill(ix, data).items()}
            say(f"postgres {tag}: querying")
            out |= {f"pg_{k}_{tag}": v for k, v in queries(ix, data).items()}
            ix.reset()
        if sqlite is not None and size in (sizes if sqlite_sizes is None else sqlite_sizes):
            say(f"sqlite {tag}")
            with open_store(sqlite, create=True) as ix:
                ix.reset()
                out |= {f"sqlite_{k}_{tag}": v for k, v in fill(ix, data).items()}
                out |= {f"sqlite_{k}_{tag}": v for k, v in queries(ix, data).items()}
        del data
    say("postgres: writers")
    with open_store(url, create=True) as ix:
        ix.reset()
    out |= {f"pg_{k}": v for k, v in writers(url, dim).items()}
    with open_store(url, create=True) as ix:
        ix.reset()
    return out
