"""Rows of files, audio, segments and vectors: the reads and the writes the store's transactions are made of.

Every function here runs inside the caller's transaction (store.SqliteStore opens it); none commits. Segment ids
are the rowids of the vec0 `vectors` table, written together with them.
"""

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import apsw
import numpy as np

from audiofind.store import vectors as vec
from audiofind.store.records import AudioRow, FileRow, Hit, ModelBinding, folder_prefix, norm_path
from audiofind.store.sqlite import meta
from audiofind.store.sqlite.typed import fetch, scalar

log = logging.getLogger(__name__)

CENTRE_AFTER = 1024  # segments stored before the centre of the binary codes is frozen
_COLUMNS = "path, root, size, mtime_ns, hash, status, error, tags, indexed_at"


def rows(conn: apsw.Connection, where: str, params: tuple | list) -> list[FileRow]:
    """FileRows matching an SQL condition on `files`."""
    sql = f"SELECT {_COLUMNS} FROM files WHERE {where}"
    return [
        FileRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8]) for r in conn.execute(sql, params)
    ]


def under(conn: apsw.Connection, roots: Iterable[Path | str]) -> list[FileRow]:
    """Every stored file at or below any of roots, ordered by path."""
    where, params = [], []
    for root in roots:
        where.append("path = ? OR substr(path, 1, ?) = ?")
        prefix = folder_prefix(norm_path(root))
        params += [norm_path(root), len(prefix), prefix]
    if not where:
        return []
    return rows(conn, " OR ".join(f"({w})" for w in where) + " ORDER BY path", params)


def is_partial(conn: apsw.Connection, hash: str) -> bool:
    """Whether this content is still being embedded."""
    return conn.execute("SELECT 1 FROM partial WHERE hash = ?", (hash,)).fetchone() is not None


def has_audio(conn: apsw.Connection, hash: str) -> bool:
    """Whether complete vectors for this content are stored."""
    sql = "SELECT 1 FROM audio WHERE hash = ? AND hash NOT IN (SELECT hash FROM partial)"
    return conn.execute(sql, (hash,)).fetchone() is not None


def add_audio(conn: apsw.Connection, audio: AudioRow) -> None:
    """The audio row of a new content (its segments follow)."""
    sql = (
        "INSERT INTO audio (hash, duration, sample_rate, channels, container, codec, bits) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    conn.execute(sql, (audio.hash, float(audio.duration), int(audio.sample_rate), int(audio.channels), *_facts(audio)))


def set_facts(conn: apsw.Connection, audio: AudioRow) -> None:
    """Record what the decoder read of a content that was begun before (duration, rate, channels, format)."""
    sql = "UPDATE audio SET duration = ?, sample_rate = ?, channels = ?, container = ?, codec = ?, bits = ? WHERE hash = ?"
    conn.execute(sql, (float(audio.duration), int(audio.sample_rate), int(audio.channels), *_facts(audio), audio.hash))


def _facts(audio: AudioRow) -> tuple[str | None, str | None, int | None]:
    return audio.container or None, audio.codec or None, None if audio.bits is None else int(audio.bits)


# What a search returns of each file, for hit() to read.
HIT_COLUMNS = "f.path, f.hash, f.tags, a.duration, a.container, a.codec, a.sample_rate, a.bits, a.channels, f.root"


def hit(row: tuple, score: float, start: float | None, end: float | None, roots: dict[str, bool]) -> Hit:
    """The Hit of a row of HIT_COLUMNS (start and end None: the whole file); roots caches which roots are there."""
    path, hash, tags, duration, container, codec, rate, bits, channels, root = row
    if root not in roots:
        roots[root] = os.path.isdir(root)
    whole = (0.0, float(duration)) if start is None or end is None else (start, end)
    return Hit(
        path,
        score,
        *whole,
        float(duration),
        json.loads(tags),
        hash,
        container,
        codec,
        rate,
        bits,
        channels,
        roots[root],
    )


def add_segments(
    conn: apsw.Connection, binding: ModelBinding, hash: str, segments: list[tuple[float, float]], vectors: np.ndarray
) -> None:
    """Segments of a content and their vectors (normalised here), coded once the index has a centre."""
    v = vec.normalize(vectors) if len(segments) else np.zeros((0, binding.dim), np.float32)
    if v.shape != (len(segments), binding.dim):
        raise ValueError(f"Expected vectors of shape ({len(segments)}, {binding.dim}), got {v.shape}.")
    centre = meta.read(conn).get("centre")
    codes = vec.binary_codes(v, np.frombuffer(centre, np.float32)) if isinstance(centre, bytes) else None
    for i, (start, end) in enumerate(segments):
        code = codes[i].tobytes() if codes is not None else None
        sql = 'INSERT INTO segments (hash, start, "end", code) VALUES (?, ?, ?, ?)'
        conn.execute(sql, (hash, float(start), float(end), code))
        sql = "INSERT INTO vectors (rowid, embedding) VALUES (?, ?)"
        conn.execute(sql, (conn.last_insert_rowid(), vec.to_blob(v[i])))
    if len(segments):
        meta.touched(conn)


def upsert(conn: apsw.Connection, row: FileRow) -> None:
    """Insert or replace the row at row.path; a content no file references any more is collected."""
    path = norm_path(row.path)
    old = conn.execute("SELECT hash FROM files WHERE path = ?", (path,)).fetchone()
    tags_json = json.dumps(row.tags, ensure_ascii=False, sort_keys=True)
    conn.execute(
        f"""INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(path) DO UPDATE SET root = excluded.root, size = excluded.size, mtime_ns = excluded.mtime_ns,
             hash = excluded.hash, status = excluded.status, error = excluded.error, tags = excluded.tags,
             indexed_at = excluded.indexed_at""",
        (path, norm_path(row.root), int(row.size), int(row.mtime_ns), row.hash, row.status, row.error, tags_json,
         time.time()),
    )  # fmt: skip
    if old and old[0] and old[0] != row.hash:
        collect(conn, [old[0]])


def remove(conn: apsw.Connection, paths: list[str]) -> int:
    """Delete the files at paths and collect their contents; how many were stored."""
    sql = "DELETE FROM files WHERE path IN (SELECT value FROM json_each(?)) RETURNING hash"
    found = fetch(conn, sql, (json.dumps(paths),))
    collect(conn, {h for (h,) in found if h})
    return len(found)


def collect(conn: apsw.Connection, hashes: Iterable[str]) -> None:
    """Drop the audio, segments and vectors of hashes that no file and no unfinished content references."""
    referenced = "SELECT 1 FROM files WHERE hash = ?1 UNION ALL SELECT 1 FROM partial WHERE hash = ?1"
    orphans = [h for h in hashes if not conn.execute(referenced, (h,)).fetchone()]
    if not orphans:
        return
    among = (json.dumps(orphans),)
    ids = [i for (i,) in conn.execute("SELECT id FROM segments WHERE hash IN (SELECT value FROM json_each(?))", among)]
    conn.executemany("DELETE FROM vectors WHERE rowid = ?", ((i,) for i in ids))
    conn.execute("DELETE FROM segments WHERE hash IN (SELECT value FROM json_each(?))", among)
    conn.execute("DELETE FROM fingerprints WHERE hash IN (SELECT value FROM json_each(?))", among)
    conn.execute("DELETE FROM audio WHERE hash IN (SELECT value FROM json_each(?))", among)
    meta.touched(conn)
    log.debug("dropped %d unreferenced contents (%d segments)", len(orphans), len(ids))


def fetch_vectors(conn: apsw.Connection, ids: list[int] | np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of these segment ids in order: (found ids (M,), vectors (M, D)); missing ids are skipped."""
    # One point query per id: 2.5x faster than `rowid IN (...)`, which vec0 0.1.9 does not turn into lookups.
    found, blobs = [], []
    for i in ids:
        row = conn.execute("SELECT embedding FROM vectors WHERE rowid = ?", (int(i),)).fetchone()
        if row is not None:
            found.append(int(i))
            blobs.append(row[0])
    return np.array(found, dtype=np.int64), vec.from_blobs(blobs, dim)


def segment_vectors(conn: apsw.Connection, hash: str, dim: int) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
    found = fetch(conn, 'SELECT id, start, "end" FROM segments WHERE hash = ? ORDER BY start, id', (hash,))
    _, v = fetch_vectors(conn, [i for i, _, _ in found], dim)  # in the order asked: written together
    return [(start, end) for _, start, end in found], v


def freeze_centre(conn: apsw.Connection, dim: int) -> bool:
    """Once the index is big enough, fix the centre of the binary codes and code every segment; True if it did."""
    if "centre" in meta.read(conn):
        return False
    if scalar(conn, "SELECT count(*) FROM segments") < CENTRE_AFTER:
        return False
    ids = [i for (i,) in conn.execute("SELECT id FROM segments ORDER BY id")]
    found, v = fetch_vectors(conn, ids, dim)
    centre = v.mean(axis=0).astype(np.float32)  # (D,)
    codes = vec.binary_codes(v, centre)
    conn.executemany("UPDATE segments SET code = ? WHERE id = ?", ((c.tobytes(), int(i)) for c, i in zip(codes, found)))
    conn.execute("INSERT INTO meta (key, value) VALUES ('centre', ?)", (centre.tobytes(),))
    meta.touched(conn)
    return True


def counts(conn: apsw.Connection) -> dict:
    """What `status` counts of the files and contents stored, with the failures and warnings by path."""
    one = lambda sql: scalar(conn, sql)
    listed = lambda status: list(conn.execute(f"SELECT path, error FROM files WHERE {status} ORDER BY path"))
    return {
        "files": one("SELECT count(*) FROM files"),
        "ok": one("SELECT count(*) FROM files WHERE status = 'ok'"),
        "failed": one("SELECT count(*) FROM files WHERE status = 'failed'"),
        "audio": one("SELECT count(*) FROM audio"),
        "segments": one("SELECT count(*) FROM segments"),
        "audio_seconds": one("SELECT coalesce(sum(a.duration), 0.0) FROM files f JOIN audio a ON a.hash = f.hash"),
        "failures": listed("status = 'failed'"),
        "warnings": listed("status = 'ok' AND error IS NOT NULL"),
    }
