"""Opening the SQLite file (sqlite-vec loaded, WAL, busy timeout), what its failures mean, and the writer's OS lock."""

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import apsw
import sqlite_vec

from audiofind.errors import AudiofindError, IndexBusy, IndexNotFound, StorageError
from audiofind.store.records import ModelBinding, norm_path
from audiofind.store.sqlite import filters, fulltext, meta
from audiofind.store.sqlite.typed import scalar

BUSY_TIMEOUT_MS = 5_000
MMAP_BYTES = 1 << 32 if sys.maxsize > 1 << 32 else 0  # address space only; pages load on demand
KEPT = "everything indexed so far is kept"

SWAP_WAIT = 30.0  # seconds to wait for readers of the old index to let its write-ahead log be emptied


def connect(path: Path | str, create: bool = True) -> apsw.Connection:
    """Open the SQLite file with sqlite-vec loaded, WAL journaling and a busy timeout.

    create=True also makes a missing file and its folder; the callers that ask for it write, so a file this user
    cannot write is refused here, before any work is done. Without it a read-only index is opened for reading.
    """
    path = Path(path)
    if os.path.isdir(path):
        raise IndexNotFound(f"{path} is a folder, not an index file; give --db a file, such as {path / 'index.db'}.")
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(
                f"Cannot create the folder {path.parent} for the index {path.name}: {e.strerror or e}."
            ) from e
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = _open(str(path), flags)
    except (apsw.ReadOnlyError, apsw.CantOpenError) as e:
        conn = _open_immutable(path, e)
    except apsw.Error as e:
        raise storage_error(path, e) from e
    if create and conn.readonly("main"):
        conn.close()
        raise storage_error(path, apsw.ReadOnlyError("attempt to write a readonly database"))
    filters.register(conn)
    fulltext.register(conn)  # the full-text triggers on `files` call it, so every writer must have it
    return conn


def _open(name: str, flags: int) -> apsw.Connection:
    conn = apsw.Connection(name, flags=flags)
    try:
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
    except BaseException:
        conn.close()
        raise
    return conn


def _open_immutable(path: Path, error: apsw.Error) -> apsw.Connection:
    """Read an index whose folder this user cannot write, where WAL mode cannot create the <db>-shm readers need.

    Without a write-ahead log left over, the file alone is the whole index and nobody can be writing it (a writer
    would need that folder too), so it is read as immutable; with one, reading the file alone would miss commits.
    """
    if not os.path.exists(path):  # nothing to read: creating it failed
        raise storage_error(path, error) from error
    try:
        wal_bytes = os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        wal_bytes = 0
    except OSError:
        raise storage_error(path, error) from error
    if wal_bytes:
        raise StorageError(
            f"Cannot read the index {path}: its latest changes are in {path.name}-wal, which SQLite can read only by "
            f"creating {path.name}-shm beside it, and this user cannot write to {path.parent}; run the command once "
            "as a user who can (the owner of the index), or make that folder writable."
        )
    try:
        return _open(f"file:{quote(str(path))}?immutable=1", apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error:
        raise storage_error(path, error) from error


def storage_error(path: Path | str, e: apsw.Error) -> AudiofindError:
    """The typed error for an SQLite failure on the index at path: one sentence that says what to do."""
    if isinstance(e, apsw.FullError):
        return StorageError(f"The disk holding {path} is full; free some space and run the same command again: {KEPT}.")
    if isinstance(e, apsw.ReadOnlyError):
        return StorageError(
            f"The index {path} is read-only for this user; make it and its folder writable (or give --db another "
            "file) and run the same command again."
        )
    if isinstance(e, apsw.NotADBError):
        return IndexNotFound(
            f"{path} is not an audiofind index (it is not an SQLite database); give --db another file."
        )
    if isinstance(e, apsw.CorruptError):
        return StorageError(f"The index {path} is damaged ({e}); move it away and index your folders again.")
    if isinstance(e, apsw.CantOpenError | apsw.PermissionsError | apsw.AuthError):
        return StorageError(
            f"Cannot open the index {path} ({e}); check that this user can read it and write to its folder."
        )
    if isinstance(e, apsw.IOError):
        return StorageError(
            f"Reading or writing {path} failed ({e}); check the disk and run the same command again: {KEPT}."
        )
    return StorageError(f"SQLite failed on the index {path} ({type(e).__name__}: {e}); {KEPT}.")


def staging_path(db: Path | str) -> Path:
    """Where a rebuild of db is built."""
    return Path(f"{norm_path(db)}.rebuild")


def empty_log(conn: apsw.Connection, path: Path, staged: Path) -> None:
    """Checkpoint the index's write-ahead log until it is empty, so a rebuilt file can be renamed over it (else the
    log's pages would apply to the new file); StorageError if readers keep it busy past SWAP_WAIT."""
    deadline = time.monotonic() + SWAP_WAIT
    while scalar(conn, "PRAGMA wal_checkpoint(TRUNCATE)"):
        if time.monotonic() > deadline:
            raise StorageError(
                f"Readers keep {path} busy, so the rebuilt index could not replace it; it is ready at {staged}: run "
                "the same command again when searches have finished."
            )
        time.sleep(0.1)


def remove_files(path: Path) -> None:
    """Delete an SQLite file and its -wal and -shm companions."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def peek_model(db: Path | str) -> ModelBinding | None:
    """The model an existing index was built with, read without migrating or creating anything (None if none)."""
    path = Path(norm_path(db))
    if not path.is_file():
        return None
    conn = connect(path, create=False)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            return None
        return meta.binding(conn)
    finally:
        conn.close()


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


@contextmanager
def writer_lock(db: Path | str) -> Iterator[None]:
    """Hold the OS lock on <db>.lock for the duration; IndexBusy if another writer holds it."""
    db = Path(norm_path(db))
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        f = open(f"{db}.lock", "a+b")  # noqa: SIM115  (closed below, after the lock is released)
    except OSError as e:
        raise StorageError(
            f"Cannot open the lock file {db}.lock: {e.strerror or e}; make the folder {db.parent} writable."
        ) from e
    with f:
        f.seek(0)  # msvcrt locks bytes from the current position
        try:
            lock(f.fileno())
        except OSError as e:
            raise IndexBusy(
                f"Another audiofind process is already writing to {db}; wait for it to finish or use another --db."
            ) from e
        try:
            yield
        finally:
            unlock(f.fileno())


def check_writable(db: Path | str) -> None:
    """Refuse, in the words opening it for writing would use, an index file this user cannot write or another
    writer holds; for a file not made yet, a folder it cannot be made in. Creates nothing but the lock file of an
    existing index."""
    db = Path(norm_path(db))
    if db.exists():
        conn = connect(db, create=True)  # read-only file or folder: refused here
        conn.close()
        with writer_lock(db):
            return
    folder = next((p for p in db.parents if p.exists()), db.anchor)
    if os.path.isdir(db):
        raise IndexNotFound(f"{db} is a folder, not an index file; give --db a file, such as {db / 'index.db'}.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"Cannot create the index {db}: {folder} is not writable for this user; give --db another file."
        )
