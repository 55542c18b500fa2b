"""Groups of copies among many fingerprints, found by a bucketed look-up: files are compared only where they share
hashes of their points, never all pairs (100k files in well under a minute), each pair by audio.printmatch.linked.
"""

from collections.abc import Callable, Mapping

import numpy as np

from audiofind.audio.fingerprint import ONSET, TREND_STEP, Fingerprint, load
from audiofind.audio.printmatch import NEAR, linked

# group(): a file is indexed under the SKETCH smallest scrambled triplets of consecutive points (a bottom-k sketch:
# copies sharing most triplets share most of their sketch), and a small file under its pairs too
SKETCH = 128
FAN = 3
PAIR_FRAMES = 63
MAX_BUCKET = 256  # a hash shared by more files than this (a common tone) proposes no pairs
MIN_SHARED = 2  # hashes two files must share to be compared, or all of the smaller sketch (a steady tone has one)
SMALL = 64  # points: a file this small is indexed under its point pairs too, as triplets are few


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit scramble of each hash (splitmix64's finaliser), so that the smallest values are a fair sample."""
    h = (h.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return h * np.uint64(0x94D049BB133111EB)


def _distinct(h: np.ndarray) -> np.ndarray:
    h = np.sort(h)
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    return h[first]


def hashes(fp: "Fingerprint | bytes") -> np.ndarray:
    """The index keys of a fingerprint: the SKETCH smallest scrambled triplets of consecutive points (a point, the
    next two, their gaps); a small fingerprint adds all its pairs, as its few triplets may all be lost in a copy."""
    fp = load(fp)
    # keys forget a tone's trend, an onset's sub-frame place, and halve the frequency code: the look-up must
    # survive what the score forgives
    raw = fp.codes.astype(np.int64)
    t, c = fp.times.astype(np.int64), np.where(raw >= ONSET, TREND_STEP - 1, raw % TREND_STEP) >> 1
    keys = [np.zeros(0, np.uint64)]
    if len(t) >= 3:
        d1, d2 = t[1:-1] - t[:-2], t[2:] - t[1:-1]
        ok = (d1 <= PAIR_FRAMES) & (d2 <= PAIR_FRAMES)
        keys.append(_distinct(_mix((c[:-2] << 36 | c[1:-1] << 24 | c[2:] << 12 | d1 << 6 | d2)[ok]))[:SKETCH])
    if 0 < len(t) < SMALL:  # kept apart from the sketch, so that a copy just over SMALL still shares triplets
        for k in range(1, FAN + 1):
            dt = t[k:] - t[:-k]
            keys.append(_mix((1 << 62) | (c[:-k] << 18 | c[k:] << 6 | dt)[dt <= PAIR_FRAMES]))
    return _distinct(np.concatenate(keys))


def _candidates(per_file: list[np.ndarray]) -> np.ndarray:
    """Pairs (i < j) of files sharing MIN_SHARED hashes, or every hash of the smaller sketch, in buckets of at
    most MAX_BUCKET files: (K, 2)."""
    sizes = np.array([len(h) for h in per_file], np.int64)
    hs = np.concatenate(per_file) if per_file else np.zeros(0, np.uint64)
    owner = np.repeat(np.arange(len(per_file)), sizes)
    order = np.argsort(hs, kind="stable")
    hs, owner = hs[order], owner[order]
    starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]])) if len(hs) else np.zeros(0, np.int64)
    lengths = np.diff(np.append(starts, len(hs)))
    pairs = [np.zeros(0, np.int64)]
    for size in np.unique(lengths[(lengths >= 2) & (lengths <= MAX_BUCKET)]):
        first = starts[lengths == size]
        i, j = np.triu_indices(size, 1)
        a, b = owner[first[:, None] + i].ravel(), owner[first[:, None] + j].ravel()
        pairs.append(np.minimum(a, b) * len(per_file) + np.maximum(a, b))
    found, shared = np.unique(np.concatenate(pairs), return_counts=True)
    i, j = found // max(len(per_file), 1), found % max(len(per_file), 1)
    keep = shared >= np.minimum(MIN_SHARED, np.minimum(sizes[i], sizes[j]))
    return np.stack([i[keep], j[keep]], axis=1)


def group(
    fingerprints: Mapping[str, "Fingerprint | bytes"],
    threshold: float = NEAR,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """Sets of keys whose fingerprints are linked by similarity >= threshold, transitively; largest first.

    Only pairs that share MIN_SHARED hashes (or the whole of a sketch smaller than that) are compared: an inverted
    index, never all pairs, each hash in a bucket of at most MAX_BUCKET files. progress(done, total) is called
    as candidate pairs are scored.
    """
    keys = sorted(fingerprints)  # one order whatever the mapping's: the result cannot depend on it
    prints = [load(fingerprints[k]) for k in keys]
    pairs = _candidates([hashes(p) for p in prints])
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for done, (i, j) in enumerate(pairs.tolist(), 1):
        a, b = root(i), root(j)
        if a != b and linked(prints[i], prints[j], threshold):
            parent[max(a, b)] = min(a, b)
        if progress and (done % 1000 == 0 or done == len(pairs)):
            progress(done, len(pairs))
    sets: dict[int, list[str]] = {}
    for i, k in enumerate(keys):
        sets.setdefault(root(i), []).append(k)
    return sorted((s for s in sets.values() if len(s) > 1), key=lambda s: (-len(s), s))
