"""Opening the SQLite file (sqlite-vec loaded, WAL, busy timeout) and the writer's OS lock."""

import sys
from pathlib import Path

import apsw
import sqlite_vec

from audiofind.errors import IndexNotFound
from audiofind.store.records import casefold

BUSY_TIMEOUT_MS = 5_000
MMAP_BYTES = 1 << 32 if sys.maxsize > 1 << 32 else 0  # address space only; pages load on demand


def connect(path: Path, create: bool = True) -> apsw.Connection:
    """Open the SQLite file with sqlite-vec loaded, WAL journaling and a busy timeout."""
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = None
    try:
        conn = apsw.Connection(str(path), flags=flags)
        conn.setbusytimeout(BUSY_TIMEOUT_MS)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL").fetchall()  # the first read: fails here on a non-database
        # WAL with NORMAL survives a killed process intact; only a power cut may lose the latest commits.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Memory-mapped reads halve the cost of the point lookups that re-score search candidates.
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    except apsw.Error as e:
        if conn is not None:
            conn.close()
        raise IndexNotFound(f"Cannot open {path} as an audiofind index: {e}.") from e
    conn.create_scalar_function("casefold", casefold, 1, deterministic=True)
    return conn


if sys.platform == "win32":
    import msvcrt

    def lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
