"""Numbered schema migrations, applied in order and recorded in `_audiofind_migrations` (llm / sqlite-utils style).

A shipped migration is never edited: a schema change is a new function appended here, plus a test. The vector
table is not here: its width comes from the model, so `SqliteStore.bind_model` creates it.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import apsw

from audiofind.errors import IndexBusy, SchemaMismatch
from audiofind.store.sqlite import facts, fulltext
from audiofind.store.sqlite.connection import storage_error

log = logging.getLogger(__name__)

TABLE = "_audiofind_migrations"

Migration = Callable[[apsw.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Append fn to the ordered list of migrations; each name may be registered once."""
    if any(m.__name__ == fn.__name__ for m in MIGRATIONS):
        raise ValueError(f"Migration {fn.__name__} is registered twice.")
    MIGRATIONS.append(fn)
    return fn


@contextmanager
def write_transaction(conn: apsw.Connection) -> Iterator[None]:
    """One write transaction, or a savepoint inside an open one; everything in it lands together or not at all.

    Every write of the store passes here, so this is where SQLite's failures (disk full, read-only, I/O) become
    StorageError, and a lock held too long by another writer IndexBusy (callers such as watch wait and retry).
    """
    nested = conn.in_transaction
    try:
        # IMMEDIATE takes the write lock up front (waiting out the busy timeout), so a read that precedes the
        # first write can never find its snapshot stale.
        conn.execute("SAVEPOINT write" if nested else "BEGIN IMMEDIATE")
    except apsw.BusyError as e:
        raise IndexBusy(f"Another process is writing to {conn.filename}; try again when it has finished.") from e
    except apsw.Error as e:
        raise storage_error(conn.filename, e) from e
    try:
        yield
        conn.execute("RELEASE write" if nested else "COMMIT")
    except BaseException as e:
        if conn.in_transaction:  # SQLite ends the whole transaction itself after some errors (a full disk may)
            try:
                conn.execute("ROLLBACK TO write; RELEASE write" if nested else "ROLLBACK")
            except apsw.Error:  # the first error is the one to report
                log.debug("rollback failed on %s", conn.filename, exc_info=True)
        if isinstance(e, apsw.BusyError):  # another writer held the lock past the busy timeout: callers retry
            raise IndexBusy(f"Another process is writing to {conn.filename}; try again when it has finished.") from e
        if isinstance(e, apsw.Error):
            raise storage_error(conn.filename, e) from e
        raise


@migration
def m001_meta(conn: apsw.Connection) -> None:
    """Key-value facts about the index: the model binding and the code centre."""
    # Untyped value: holds text, numbers and the float32 centre blob alike.
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")


@migration
def m002_audio_segments(conn: apsw.Connection) -> None:
    """Distinct audio contents by hash, and their segments."""
    conn.execute(
        """
        CREATE TABLE audio (
            hash TEXT PRIMARY KEY,
            duration REAL NOT NULL,
            sample_rate INTEGER NOT NULL,
            channels INTEGER NOT NULL
        )"""
    )
    # Segment ids are the rowids of the vec0 `vectors` table; `code` holds the binary code of the centred vector
    # once the index is large enough to have a centre (NULL before).
    conn.execute(
        """
        CREATE TABLE segments (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL REFERENCES audio(hash),
            start REAL NOT NULL,
            "end" REAL NOT NULL,
            code BLOB
        )"""
    )
    conn.execute("CREATE INDEX segments_hash ON segments(hash)")


@migration
def m003_files(conn: apsw.Connection) -> None:
    """Files on disk, each pointing at its content or recording why it failed."""
    conn.execute(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            root TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            hash TEXT REFERENCES audio(hash),
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
            error TEXT,
            tags TEXT NOT NULL DEFAULT '{}',
            indexed_at REAL NOT NULL,
            CHECK ((status = 'ok') = (hash IS NOT NULL))
        )"""
    )
    conn.execute("CREATE INDEX files_hash ON files(hash)")
    conn.execute("CREATE INDEX files_root ON files(root)")


@migration
def m004_roots(conn: apsw.Connection) -> None:
    """The folders the user indexed."""
    conn.execute("CREATE TABLE roots (path TEXT PRIMARY KEY, last_indexed_at REAL)")


@migration
def m005_partial(conn: apsw.Connection) -> None:
    """Contents whose embedding is under way: their segments are committed a chunk at a time, hidden until done."""
    # A long recording commits its windows about a minute at a time, so an interruption loses at most that much;
    # its audio row exists (segments reference it) but no file points at it until the last window is in.
    conn.execute("CREATE TABLE partial (hash TEXT PRIMARY KEY REFERENCES audio(hash), path TEXT NOT NULL)")


@migration
def m006_codes_cache(conn: apsw.Connection) -> None:
    """The binary codes of the searchable segments, assembled, for the segments_version they were made at."""
    # A cold `search` on 100k segments spent ~250 ms rebuilding these from rows; one blob is one read.
    conn.execute("CREATE TABLE codes_cache (version INTEGER NOT NULL, blob BLOB NOT NULL)")


@migration
def m007_file_words(conn: apsw.Connection) -> None:
    """The full-text index of names and tags, with the triggers that keep it in step, filled without re-embedding."""
    fulltext.create(conn)


@migration
def m008_extension_words(conn: apsw.Connection) -> None:
    """Names index again, now that a file's extension is one of its words (`-mp3` leaves MP3s out)."""
    fulltext.refill(conn)


@migration
def m009_audio_facts(conn: apsw.Connection) -> None:
    """Each content's container, codec and bit depth, read from the header of one of its files (nothing embedded)."""
    for column in ("container TEXT", "codec TEXT", "bits INTEGER"):
        conn.execute(f"ALTER TABLE audio ADD COLUMN {column}")
    facts.fill(conn)


@migration
def m010_fingerprints(conn: apsw.Connection) -> None:
    """Acoustic fingerprints of contents, for duplicates: filled at index time, and for older contents by the first
    `duplicates` run (decoding, no embedding)."""
    conn.execute("CREATE TABLE fingerprints (hash TEXT PRIMARY KEY REFERENCES audio(hash), print BLOB NOT NULL)")


@migration
def m011_format_words(conn: apsw.Connection) -> None:
    """Names index again, now that a file's format (container, codec family) is among its words (`aiff` finds an
    .aif): from the facts m009 read, nothing decoded."""
    fulltext.refill(conn)


@migration
def m012_whole_format_words(conn: apsw.Connection) -> None:
    """Names index again, now that a format name mixing letters and digits is one word (`m4a`, not m 4 a, whose
    "a" matched a query's stop word) and a name's extension a word once: from the stored paths, tags and facts,
    nothing decoded."""
    fulltext.refill(conn)


def names() -> list[str]:
    """Every migration this code knows, in order."""
    return [m.__name__ for m in MIGRATIONS]


def applied(conn: apsw.Connection) -> list[str]:
    """Names recorded in the database, in the order they were applied (reads only)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    if not exists:
        return []
    return [name for (name,) in conn.execute(f"SELECT name FROM {TABLE} ORDER BY rowid")]


def pending(conn: apsw.Connection) -> list[str]:
    """Known migrations not applied yet; never writes."""
    done = set(applied(conn))
    return [name for name in names() if name not in done]


def unknown(conn: apsw.Connection) -> list[str]:
    """Recorded migrations this code does not know: the database was written by a newer audiofind."""
    known = set(names())
    return [name for name in applied(conn) if name not in known]


def version(conn: apsw.Connection) -> int:
    """The schema version: how many migrations have been applied."""
    return len(applied(conn))


def check(conn: apsw.Connection) -> None:
    """Raise SchemaMismatch if a newer audiofind has migrated this database."""
    newer = unknown(conn)
    if newer:
        raise SchemaMismatch(
            f"The index {conn.filename} was written by a newer audiofind (unknown migrations: {', '.join(newer)}); "
            "upgrade audiofind to use it."
        )


def migrate(conn: apsw.Connection) -> list[str]:
    """Apply the pending migrations, each together with its record in one transaction; return their names."""
    check(conn)
    if not pending(conn):
        return []
    with write_transaction(conn):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = []
    for fn in MIGRATIONS:
        with write_transaction(conn):
            # Re-read inside the write lock: another process may have applied it since we looked.
            if conn.execute(f"SELECT 1 FROM {TABLE} WHERE name = ?", (fn.__name__,)).fetchone():
                continue
            fn(conn)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            conn.execute(f"INSERT INTO {TABLE} (name, applied_at) VALUES (?, ?)", (fn.__name__, now))
        log.info("applied migration %s to %s", fn.__name__, conn.filename)
        done.append(fn.__name__)
    return done
