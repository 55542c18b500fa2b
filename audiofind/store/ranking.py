"""How a search turns scored segments into files: the exact scores and the grouping every backend shares.

Both backends find candidate segments their own way (SQLite: binary codes in numpy; PostgreSQL: pgvector), then
score them here with the same float32 arithmetic and group them here by content, so the same library gives the
same files, in the same order, with the same scores, whichever backend holds it.
"""

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from audiofind.store.records import Hit

BLOCK = 256  # segments looked up at a time while grouping
# The files holding these contents that pass the filters, as Hits with their facts (score and segment set here).
FilesOf = Callable[[list[str]], list[Hit]]
# Where these segment ids are: id -> (hash, start, end).
SegmentsOf = Callable[[np.ndarray], dict[int, tuple[str, float, float]]]


def best_scores(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact cosine of each unit vector (M, D) to its closest unit query (Q, D): (M,) float32."""
    # einsum, not `@`: waking BLAS threads for so small a product costs ~10 ms on a busy 2-core machine.
    return np.clip(np.einsum("md,qd->mq", vectors, queries), -1, 1).max(axis=1, initial=-1.0)


def rank_files(ids: np.ndarray, scores: np.ndarray, k: int, segments_of: SegmentsOf, files_of: FilesOf) -> list[Hit]:
    """The k best files among scored segments: each content scores as its best segment, every file holding it
    (copies included) is a hit, ties go by path. Walks segments best first until k files pass the filters."""
    order = np.argsort(-scores, kind="stable")
    seen: set[str] = set()
    hits: list[Hit] = []
    for start in range(0, len(order), BLOCK):
        block = order[start : start + BLOCK]
        where = segments_of(ids[block])
        best: dict[str, tuple[float, float, float]] = {}  # hash -> (score, start, end), best first
        for i in block:
            found = where.get(int(ids[i]))
            if found is not None and found[0] not in seen:
                seen.add(found[0])
                best[found[0]] = (float(scores[i]), float(found[1]), float(found[2]))
        if best:
            for found_file in files_of(list(best)):
                score, s, e = best[found_file.hash]
                hits.append(replace(found_file, score=score, start=s, end=e))
        # Every later segment scores no higher, so k files in hand are the k best.
        if len(hits) >= k:
            break
    hits.sort(key=lambda h: (-h.score, h.path))
    return hits[:k]
