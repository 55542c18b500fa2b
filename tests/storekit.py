"""Backend-neutral store checks: open either backend, a content snapshot, the consistency invariants, a workload.

What can be asked through the protocol is asked through it (dump, search, stats); the few facts only SQL can see
(unfinished contents, vectors without segments) are read with each backend's own SQL here, in the tests.
"""

from pathlib import Path

import numpy as np

from audiofind.store import AudioRow, FileRow, ModelBinding, Store, open_store

BACKENDS = ["sqlite", "postgres"]


def where(store: Store) -> str:
    """What opens the same index again: the SQLite file, or the PostgreSQL URL with its password."""
    return getattr(store, "url", None) or str(store.path)  # type: ignore[attr-defined]


def reopen(store: Store) -> Store:
    """Another connection to the same index."""
    return open_store(where(store))


def is_postgres(store: Store) -> bool:
    return hasattr(store, "url")


def sql(store: Store, query: str) -> list[tuple]:
    """Rows of a query in the store's own SQL (tests only)."""
    if is_postgres(store):
        return [tuple(r) for r in store.db.execute(query).fetchall()]  # type: ignore[attr-defined]
    return [tuple(r) for r in store.conn.execute(query).fetchall()]  # type: ignore[attr-defined]


def partials(store: Store) -> list[str]:
    """Hashes of the unfinished contents."""
    return sorted(h for (h,) in sql(store, "SELECT hash FROM partial"))


def snapshot(store: Store) -> dict:
    """Everything the index holds that a run decides, by content (ids and times left out), vectors bit for bit."""
    out: dict = {"contents": {}, "files": {}, "partial": partials(store)}
    for portion in store.dump():
        if portion.binding is not None or not (portion.contents or portion.files):
            out["binding"] = portion.binding
            out["centre"] = None if portion.centre is None else portion.centre.tobytes()
            out["roots"] = sorted((r.name, r.path, r.local) for r in portion.roots)
        for c in portion.contents:
            out["contents"][c.audio.hash] = (c.audio, tuple(c.segments), np.asarray(c.vectors, np.float32).tobytes())
        for f in portion.files:
            r = f.row
            out["files"][r.path] = (f.root, f.relpath, r.size, r.mtime_ns, r.hash, r.status, r.error, r.tags)
    return out


def check_consistent(store: Store) -> None:
    """Every ok file has its whole content; no content, segment or vector without an owner; nothing unfinished is
    searchable; the names index holds exactly the ok files."""
    snap = snapshot(store)
    unfinished = set(snap["partial"])
    for path, (_, _, _, _, hash, status, _, _) in snap["files"].items():
        if status == "ok":
            assert hash in snap["contents"], f"{path}: its content {hash} is missing or unfinished"
            assert hash not in unfinished, f"{path} points at an unfinished content"
    referenced = {f[4] for f in snap["files"].values() if f[4]}
    assert not (set(snap["contents"]) - referenced), "a complete content no file uses"
    audio = {h for (h,) in sql(store, "SELECT hash FROM audio")}
    assert audio == set(snap["contents"]) | unfinished, "audio rows that are neither complete nor unfinished"
    for hash, (_, spans, raw) in snap["contents"].items():
        v = np.frombuffer(raw, np.float32)
        assert spans and spans[0][0] == 0.0 and len(v) and np.all(np.isfinite(v)), f"{hash} is missing segments"
    assert not sql(store, "SELECT id FROM segments WHERE hash NOT IN (SELECT hash FROM audio)")
    if is_postgres(store):
        ok = sql(store, "SELECT id FROM files WHERE status = 'ok' AND (terms IS NULL OR words IS NULL)")
        assert not ok, "an ok file missing from the names index"
        assert not sql(store, "SELECT id FROM files WHERE status = 'failed' AND terms IS NOT NULL")
    else:
        names = sql(store, "SELECT rowid FROM file_words ORDER BY rowid")
        assert names == sql(store, "SELECT id FROM files WHERE status = 'ok' ORDER BY id")
        segments = {i for (i,) in sql(store, "SELECT id FROM segments")}
        vectors = {i for (i,) in sql(store, "SELECT rowid FROM vectors")} if store.model() else set()
        assert segments == vectors, "segments without vectors or vectors without segments"
    if store.model() is not None and snap["files"]:
        hits = store.search(np.ones(store.model().dim), k=1000, exact=True)  # type: ignore[union-attr]
        assert not {h.hash for h in hits} & unfinished, "an unfinished content is searchable"


# A small library written through the protocol alone, as an indexer would: resumable and idempotent, so running it
# again after any interruption ends where an uninterrupted run ends.
D = 16
BINDING = ModelBinding("tiny", "ab" * 32, D, 1.0, 0.5)
CHUNK = 3  # windows a long content commits at a time


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D))


def _put(ix: Store, root: Path, name: str, seed: int, n: int, tags: dict | None = None) -> None:
    """Store root/name with content seed (n windows) unless it is there already; resume an unfinished content."""
    path, hash = root / name, f"{seed:064x}"
    row = ix.get_file(path)
    if row is not None and row.hash == hash:
        return
    file = FileRow(str(path), str(root), 100 + seed, seed, hash, tags=tags or {})
    if ix.has_audio(hash):
        ix.add_file(file)
        return
    v = _vectors(seed, n)
    spans = [(0.5 * i, 0.5 * i + 1.0) for i in range(n)]
    done = ix.partial_segments(hash)
    while n - done > CHUNK:  # a long one: a chunk at a time, hidden until the last
        ix.add_segments(hash, str(path), AudioRow(hash, 0.5 * (done + CHUNK), 44100, 1), spans[done : done + CHUNK],
                        v[done : done + CHUNK])  # fmt: skip
        done += CHUNK
    ix.add_file(file, AudioRow(hash, 0.5 * n + 0.5, 44100, 1), spans[done:], v[done:])


def workload(ix: Store, root: Path) -> None:
    """Bind, add files (copies, long ones, tags), then move, change, remove, fail, and finish as a sync does."""
    if ix.model() is None:
        ix.bind_model(BINDING)
    for i in range(6):
        _put(ix, root, f"d{i % 2}/s{i}.wav", seed=i, n=1 + i % 3, tags={"title": f"Door Creak {i}"} if i % 2 else None)
    _put(ix, root, "long/a.wav", seed=20, n=8)
    _put(ix, root, "d0/s1-copy.wav", seed=1, n=2)
    if ix.get_file(root / "d0/s0.wav") is not None:
        ix.move_file(root / "d0/s0.wav", root / "d1/sub/s0-moved.wav", root, 100, 0)
    _put(ix, root, "d0/s2.wav", seed=99, n=2)  # changed content: the old one goes
    ix.remove_files([root / "d1/s3.wav"])
    _put(ix, root, "long/b.wav", seed=21, n=7)
    ix.record_failure(root / "new/bad.flac", root, 5, 5, "Invalid data found when processing input.")
    ix.drop_partials()
    ix.touch_root(root)
    ix.optimize()
