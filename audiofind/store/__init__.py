"""The index, behind one protocol (`store.protocol.Store`): the only package that speaks SQL.

`open_store(db)` picks the backend: a path is an SQLite file (`store.sqlite`, the embedded default), a
`postgresql://` URL a PostgreSQL server with pgvector (`store.postgres`, a team's shared index; needs the extra
`audiofind[postgres]`). `records` holds what is stored and asked for, `vectors` the numpy side of vectors and
binary codes, `ranking` the exact scoring both backends share, `words` the names index's stems and BM25, `scope`
which stored paths a folder covers, `location` URLs and their hidden passwords, `rootmap` this machine's mount
points of shared roots, `transfer` copying a whole index. No torch here: status, search and serve stay quick.
"""

from pathlib import Path

from audiofind.errors import StorageError
from audiofind.store.location import is_url, redact, resolve
from audiofind.store.protocol import ConnectionLost, Features, Store
from audiofind.store.records import (
    AudioRow,
    FileEntry,
    FileRow,
    Filters,
    Hit,
    ModelBinding,
    NameQuery,
    RootRow,
    Stats,
    norm_path,
)  # fmt: skip

__all__ = [
    "AudioRow", "ConnectionLost", "FileEntry", "FileRow", "Features", "Filters", "Hit", "ModelBinding", "NameQuery",
    "RootRow", "Stats", "Store", "check_writable", "is_url", "norm_path", "open_index", "open_store", "peek_model",
]  # fmt: skip

INSTALL = 'pip install "audiofind[postgres]"'


def _postgres(url: str) -> None:
    """Refuse, in one line, a URL this installation cannot open."""
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        raise StorageError(
            f"The index {redact(url)} is on a PostgreSQL server, which needs the postgres extra: {INSTALL}"
        ) from None


def open_store(db: Path | str | None = None, create: bool = False) -> Store:
    """Open the index at db (a path or a postgresql:// URL; AUDIOFIND_DB, then the user data folder, when None);
    create it if asked.

    IndexNotFound when it does not exist and create is False.
    """
    target = resolve(db)
    if isinstance(target, str) and is_url(target):
        _postgres(target)
        from audiofind.store.postgres.store import PostgresStore

        return PostgresStore.open(target, create=create)
    from audiofind.store.sqlite.store import SqliteStore

    return SqliteStore.open(target, create=create)


open_index = open_store  # the name of the public API since the first release


def peek_model(db: Path | str | None) -> ModelBinding | None:
    """The model an existing index was built with, read without creating or migrating anything (None if none)."""
    target = resolve(db)
    if isinstance(target, str) and is_url(target):
        _postgres(target)
        from audiofind.store.postgres.store import peek_model as postgres_peek

        return postgres_peek(target)
    from audiofind.store.sqlite.connection import peek_model as sqlite_peek

    return sqlite_peek(target)


def check_writable(db: Path | str | None) -> None:
    """Refuse, before any model loads, an index this user cannot write: a server role that can only read, an SQLite
    file (or folder) that is read-only, or one another writer holds."""
    target = resolve(db)
    if isinstance(target, str) and is_url(target):
        open_store(target, create=True).close()
        return
    from audiofind.store.sqlite.connection import check_writable as check_file

    check_file(target)
