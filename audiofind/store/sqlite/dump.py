"""A whole SQLite index read out in portions, and portions written into an empty one (`db copy`), bit for bit.

Vectors travel as the float32 rows stored, never normalised again (normalising a unit vector may move its last
bit); file ids are kept, so ties in the names ranking (the file indexed first) and serve's file ids stay as they
were. Unfinished contents stay behind: the next `index` embeds them again.
"""

import json
import os
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

import apsw
import numpy as np

from audiofind.store import vectors as vec
from audiofind.store.records import AudioRow, Content, FileRow, ModelBinding, PlacedFile, Portion, RootRow
from audiofind.store.scope import within
from audiofind.store.sqlite import files, meta

_FILES = "id, path, root, size, mtime_ns, hash, status, error, tags, indexed_at"


def dump(conn: apsw.Connection, binding: ModelBinding | None, roots: list[RootRow], batch: int) -> Iterator[Portion]:
    """Portions of the whole index, for another store's load: binding, centre and roots, contents, files."""
    centre = meta.read(conn).get("centre")
    yield Portion(binding, np.frombuffer(centre, np.float32).copy() if isinstance(centre, bytes) else None, roots)
    if binding is None:
        return
    hashes = [
        h for (h,) in conn.execute("SELECT hash FROM audio WHERE hash NOT IN (SELECT hash FROM partial) ORDER BY hash")
    ]
    for start in range(0, len(hashes), batch):
        yield Portion(contents=[_content(conn, h, binding.dim) for h in hashes[start : start + batch]])
    placed = []
    found: list[Any] = conn.execute(f"SELECT {_FILES} FROM files ORDER BY id").fetchall()
    for id, path, root, size, mtime_ns, hash, status, error, tags, indexed_at in found:
        file = FileRow(path, root, size, mtime_ns, hash, status, error, json.loads(tags), indexed_at)
        placed.append(PlacedFile(id, *_place(path, root), file))
        if len(placed) == batch:
            yield Portion(files=placed)
            placed = []
    if placed:
        yield Portion(files=placed)


def _content(conn: apsw.Connection, hash: str, dim: int) -> Content:
    row: Any = conn.execute(
        "SELECT a.duration, a.sample_rate, a.channels, a.container, a.codec, a.bits, p.print FROM audio a "
        "LEFT JOIN fingerprints p ON p.hash = a.hash WHERE a.hash = ?",
        (hash,),
    ).fetchone()
    duration, rate, channels, container, codec, bits, fp = row
    spans, v = files.segment_vectors(conn, hash, dim)
    audio = AudioRow(hash, duration, rate, channels, container, codec, bits, None if fp is None else bytes(fp))
    return Content(audio, spans, v)


def _place(path: str, root: str) -> tuple[str, str]:
    """(root, path below it, '/'-separated) of a stored file."""
    if path == root:
        return root, ""
    if within(path, root):
        return root, PurePath(os.path.relpath(path, root)).as_posix()
    return os.path.dirname(path), os.path.basename(path)  # a file stored outside its root: its folder stands in


def load(conn: apsw.Connection, portion: Portion) -> None:
    """Write a portion of another index into this one, inside the caller's transaction."""
    if portion.binding is not None and portion.centre is not None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('centre', ?)", (np.asarray(portion.centre, np.float32).tobytes(),)
        )
    for r in portion.roots:
        conn.execute("INSERT INTO roots (path, last_indexed_at) VALUES (?, ?)", (r.path, r.last_indexed_at))
    binding = meta.binding(conn)
    if portion.contents and binding is None:
        raise ValueError("Load the binding (the first portion) before contents.")
    centre = meta.read(conn).get("centre")
    for c in portion.contents:
        v = np.ascontiguousarray(c.vectors, dtype=np.float32)
        if binding is None or v.shape != (len(c.segments), binding.dim) or not np.all(np.isfinite(v)):
            raise ValueError(f"Content {c.audio.hash} does not fit this index: vectors {v.shape}.")
        files.add_audio(conn, c.audio)
        if c.audio.fingerprint is not None:
            conn.execute(
                "INSERT INTO fingerprints (hash, print) VALUES (?, ?)", (c.audio.hash, bytes(c.audio.fingerprint))
            )
        codes = vec.binary_codes(v, np.frombuffer(centre, np.float32)) if isinstance(centre, bytes) else None
        for i, (start, end) in enumerate(c.segments):
            code = codes[i].tobytes() if codes is not None else None
            conn.execute(
                'INSERT INTO segments (hash, start, "end", code) VALUES (?, ?, ?, ?)', (c.audio.hash, start, end, code)
            )
            conn.execute(
                "INSERT INTO vectors (rowid, embedding) VALUES (?, ?)", (conn.last_insert_rowid(), vec.to_blob(v[i]))
            )
    sql = f"INSERT INTO files ({_FILES}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for f in portion.files:
        row = f.row
        tags = json.dumps(row.tags, ensure_ascii=False, sort_keys=True)
        conn.execute(
            sql,
            (
                f.id,
                row.path,
                row.root,
                row.size,
                row.mtime_ns,
                row.hash,
                row.status,
                row.error,
                tags,
                row.indexed_at or 0.0,
            ),
        )
    if portion.contents:
        meta.touched(conn)
