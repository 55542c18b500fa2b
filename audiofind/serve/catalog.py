"""Every SQL statement serve runs, all of them reads: files by id, ids by path, one read snapshot."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import apsw


@dataclass(frozen=True)
class Entry:
    """One indexed file, addressed by its row id: where it is and what was indexed there."""

    id: int
    path: str
    root: str
    size: int  # bytes at indexing time
    mtime_ns: int  # modification time at indexing time
    hash: str
    duration: float  # seconds, as indexed


@contextmanager
def snapshot(conn: apsw.Connection) -> Iterator[None]:
    """One read transaction: a search and the ids of its hits see the same committed state."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")  # read only: nothing to keep or undo


def entry(conn: apsw.Connection, file_id: int) -> Entry | None:
    """The indexed file with this id, or None (unknown id, or a file that failed to index)."""
    row = conn.execute(
        "SELECT f.id, f.path, f.root, f.size, f.mtime_ns, f.hash, a.duration FROM files f "
        "JOIN audio a ON a.hash = f.hash WHERE f.id = ? AND f.status = 'ok'",
        (file_id,),
    ).fetchone()
    return Entry(*row) if row else None


def ids(conn: apsw.Connection, paths: list[str]) -> dict[str, tuple[int, str]]:
    """path -> (file id, its root) for the paths that are in the index."""
    sql = "SELECT path, id, root FROM files WHERE path IN (SELECT value FROM json_each(?))"
    return {path: (i, root) for path, i, root in conn.execute(sql, (json.dumps(paths),))}
