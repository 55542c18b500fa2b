"""The store protocol: everything the rest of audiofind asks of an index, whatever holds it.

`store.sqlite` implements it on one SQLite file (the embedded default) and `store.postgres` on a PostgreSQL server
with pgvector (a team's shared index). Code above the store sees only this protocol and the records of
`store.records`: it never writes SQL and never touches a connection.

The guarantees every backend keeps:
- A file is stored whole or not at all: `add_file` is one transaction, and a search never sees half a file.
- Audio is keyed by content hash, so copies share vectors and a moved file is never embedded again.
- A long recording is committed a chunk at a time (`add_segments`), hidden from search until `add_file` ends it,
  and resumed from `partial_segments` after an interruption.
- Vectors are stored unit-length as float32, with the model binding that made them; another model is refused.
- Each content keeps the facts its AudioRow brings (container, codec, rate, bit depth, channels, fingerprint), and
  every Hit carries them (None where an older index could not read them) with `available`: whether its root is
  there now.
- Writes fail with the typed errors of `audiofind.errors` (StorageError, IndexBusy, SchemaMismatch) or
  ConnectionLost below, each one sentence that says what to do; nothing committed before is lost.
- Paths are absolute and local to this machine; a file under a root this machine does not mount is `NAME:relpath`
  (see records.RootRow), found by search, never removed by this machine.
"""

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from audiofind.errors import StorageError
from audiofind.store.records import (
    AudioRow,
    FileEntry,
    FileRow,
    Filters,
    Hit,
    ModelBinding,
    NameQuery,
    Portion,
    RootRow,
    Stats,
)  # fmt: skip


class ConnectionLost(StorageError):
    """The server went away in the middle of a write (restarted, or the network dropped): what was committed is
    kept, the write in flight is not, and running the same command again continues where it stopped."""


@dataclass(frozen=True)
class Features:
    """What differs between backends, for the code above them to ask rather than guess."""

    shared_writers: bool  # several writers may work at once (each content claimed by one); else one at a time
    swap_file: bool  # a rebuild is a new file renamed over the old one (SQLite), rather than tables in the server


class Store(Protocol):
    """An open index. Get one with `store.open_store(db)`; close it (or use it as a context manager) when done."""

    location: str  # where it is, for messages: a file path, or a URL with its password shown as ***
    features: Features

    # ---- lifecycle

    def close(self) -> None:
        """Release the connection."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def writer_lock(self) -> AbstractContextManager[None]:
        """Hold the right to write for the duration (IndexBusy if another writer holds it); a backend whose writers
        share the index (features.shared_writers) only checks that this role may write."""
        ...

    def claim(self, hash: str, wait: bool = False) -> bool:
        """Take the right to embed this content: True if this writer should embed it, False if another live writer
        is embedding it now (with wait, block until it is done, then True). A writer that dies drops its claims."""
        ...

    def release(self, hash: str) -> None:
        """Give a claim back (after the content is stored, or given up); releasing an unheld claim does nothing."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes into one transaction (nested ones become savepoints); each write inside stays atomic."""
        ...

    def reading(self) -> AbstractContextManager[None]:
        """One consistent read: everything read inside sees the same committed state while writers commit."""
        ...

    # ---- the model binding

    def model(self) -> ModelBinding | None:
        """The model and segmenting the vectors were made with, or None before the first bind."""
        ...

    def bind_model(self, binding: ModelBinding) -> None:
        """Record the model on an empty index (renaming is free); ModelMismatch if other vectors are stored."""
        ...

    def check_model(self, binding: ModelBinding) -> None:
        """ModelMismatch (naming the rebuild command's parts) if the vectors were made another way."""
        ...

    def reset(self) -> None:
        """Forget every file, root, segment and vector and the model binding."""
        ...

    # ---- files: reading

    def get_file(self, path: Path | str) -> FileRow | None:
        """The stored row for path, or None."""
        ...

    def files_under(self, roots: Iterable[Path | str]) -> list[FileRow]:
        """Every stored file at or below any of roots, by path."""
        ...

    def file_entry(self, file_id: int) -> FileEntry | None:
        """The ok file with this id, or None (unknown id, or a file that failed)."""
        ...

    def file_ids(self, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
        """path -> (file id, its root) for those of paths that are stored."""
        ...

    def has_audio(self, hash: str) -> bool:
        """Whether complete vectors for this content are stored (a copy or a moved file needs no model run)."""
        ...

    def partial_segments(self, hash: str) -> int:
        """How many leading windows of an unfinished content are committed (0 if none)."""
        ...

    def partial_duration(self, hash: str) -> float:
        """Seconds covered by the committed windows of an unfinished content."""
        ...

    def segment_vectors(self, hash: str) -> tuple[list[tuple[float, float]], np.ndarray]:
        """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
        ...

    # ---- files: writing

    def add_segments(
        self, hash: str, path: str, audio: AudioRow, segments: list[tuple[float, float]], vectors: np.ndarray
    ) -> None:
        """Commit the next windows of a content still being embedded; hidden from search until add_file ends it."""
        ...

    def add_file(
        self,
        row: FileRow,
        audio: AudioRow | None = None,
        segments: list[tuple[float, float]] | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Store one ok file in one transaction; audio (with its fingerprint, when it has one), segments and vectors
        (N, D) are used only if its content is new (or ends an unfinished one)."""
        ...

    def drop_partials(self, keep: Iterable[str] = (), paths: Iterable[str] | None = None) -> int:
        """Forget unfinished contents (all, or those begun for these paths) but the hashes in keep; how many."""
        ...

    def record_failure(self, path: Path | str, root: Path | str, size: int, mtime_ns: int, reason: str) -> None:
        """Remember that path could not be indexed, and why (it is tried again when it changes)."""
        ...

    def move_file(self, old: Path | str, new: Path | str, root: Path | str, size: int, mtime_ns: int) -> None:
        """Give a stored file its new path, keeping its vectors; a file already stored at new is replaced."""
        ...

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files, and the vectors no remaining file shares; how many were stored."""
        ...

    def fingerprints(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored acoustic fingerprints (audio.fingerprint) of those contents that have one."""
        ...

    def set_fingerprints(self, prints: dict[str, bytes]) -> None:
        """Store fingerprints of stored contents (a content no longer stored is skipped), in one transaction."""
        ...

    def optimize(self) -> None:
        """Prepare for fast reads once a run of writes is done (writers call it at the end of every sync)."""
        ...

    # ---- search

    def search(
        self, queries: np.ndarray, k: int = 20, filters: Filters | None = None, exact: bool | None = None
    ) -> list[Hit]:
        """The k files whose best segment is closest (cosine) to any of the query vectors (Q, D), best first.

        exact=True scores every segment; None lets the backend use its candidate index when that is worth it.
        """
        ...

    def search_names(self, query: NameQuery, limit: int, filters: Filters | None = None) -> list[Hit]:
        """Ok files whose folders, name or describing tags match query, best BM25 first (ties: the file indexed
        first), none holding an excluded word; score is the relevance (higher is better), the segment the file."""
        ...

    def names_holding(self, terms: list[str], paths: list[str]) -> dict[str, list[str]]:
        """For each of paths, which of terms its folders, name and tags hold."""
        ...

    def reindex_names(self) -> int:
        """Fill the names index again from the stored files (no audio is read); how many files it holds."""
        ...

    # ---- roots, status, rebuilds

    def mount_root(self, root: Path | str, name: str | None = None) -> str:
        """Say that the folder root is, on this machine, the root called name (default: the name this machine gave it
        before, else `HOST:/absolute/path`); returns the name. Writers call it before adding files under root.
        UsageError for a name the backend cannot keep (SQLite names roots by their path)."""
        ...

    def touch_root(self, root: Path | str) -> None:
        """Record that root has just been indexed."""
        ...

    def forget_root(self, root: Path | str) -> None:
        """Stop listing root as an indexed folder (its files are removed separately)."""
        ...

    def move_root(self, old: Path | str, new: Path | str) -> int:
        """Say that the root folder old is now at new on this machine (renamed, moved, mounted elsewhere): every file
        stored under it is found there, with its vectors, id and history; nothing is embedded. How many files it holds.
        UsageError, with nothing changed, if old is not a root of this machine or new is old, lies inside or around
        it or another root, or already holds indexed files. The disk is not looked at (library.relocate does that).
        """
        ...

    def roots(self) -> list[RootRow]:
        """The indexed folders, by path, each with its name, whether this machine mounts it, its file count and
        whether it is there now (available)."""
        ...

    def stats(self) -> Stats:
        """Counts, sizes and failures for `audiofind status`."""
        ...

    def dump(self, batch: int = 512) -> Iterator[Portion]:
        """Everything this index holds, in portions for another store's load (`db copy`): the binding, code centre and
        roots first, then the complete contents, then the files; unfinished contents are left out."""
        ...

    def load(self, portion: Portion) -> None:
        """Add a portion of another index (dump) to this empty one as it is: vectors bit for bit, file ids kept."""
        ...

    def staging(self) -> Self:
        """The store a rebuild of this one is built in: empty, or what an interrupted rebuild left (to continue)."""
        ...

    def discard_staging(self) -> None:
        """Throw away an unfinished rebuild."""
        ...

    def replace_with(self, staged: Self) -> None:
        """Make a finished rebuild this index, atomically, and close it; readers see the old one or the new one."""
        ...
