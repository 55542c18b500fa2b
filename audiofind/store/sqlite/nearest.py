"""Nearest files to query vectors in an index: exact scoring, or binary-code candidates re-scored exactly.

Segments are scored by cosine to their closest query vector and grouped by file (a file scores as its best
segment). Small or tightly filtered sets are scored exactly; otherwise the nearest binary codes of centred vectors
(Hamming distance) are re-scored, widening until k files are found.
"""

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audiofind.errors import UsageError
from audiofind.store import vectors as vec
from audiofind.store.records import folder_prefix, ids_json, norm_path

if TYPE_CHECKING:
    from audiofind.store.sqlite.index import Index

EXACT_MAX = 2048  # up to this many segments (after filters) every one is scored exactly
CANDIDATES = 1000  # segments re-scored exactly per query vector, at least
CANDIDATES_PER_FILE = 50  # ...and this many per file asked for


# Segments of contents still being embedded (a long recording, a chunk at a time) are not searched yet.
_DONE = "hash NOT IN (SELECT hash FROM partial)"


@dataclass(frozen=True)
class Filters:
    """Restrictions on which files a search may return; None means no restriction."""

    under: Path | str | None = None  # a folder, matched as given and as resolved
    exts: frozenset[str] | None = None  # "wav" or ".wav", any case
    min_duration: float | None = None
    max_duration: float | None = None
    tags: dict[str, str] | None = None  # every KEY=VALUE must match, ignoring case

    def is_empty(self) -> bool:
        """True if nothing is filtered out."""
        return not (self.under or self.exts or self.tags) and self.min_duration is None and self.max_duration is None

    @classmethod
    def checked(
        cls,
        under: Path | str | None = None,
        exts: Iterable[str] = (),
        min_duration: float | None = None,
        max_duration: float | None = None,
        tags: Iterable[str] = (),
    ) -> "Filters":
        """Filters from what a person typed (search's options, serve's query), UsageError naming what is wrong."""
        if under is not None and not Path(under).expanduser().is_dir():
            raise UsageError(f"under {under}: no such folder.")
        if (min_duration is not None and min_duration < 0) or (max_duration is not None and max_duration < 0):
            raise UsageError("Durations are seconds, zero or more.")
        if min_duration is not None and max_duration is not None and min_duration > max_duration:
            raise UsageError(f"The minimum duration {min_duration:g} s is more than the maximum {max_duration:g} s.")
        wanted: dict[str, str] = {}
        for item in tags:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"A tag filter takes KEY=VALUE, got {item!r}.")
            wanted[key.strip().lower()] = value.strip()
        # "wav", ".WAV", or one form field "wav, flac"
        suffixes = frozenset(e.lower().lstrip(".") for item in exts for e in item.replace(",", " ").split())
        return cls(
            under=str(Path(under).expanduser()) if under is not None else None,  # matched as given and as resolved
            exts=suffixes or None,
            min_duration=min_duration,
            max_duration=max_duration,
            tags=wanted or None,
        )


# What wrote a file, on nearly every file: noise in a list of results (the terminal table, the page).
HIDDEN_TAGS = frozenset({"encoder", "encoded_by", "encodedby", "encoding"})


def shown_tags(tags: dict[str, str | list[str]]) -> dict[str, str]:
    """Tags as people read them: writer tags left out, several values joined with '; '."""
    return {k: "; ".join(v) if isinstance(v, list) else str(v) for k, v in tags.items() if k not in HIDDEN_TAGS}


@dataclass(frozen=True)
class Hit:
    """One file found by search, with its best segment."""

    path: str
    score: float  # cosine of the best segment to the closest query vector
    start: float
    end: float
    duration: float
    tags: dict[str, str | list[str]]
    hash: str


def search(
    index: "Index", queries: np.ndarray, k: int = 20, filters: Filters | None = None, exact: bool | None = None
) -> list[Hit]:
    """The k files whose best segment is closest to any of the query vectors (Q, D) or (D,), best first.

    exact=None scores every segment when that is cheap (small index, tight filters) and otherwise re-scores the
    nearest binary codes; True always scores every segment; False uses the codes whenever they exist.
    """
    binding = index.model()
    if binding is None or k <= 0:
        return []
    q = vec.normalize(queries)  # (Q, D)
    if q.shape[1] != binding.dim:
        raise ValueError(f"Query vectors have {q.shape[1]} dimensions; this index holds {binding.dim}.")
    filters = None if filters is None or filters.is_empty() else filters
    cond, params = _filter_sql(filters, [r.path for r in index.roots()] if filters and filters.under else [])
    with _snapshot(index):
        allowed = None
        if filters is not None:
            sql = f"SELECT DISTINCT f.hash FROM files f JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok'{cond}"
            allowed = [h for (h,) in index.conn.execute(sql, params)]
        codes = _codes(index)
        if codes is None:  # a small index: no codes yet
            return _rank(index, *_score(index, _segment_ids(index, allowed), q), k, cond, params)
        pos = codes.positions(allowed)
        if exact or (exact is None and len(pos) <= EXACT_MAX):
            return _rank(index, *_score(index, codes.ids[pos], q), k, cond, params)
        want = max(CANDIDATES, CANDIDATES_PER_FILE * k)
        while True:
            hits = _rank(index, *_score(index, codes.nearest(q, pos, want), q), k, cond, params)
            # Too few files among the candidates (long files, copies filtered out): widen, up to all of them.
            if len(hits) >= k or want >= len(pos):
                return hits
            want *= 4

@contextmanager
def _snapshot(index: "Index") -> Iterator[None]:
    """One read transaction, so a search sees one consistent state while a writer commits."""
    if index.conn.in_transaction:
        yield
        return
    index.conn.execute("BEGIN")
    try:
        yield
    finally:
        index.conn.execute("COMMIT")  # read only: nothing to keep or undo

# One copy of each index's codes per process, shared by all its connections (serve borrows one per thread), keyed
# by what changes whenever the searchable segments do: the version writers bump, the centre, the file itself.
_SHARED: dict[str, tuple[tuple, vec.Codes | None]] = {}


def _codes(index: "Index") -> vec.Codes | None:
    """The binary codes of all searchable segments: from memory, else the saved blob, else rebuilt from the rows."""
    meta = index._meta()
    centre, version = meta.get("centre"), meta.get("segments_version")
    try:
        inode = os.stat(index.path).st_ino  # a rebuilt index swapped in at the same path is another file
    except OSError:
        inode = None
    key = (version, inode, hash(centre) if isinstance(centre, bytes) else None)
    cached = _SHARED.get(str(index.path))
    if cached is not None and cached[0] == key:
        return cached[1]
    codes = None
    if isinstance(centre, bytes):
        saved = index.conn.execute("SELECT version, blob FROM codes_cache").fetchone()
        if saved is not None and saved[0] == version:
            codes = vec.Codes.from_bytes(saved[1])
        else:
            sql = f"SELECT id, hash, code FROM segments WHERE code IS NOT NULL AND {_DONE} ORDER BY id"
            codes = vec.Codes.from_rows(np.frombuffer(centre, np.float32), index.conn.execute(sql).fetchall())
    _SHARED[str(index.path)] = (key, codes)
    return codes


def _segment_ids(index: "Index", hashes: list[str] | None) -> list[int]:
    if hashes is None:
        return [i for (i,) in index.conn.execute(f"SELECT id FROM segments WHERE {_DONE}")]
    sql = "SELECT id FROM segments WHERE hash IN (SELECT value FROM json_each(?))"
    return [i for (i,) in index.conn.execute(sql, (json.dumps(hashes),))]

def _score(index: "Index", ids: list[int] | np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each segment to its closest query vector: (found ids (M,), scores (M,))."""
    found, scores = [], []
    for start in range(0, len(ids), 4096):  # bounded memory on exact scans of big indexes
        f, v = index._fetch(ids[start : start + 4096])
        found.append(f)
        # einsum, not `@`: waking BLAS threads for so small a product costs ~10 ms on a busy 2-core machine.
        scores.append(np.clip(np.einsum("md,qd->mq", v, q), -1, 1).max(axis=1, initial=-1.0))  # (M, Q) -> (M,)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found), np.concatenate(scores)

def _rank(index: "Index", ids: np.ndarray, scores: np.ndarray, k: int, cond: str, params: list) -> list[Hit]:
    """Group scored segments by file: walk segments best first until k files (copies included) pass the filters."""
    order = np.argsort(-scores, kind="stable")
    seen: set[str] = set()
    hits: list[Hit] = []
    for start in range(0, len(order), 256):
        block = order[start : start + 256]
        rows = index.conn.execute(
            'SELECT id, hash, start, "end" FROM segments WHERE id IN (SELECT value FROM json_each(?))',
            (ids_json(ids[block]),),
        )
        segment = {r[0]: r[1:] for r in rows}
        best: dict[str, tuple[float, float, float]] = {}  # hash -> (score, start, end), best first
        for i in block:
            hash, s, e = segment.get(int(ids[i]), (None, 0.0, 0.0))
            if hash is not None and hash not in seen:
                seen.add(hash)
                best[hash] = (float(scores[i]), s, e)
        sql = (
            "SELECT f.path, f.hash, f.tags, a.duration FROM files f JOIN audio a ON a.hash = f.hash "
            f"WHERE f.status = 'ok' AND f.hash IN (SELECT value FROM json_each(?)){cond}"
        )
        for path, hash, tags, duration in index.conn.execute(sql, [json.dumps(list(best)), *params]):
            score, s, e = best[hash]
            hits.append(Hit(path, score, s, e, duration, json.loads(tags), hash))
        # Every later segment scores no higher, so k files in hand are the k best.
        if len(hits) >= k:
            break
    hits.sort(key=lambda h: (-h.score, h.path))
    return hits[:k]


def _filter_sql(filters: Filters | None, roots: list[str]) -> tuple[str, list]:
    """SQL conditions on files f joined with audio a (each starting with AND), and their parameters.

    roots: the indexed folders, to find a folder given by its real path under a root indexed through a symlink.
    """
    if filters is None:
        return "", []
    conds, params = [], []
    if filters.under:
        folders = _under_folders(filters.under, roots)
        conds.append("(" + " OR ".join("f.path = ? OR substr(f.path, 1, ?) = ?" for _ in folders) + ")")
        params += [x for folder in folders for x in (folder, len(folder_prefix(folder)), folder_prefix(folder))]
    if filters.exts:
        exts = sorted({"." + e.casefold().lstrip(".") for e in filters.exts})
        conds.append("(" + " OR ".join("casefold(substr(f.path, -?)) = ?" for _ in exts) + ")")
        params += [x for e in exts for x in (len(e), e)]
    if filters.min_duration is not None:
        conds.append("a.duration >= ?")
        params.append(float(filters.min_duration))
    if filters.max_duration is not None:
        conds.append("a.duration <= ?")
        params.append(float(filters.max_duration))
    for key, value in (filters.tags or {}).items():
        # A tag value is a string or, as mutagen often gives, a list of strings: any element may match.
        conds.append(
            "EXISTS (SELECT 1 FROM json_each(f.tags) t WHERE casefold(t.key) = ? AND (casefold(t.value) = ? OR "
            "(t.type = 'array' AND EXISTS (SELECT 1 FROM json_each(t.value) e WHERE casefold(e.value) = ?))))"
        )
        params += [key.casefold(), str(value).casefold(), str(value).casefold()]
    return "".join(f" AND {c}" for c in conds), params


def _under_folders(folder: Path | str, roots: list[str]) -> list[str]:
    """Where files under folder are stored: it as given and as resolved, and, seen from a root indexed through a
    symlink, the same place under that root (paths are stored as walked, symlinks kept)."""
    given = norm_path(folder)
    real = os.path.realpath(given)
    found = {given, real}
    for root in roots:
        root_real = os.path.realpath(root)
        if root_real == root:
            continue
        if _within(real, root_real):
            found.add(norm_path(os.path.join(root, os.path.relpath(real, root_real))))
        elif _within(root_real, real):
            found.add(root)
    return sorted(found)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder_prefix(folder))
