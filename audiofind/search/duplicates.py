"""Copies in a library: exact ones (the same content hash) and near ones (the same sound in another format, bit rate,
sample rate, or trimmed by a few milliseconds: whole-file vectors closer than a threshold). Never deletes anything.

A file's whole-file vector is the unit mean of its segment vectors, already in the index, so nothing is embedded.
A group's `wasted` bytes are what keeping only its largest file would free.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiofind.errors import UsageError
from audiofind.store import Store
from audiofind.store import vectors as vec

NEAR = 0.02  # cosine distance; see the README's duplicates section for how it was measured
BLOCK = 2048  # contents compared at a time: bounded memory on large libraries


@dataclass(frozen=True)
class Group:
    """Files holding the same sound: exactly (same hash) or nearly (close whole-file vectors)."""

    kind: str  # "exact" | "near"
    paths: list[str]
    bytes: int  # all of them together
    wasted: int  # freed by keeping only the largest

    def as_dict(self) -> dict:
        """The object `duplicates --json` prints."""
        return asdict(self)


def find(index: Store, paths: list[Path] | list[str] | None = None, near: float | None = NEAR) -> list[Group]:
    """Exact and near copies among the ok files under paths (the whole index when none), largest waste first.

    near is the cosine distance under which two contents count as one sound; 0 or None lists exact copies only.
    """
    if near is not None and not 0 <= near < 2:
        raise UsageError(f"--near is a cosine distance from 0 to 2, got {near:g}.")
    rows = index.files_under(paths or [r.path for r in index.roots()])
    by_hash: dict[str, list[tuple[str, int]]] = {}
    for r in rows:
        if r.status == "ok" and r.hash:
            by_hash.setdefault(r.hash, []).append((r.path, r.size))
    groups = [_group("exact", files) for files in by_hash.values() if len(files) > 1]
    if near:  # 0 (or None): exact copies only
        for hashes in _near_sets(index, list(by_hash), near):
            groups.append(_group("near", [f for h in hashes for f in by_hash[h]]))
    return sorted(groups, key=lambda g: (-g.wasted, g.kind, g.paths))


def whole_file_vectors(index: Store, hashes: list[str]) -> np.ndarray:
    """Each content's unit mean segment vector, (len(hashes), D)."""
    means = [index.segment_vectors(h)[1].mean(axis=0) for h in hashes]
    return vec.normalize(np.stack(means)) if means else np.zeros((0, 0), np.float32)


def _near_sets(index: Store, hashes: list[str], near: float) -> list[list[str]]:
    """Sets of two or more contents linked by cosine distance under near (transitively: a union-find)."""
    if len(hashes) < 2:
        return []
    v = whole_file_vectors(index, hashes)
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(v), BLOCK):
        close = np.argwhere(1.0 - v[start : start + BLOCK] @ v.T < near)
        for i, j in close:
            a, b = root(int(i) + start), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    sets: dict[int, list[str]] = {}
    for i, h in enumerate(hashes):
        sets.setdefault(root(i), []).append(h)
    return [s for s in sets.values() if len(s) > 1]


def _group(kind: str, files: list[tuple[str, int]]) -> Group:
    files = sorted(files)
    total = sum(size for _, size in files)
    return Group(kind, [p for p, _ in files], total, total - max(size for _, size in files))
