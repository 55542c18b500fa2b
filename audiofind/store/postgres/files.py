"""Files as the protocol sees them on PostgreSQL: local paths in and out, rows below named roots in the tables.

Each function runs inside the caller's transaction where it writes (store.PostgresStore opens it and holds the
claims); a path is turned into (root, path below it) by roots.Places, and back.
"""

import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from audiofind.store.postgres import fulltext, rows
from audiofind.store.postgres.connection import Db
from audiofind.store.postgres.roots import Places, Root, to_relpath
from audiofind.store.records import AudioRow, FileEntry, FileRow, ModelBinding, norm_path
from audiofind.store.scope import within


def place(places: Places, path: Path | str, root: Path | str | None = None) -> tuple[Root, str]:
    """(root, relpath) where a file written at path goes: under root (mounted now if it is new here)."""
    p = norm_path(path)
    r = places.ensure(str(root) if root is not None else str(Path(p).parent))
    if r.mount is None or not within(p, r.mount):
        raise ValueError(f"{p} is not inside its root {root}.")
    return r, to_relpath(p, r.mount)


def get(db: Db, places: Places, path: Path | str) -> FileRow | None:
    """The stored row for path, or None."""
    at = places.locate(str(path))
    found = rows.file_rows(db, places, "root_id = %s AND relpath = %s", (at[0].id, at[1])) if at else []
    return found[0][1] if found else None


def under(db: Db, places: Places, roots: Iterable[Path | str]) -> list[FileRow]:
    """Every stored file at or below any of roots (local folders or `NAME:` prefixes), ordered by path."""
    where, params = [], []
    for root in roots:
        at = places.named(str(root))
        for root_id, prefix in [(at[0].id, at[1])] if at else places.prefixes(str(root)):
            where.append("(root_id = %s AND (%s = '' OR relpath = %s OR starts_with(relpath, %s)))")
            params += [root_id, prefix, prefix, prefix + "/"]
    if not where:
        return []
    found = rows.file_rows(db, places, " OR ".join(where), params)
    return sorted((r for _, r in found), key=lambda r: r.path)


def entry(db: Db, places: Places, file_id: int) -> FileEntry | None:
    """The ok file with this id, or None."""
    row = db.one(
        "SELECT f.id, f.root_id, f.relpath, f.size, f.mtime_ns, f.hash, a.duration FROM files f "
        "JOIN audio a ON a.hash = f.hash WHERE f.id = %s AND f.status = 'ok'",
        (int(file_id),),
    )
    if row is None:
        return None
    id, root_id, rel, size, mtime_ns, hash, duration = row
    root = places.root(root_id)
    return FileEntry(id, root.path(rel), root.label, size, mtime_ns, hash, duration)


def ids(db: Db, places: Places, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
    """path -> (file id, its root) for the paths that are in the index."""
    spots = {(at[0].id, at[1]): p for p in paths if (at := places.locate(str(p)))}
    if not spots:
        return {}
    sql = (
        "SELECT f.root_id, f.relpath, f.id FROM files f JOIN unnest(%s::int[], %s::text[]) AS s(root_id, relpath) "
        "ON f.root_id = s.root_id AND f.relpath = s.relpath"
    )
    found = db.execute(sql, ([r for r, _ in spots], [p for _, p in spots]))
    return {spots[(r, rel)]: (i, places.root(r).label) for r, rel, i in found}


def add_segments(
    db: Db, places: Places, binding: ModelBinding, hash: str, path: str, audio: AudioRow,
    segments: list[tuple[float, float]], vectors: np.ndarray,
) -> None:  # fmt: skip
    """The next windows of a content still being embedded (the caller holds its claim)."""
    root, rel = places.locate(path) or place(places, path)
    rows.lock_content(db, hash)
    if not db.one("SELECT 1 FROM audio WHERE hash = %s", (hash,)):
        rows.add_audio(db, replace(audio, hash=hash))
        db.execute("INSERT INTO partial (hash, root_id, relpath) VALUES (%s, %s, %s)", (hash, root.id, rel))
    elif not rows.is_partial(db, hash):
        raise ValueError(f"Content {hash} is complete already; it takes no more segments.")
    rows.add_segments(db, binding, hash, segments, vectors)
    db.execute("UPDATE audio SET duration = %s WHERE hash = %s", (float(audio.duration), hash))


def add(
    db: Db, places: Places, row: FileRow, audio: AudioRow | None, segments: list[tuple[float, float]] | None,
    vectors: np.ndarray | None,
) -> bool:  # fmt: skip
    """One ok file, its content added or ended if new or unfinished; True if it ended an unfinished content."""
    if row.hash is None:
        raise ValueError("add_file needs a content hash; use record_failure for files that failed.")
    root, rel = place(places, row.path, row.root)
    facts, (stored, ended) = rows.lock_and_read(db, row.hash)
    binding = ModelBinding.from_meta(facts)
    if ended or not stored:
        if binding is None:
            raise ValueError("Bind a model (bind_model) before adding vectors.")
        if audio is None or segments is None or vectors is None or (not ended and audio.hash != row.hash):
            raise ValueError(
                f"Content {row.hash} needs its AudioRow, segments and vectors (its last ones if unfinished)."
            )
        if ended:
            rows.set_facts(db, replace(audio, hash=row.hash))
            db.execute("DELETE FROM partial WHERE hash = %s", (row.hash,))
        else:
            rows.add_audio(db, audio)
        rows.add_segments(db, binding, row.hash, segments, vectors, facts)
    if audio is not None and audio.fingerprint is not None:  # with the content, in the same transaction
        rows.set_fingerprints(db, {row.hash: audio.fingerprint})
    rows.upsert(db, root, rel, FileRow(row.path, row.root, row.size, row.mtime_ns, row.hash, "ok", row.error, row.tags))
    if binding is not None:
        rows.freeze_centre(db, binding.dim, facts)
    return ended


def fail(db: Db, places: Places, path: Path | str, root: Path | str, size: int, mtime_ns: int, reason: str) -> None:
    """Remember that path could not be indexed, and why."""
    r, rel = place(places, path, root)
    rows.upsert(db, r, rel, FileRow(str(path), str(root), size, mtime_ns, None, "failed", reason, {}))


def move(db: Db, places: Places, old: Path | str, new: Path | str, root: Path | str, size: int, mtime_ns: int) -> None:
    """Give a stored file its new path, keeping its vectors; a file already stored at new is replaced."""
    at = places.locate(str(old))
    r, rel = place(places, new, root)
    found = db.one(
        "SELECT f.id, f.status, f.tags, a.container, a.codec FROM files f LEFT JOIN audio a ON a.hash = f.hash "
        "WHERE f.root_id = %s AND f.relpath = %s FOR UPDATE OF f",
        (at[0].id, at[1]) if at else (0, ""),
    )
    if found is None:
        raise ValueError(f"{norm_path(old)} is not in the index.")
    if at is not None and (at[0].id, at[1]) != (r.id, rel):
        rows.remove(db, [(r.id, rel)])
    id, status, tags, container, codec = found
    words, n, terms = fulltext.columns(rel, r.label, tags, container, codec) if status == "ok" else (None, 0, None)
    db.execute(
        "UPDATE files SET root_id = %s, relpath = %s, size = %s, mtime_ns = %s, indexed_at = %s, words = %s, "
        "n_words = %s, terms = %s::tsvector WHERE id = %s",
        (r.id, rel, int(size), int(mtime_ns), time.time(), words, n, terms, id),
    )


def remove(db: Db, places: Places, paths: Iterable[Path | str]) -> int:
    """Forget these files (never those under a root this machine does not mount); how many were stored."""
    spots = [(a[0].id, a[1]) for p in paths if (a := places.locate(str(p))) and a[0].mount is not None]
    return rows.remove(db, spots)
