"""The `roots` table: the folders an SQLite index holds, named by their paths, and moving one (`roots move`).

Every function here runs inside the caller's transaction (store.SqliteStore opens it); none commits.
"""

import os
import time

import apsw

from audiofind.errors import UsageError
from audiofind.store.records import RootRow, folder_prefix
from audiofind.store.scope import check_move, not_a_root, within
from audiofind.store.sqlite import files


def listed(conn: apsw.Connection) -> list[RootRow]:
    """The indexed folders, by path: each named by its path, mounted here, with its file count and whether it is
    there now."""
    sql = (
        "SELECT path, last_indexed_at, (SELECT count(*) FROM files f WHERE f.root = r.path) FROM roots r ORDER BY path"
    )
    return [RootRow(path, at, path, True, n, os.path.isdir(path)) for path, at, n in conn.execute(sql)]


def add(conn: apsw.Connection, path: str) -> None:
    """List the root at path, not yet indexed, if it is not listed already."""
    conn.execute("INSERT INTO roots (path) VALUES (?) ON CONFLICT(path) DO NOTHING", (path,))


def touch(conn: apsw.Connection, path: str) -> None:
    """Record that the root at path has just been indexed (listing it if it was not)."""
    sql = (
        "INSERT INTO roots (path, last_indexed_at) VALUES (?, ?) "
        "ON CONFLICT(path) DO UPDATE SET last_indexed_at = excluded.last_indexed_at"
    )
    conn.execute(sql, (path, time.time()))


def forget(conn: apsw.Connection, path: str) -> None:
    """Stop listing the root at path (its files are removed separately)."""
    conn.execute("DELETE FROM roots WHERE path = ?", (path,))


def move(conn: apsw.Connection, old: str, new: str) -> int:
    """Re-point the root old, and everything stored at or below it, to new (both as stored); how many files.

    Paths are rewritten in place, so ids, hashes, tags and times stay; the names index follows through its triggers
    on `files` (a file's folder words are those below its root, so they stay the same too).
    """
    roots = [p for (p,) in conn.execute("SELECT path FROM roots")]
    if old not in roots:
        raise not_a_root(old)
    check_move(old, new, [r for r in roots if not within(r, old)])
    if files.under(conn, [new]):  # left by a root forgotten since, say: the paths would collide
        raise UsageError(f"{new} already holds indexed files; nothing was moved.")
    prefix = folder_prefix(old)
    # ?1 old, ?2 new, ?3 old's prefix: a path at or below old becomes the same path below new.
    inside = "({col} = ?1 OR substr({col}, 1, length(?3)) = ?3)"
    moved = "?2 || substr({col}, length(?1) + 1)"
    params = (old, new, prefix)
    sql = (
        f"UPDATE files SET path = {moved.format(col='path')}, root = CASE WHEN {inside.format(col='root')} "
        f"THEN {moved.format(col='root')} ELSE ?2 END WHERE {inside.format(col='path')} RETURNING 1"
    )
    n = len(conn.execute(sql, params).fetchall())  # stepped to the end: an open statement blocks the COMMIT
    conn.execute(f"UPDATE partial SET path = {moved.format(col='path')} WHERE {inside.format(col='path')}", params)
    conn.execute(f"UPDATE roots SET path = {moved.format(col='path')} WHERE {inside.format(col='path')}", params)
    return n
