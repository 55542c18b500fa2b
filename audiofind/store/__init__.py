"""The index, behind one protocol (`store.protocol.Store`): the only package that speaks SQL.

`open_store(db)` picks the backend: a path is an SQLite file (`store.sqlite`, the embedded default), a
`postgresql://` URL a PostgreSQL server with pgvector (`store.postgres`, a team's shared index). `records` holds
what is stored and asked for, `vectors` the numpy side of vectors and binary codes, `scope` which stored paths a
folder covers. No torch here: status, search and serve stay quick to start.
"""

from pathlib import Path

from audiofind.paths import default_db
from audiofind.store.protocol import Features, Store
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
    "AudioRow", "FileEntry", "FileRow", "Features", "Filters", "Hit", "ModelBinding", "NameQuery", "RootRow", "Stats",
    "Store", "norm_path", "open_index", "open_store", "peek_model",
]  # fmt: skip


def open_store(db: Path | str | None = None, create: bool = False) -> Store:
    """Open the index at db (AUDIOFIND_DB, then the user data folder, when None); create it if asked.

    IndexNotFound when it does not exist and create is False.
    """
    from audiofind.store.sqlite.store import SqliteStore

    return SqliteStore.open(db if db else default_db(), create=create)


open_index = open_store  # the name of the public API since the first release


def peek_model(db: Path | str | None) -> ModelBinding | None:
    """The model an existing index was built with, read without creating or migrating anything (None if none)."""
    from audiofind.store.sqlite.store import peek_model as sqlite_peek

    return sqlite_peek(db if db else default_db())
