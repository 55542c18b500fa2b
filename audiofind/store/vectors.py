"""Vector helpers for the store: normalising, float32 blobs, binary codes, and AudioCLIP-like synthetic data.

Pure NumPy, no database: `store.py` decides what is kept where.
"""

import io
from dataclasses import dataclass

import numpy as np

# numpy >= 2.0 counts bits natively; the table is the fallback for older versions.
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32, shape (N, D); refuses zero or non-finite rows."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if v.ndim != 2:
        raise ValueError(f"Expected vectors of shape (N, D), got {v.shape}.")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("Vectors must be finite and non-zero to be normalised.")
    return (v / norms).astype(np.float32)


def to_blob(vector: np.ndarray) -> bytes:
    """One vector as the float32 bytes sqlite-vec stores."""
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """float32 blobs back into a (N, dim) array."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


def binary_codes(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Sign bits of the centred vectors, packed and zero-padded to whole uint64 words: (N, D) -> (N, ceil(D/64))."""
    bits = np.packbits(np.atleast_2d(vectors) - centre > 0, axis=1)  # (N, ceil(D/8)) uint8
    pad = -bits.shape[1] % 8
    if pad:
        bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.ascontiguousarray(bits).view(np.uint64)


def hamming(words: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distance of every code to one query code: (W, N) word-major and (W,) uint64 -> (N,) uint16."""
    # Word by word over contiguous rows is 4x faster than row by row: ~1.2 ms for 100k codes of 1024 bits.
    distance = np.zeros(words.shape[1], dtype=np.uint16)
    for w in range(words.shape[0]):
        distance += _popcount(words[w] ^ query[w])
    return distance


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


@dataclass(frozen=True)
class Codes:
    """The binary codes of every segment, held in memory for candidate search."""

    centre: np.ndarray  # (D,) float32, subtracted before taking signs
    ids: np.ndarray  # (N,) segment ids
    hash_of: np.ndarray  # (N,) index into hashes
    hashes: list[str]
    words: np.ndarray  # (W, N) uint64, word-major

    @classmethod
    def from_rows(cls, centre: np.ndarray, rows: list[tuple[int, str, bytes]]) -> "Codes":
        """Build from (segment id, hash, code bytes) rows as the store keeps them."""
        number: dict[str, int] = {}
        hash_of = np.fromiter((number.setdefault(h, len(number)) for _, h, _ in rows), np.int64, len(rows))
        ids = np.fromiter((i for i, _, _ in rows), np.int64, len(rows))
        n_words = -(-len(centre) // 64)
        codes = np.frombuffer(b"".join(c for _, _, c in rows), np.uint64).reshape(len(rows), n_words)
        return cls(centre, ids, hash_of, list(number), np.ascontiguousarray(codes.T))

    def to_bytes(self) -> bytes:
        """The assembled arrays as one blob, so a cold process loads them with one read instead of a rebuild."""
        out = io.BytesIO()
        np.savez(out, centre=self.centre, ids=self.ids, hash_of=self.hash_of, words=self.words,
                 hashes=np.array(self.hashes, dtype="S64"))  # fmt: skip
        return out.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Codes":
        """Codes saved by to_bytes."""
        a = np.load(io.BytesIO(blob))
        hashes = [h.decode() for h in a["hashes"].tolist()]
        return cls(a["centre"], a["ids"], a["hash_of"], hashes, np.ascontiguousarray(a["words"]))

    def positions(self, hashes: list[str] | None) -> np.ndarray:
        """Rows of the segments of these contents (all rows for None)."""
        if hashes is None:
            return np.arange(len(self.ids))
        index = {h: n for n, h in enumerate(self.hashes)}
        return np.flatnonzero(np.isin(self.hash_of, [index[h] for h in hashes if h in index]))

    def nearest(self, queries: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
        """Segment ids of the n codes among positions nearest to each query vector (Q, D), merged."""
        words = self.words if len(positions) == len(self.ids) else self.words[:, positions]
        found = [nearest(hamming(words, q), n) for q in binary_codes(queries, self.centre)]
        return self.ids[positions[np.unique(np.concatenate(found))]]


def nearest(distances: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n smallest distances, in no particular order."""
    if n >= len(distances):
        return np.arange(len(distances))
    return np.argpartition(distances, n - 1)[:n]


@dataclass(frozen=True)
class Synthetic:
    """A synthetic library: segment vectors, the file each belongs to, and queries."""

    vectors: np.ndarray  # (N, D) float32, unit rows
    file_of: np.ndarray  # (N,) int64, file number of each segment, files contiguous
    queries: np.ndarray  # (Q, D) float32, unit rows


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def synthetic(segments: int, dim: int, queries: int = 50, seed: int = 0) -> Synthetic:
    """AudioCLIP-like data: a big shared direction, coarse and fine clusters, per-file and per-segment variation."""
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal(dim, dtype=np.float32))
    coarse = _unit(rng.standard_normal((20, dim), dtype=np.float32))
    fine = _unit(rng.standard_normal((400, dim), dtype=np.float32))
    coarse_of_fine = rng.integers(0, len(coarse), len(fine))
    # 1 to 9 segments a file, so grouping by file matters; the last file is cut to fit.
    sizes = rng.integers(1, 10, segments)
    file_of = np.repeat(np.arange(segments), sizes)[:segments]
    n_files = int(file_of[-1]) + 1
    fine_of_file = rng.integers(0, len(fine), n_files)
    # Weights chosen so unrelated segments have cosine ~0.63, like real embeddings that share one big direction.
    group = 0.5 * coarse[coarse_of_fine] + 0.4 * fine  # (400, D)
    x = 0.35 * _unit(rng.standard_normal((n_files, dim), dtype=np.float32))[file_of]
    x += common + group[fine_of_file][file_of]
    x += 0.3 * _unit(rng.standard_normal((segments, dim), dtype=np.float32))
    # Half the queries are like text (a concept plus noise), half like a stored sound played back differently.
    n_text = queries // 2
    text = common + group[rng.integers(0, len(fine), n_text)]
    text += 0.6 * _unit(rng.standard_normal((n_text, dim), dtype=np.float32))
    sound = _unit(x[rng.integers(0, segments, queries - n_text)])
    sound += 0.2 * _unit(rng.standard_normal((queries - n_text, dim), dtype=np.float32))
    return Synthetic(normalize(x), file_of.astype(np.int64), normalize(np.concatenate([text, sound])))


def top_files(vectors: np.ndarray, file_of: np.ndarray, query: np.ndarray, k: int = 10) -> list[int]:
    """Exact ground truth: the k files whose best segment has the highest cosine to query."""
    scores = vectors @ query  # (N,)
    best = np.full(int(file_of.max()) + 1, -np.inf, dtype=np.float32)
    np.maximum.at(best, file_of, scores)
    return [int(i) for i in np.argsort(-best, kind="stable")[:k]]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    """Mean fraction of each true list that was found (recall@k with k = len(true list))."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))
