"""Nearest files to query vectors in the SQLite index: exact scoring, or binary-code candidates re-scored exactly.

Segments are scored by cosine to their closest query vector and grouped by file (a file scores as its best
segment). Small or tightly filtered sets are scored exactly; otherwise the nearest binary codes of centred vectors
(Hamming distance) are re-scored, widening until k files are found.
"""

import json
import os

import apsw
import numpy as np

from audiofind.store import ranking
from audiofind.store import vectors as vec
from audiofind.store.records import Filters, Hit, ModelBinding
from audiofind.store.sqlite import files, meta
from audiofind.store.sqlite.filters import conditions, ids_json
from audiofind.store.sqlite.typed import fetch

EXACT_MAX = 2048  # up to this many segments (after filters) every one is scored exactly
CANDIDATES = 1000  # segments re-scored exactly per query vector, at least
CANDIDATES_PER_FILE = 50  # ...and this many per file asked for


# Segments of contents still being embedded (a long recording, a chunk at a time) are not searched yet.
_DONE = "hash NOT IN (SELECT hash FROM partial)"


def search(
    conn: apsw.Connection,
    path: str,
    binding: ModelBinding,
    roots: list[str],
    queries: np.ndarray,
    k: int = 20,
    filters: Filters | None = None,
    exact: bool | None = None,
) -> list[Hit]:
    """The k files whose best segment is closest to any of the query vectors (Q, D) or (D,), best first.

    Runs inside the caller's read transaction. exact=None scores every segment when that is cheap (small index,
    tight filters) and otherwise re-scores the nearest binary codes; True always scores every segment; False uses
    the codes whenever they exist. roots: the indexed folders (for filters.under).
    """
    if k <= 0:
        return []
    q = vec.normalize(queries)  # (Q, D)
    if q.shape[1] != binding.dim:
        raise ValueError(f"Query vectors have {q.shape[1]} dimensions; this index holds {binding.dim}.")
    filters = None if filters is None or filters.is_empty() else filters
    cond, params = conditions(filters, roots)
    rank = lambda ids: _rank(conn, *score_segments(conn, ids, q, binding.dim), k, cond, params)
    allowed = None
    if filters is not None:
        sql = f"SELECT DISTINCT f.hash FROM files f JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok'{cond}"
        allowed = [h for (h,) in conn.execute(sql, params)]
    found = codes(conn, path)
    if found is None:  # a small index: no codes yet
        return rank(_segment_ids(conn, allowed))
    pos = found.positions(allowed)
    if exact or (exact is None and len(pos) <= EXACT_MAX):
        return rank(found.ids[pos])
    want = max(CANDIDATES, CANDIDATES_PER_FILE * k)
    while True:
        hits = rank(found.nearest(q, pos, want))
        # Too few files among the candidates (long files, copies filtered out): widen, up to all of them.
        if len(hits) >= k or want >= len(pos):
            return hits
        want *= 4


# One copy of each index's codes per process, shared by all its connections (serve borrows one per thread), keyed
# by what changes whenever the searchable segments do: the version writers bump, the centre, the file itself.
_SHARED: dict[str, tuple[tuple, vec.Codes | None]] = {}


def codes(conn: apsw.Connection, path: str) -> vec.Codes | None:
    """The binary codes of all searchable segments of the index at path: from memory, else the saved blob, else
    rebuilt from the rows (None while the index is too small to have them)."""
    facts = meta.read(conn)
    centre, version = facts.get("centre"), facts.get("segments_version")
    try:
        inode = os.stat(path).st_ino  # a rebuilt index swapped in at the same path is another file
    except OSError:
        inode = None
    key = (version, inode, hash(centre) if isinstance(centre, bytes) else None)
    cached = _SHARED.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    found = None
    if isinstance(centre, bytes):
        saved = conn.execute("SELECT version, blob FROM codes_cache").fetchone()
        if saved is not None and saved[0] == version:
            found = vec.Codes.from_bytes(saved[1])
        else:
            sql = f"SELECT id, hash, code FROM segments WHERE code IS NOT NULL AND {_DONE} ORDER BY id"
            found = vec.Codes.from_rows(np.frombuffer(centre, np.float32), fetch(conn, sql))
    _SHARED[path] = (key, found)
    return found


def save_codes(conn: apsw.Connection, path: str) -> None:
    """Store the assembled codes of the current segments as one blob, for the next cold search (in a transaction)."""
    found = codes(conn, path)
    conn.execute("DELETE FROM codes_cache")
    version = meta.read(conn).get("segments_version")
    if found is not None and version is not None:
        conn.execute("INSERT INTO codes_cache (version, blob) VALUES (?, ?)", (version, found.to_bytes()))


def _segment_ids(conn: apsw.Connection, hashes: list[str] | None) -> list[int]:
    if hashes is None:
        return [i for (i,) in conn.execute(f"SELECT id FROM segments WHERE {_DONE}")]
    sql = "SELECT id FROM segments WHERE hash IN (SELECT value FROM json_each(?))"
    return [i for (i,) in conn.execute(sql, (json.dumps(hashes),))]


def score_segments(
    conn: apsw.Connection, ids: list[int] | np.ndarray, q: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each segment to its closest query vector: (found ids (M,), scores (M,))."""
    found, scores = [], []
    for start in range(0, len(ids), 4096):  # bounded memory on exact scans of big indexes
        f, v = files.fetch_vectors(conn, ids[start : start + 4096], dim)
        found.append(f)
        scores.append(ranking.best_scores(v, q))  # (M,)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found), np.concatenate(scores)


def _rank(conn: apsw.Connection, ids: np.ndarray, scores: np.ndarray, k: int, cond: str, params: list) -> list[Hit]:
    """Group scored segments by file (ranking.rank_files), looking segments and files up here."""
    roots: dict[str, bool] = {}  # root -> whether it is there now

    def segments_of(block: np.ndarray) -> dict[int, tuple[str, float, float]]:
        sql = 'SELECT id, hash, start, "end" FROM segments WHERE id IN (SELECT value FROM json_each(?))'
        return {r[0]: r[1:] for r in conn.execute(sql, (ids_json(block),))}

    def files_of(hashes: list[str]) -> list[Hit]:
        sql = (
            f"SELECT {files.HIT_COLUMNS} FROM files f JOIN audio a ON a.hash = f.hash "
            f"WHERE f.status = 'ok' AND f.hash IN (SELECT value FROM json_each(?)){cond}"
        )
        return [files.hit(row, 0.0, None, None, roots) for row in conn.execute(sql, [json.dumps(hashes), *params])]

    return ranking.rank_files(ids, scores, k, segments_of, files_of)
