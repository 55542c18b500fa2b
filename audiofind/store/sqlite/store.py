"""The SQLite backend of the store protocol: one file (APSW + sqlite-vec) holding files, audio, segments and vectors.

Audio is keyed by content hash, so copies share vectors and a moved file is never embedded again. Each file is
written in one transaction and the model runs outside them, so a killed run leaves only complete files. One writer
at a time holds the OS lock on `<db>.lock`; readers never wait for it (WAL). A rebuild is built in `<db>.rebuild`
and renamed over the database once complete.
"""

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Self

import apsw
import numpy as np

from audiofind.errors import IndexNotFound, ModelMismatch, UsageError
from audiofind.store.protocol import Features
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
    norm_path,
)  # fmt: skip
from audiofind.store.sqlite import dump, files, fulltext, meta, migrations, roots, search
from audiofind.store.sqlite.connection import connect, empty_log, remove_files, staging_path, storage_error, writer_lock
from audiofind.store.sqlite.filters import conditions, json_list
from audiofind.store.sqlite.typed import fetch, scalar

log = logging.getLogger(__name__)

FEATURES = Features(shared_writers=False, swap_file=True)


class SqliteStore:
    """An open SQLite index; get one with SqliteStore.open(path) (or store.open_store)."""

    features = FEATURES

    def __init__(self, path: Path, conn: apsw.Connection) -> None:
        self.path = path
        self.location = str(path)
        self.conn = conn

    @classmethod
    def open(cls, path: Path | str, create: bool = True) -> Self:
        """Open (and migrate) the index at path; IndexNotFound if it is missing and create is False."""
        path = Path(norm_path(path))
        if not path.exists() and not create:
            raise IndexNotFound(f"No index at {path}; build one with: audiofind index FOLDER")
        conn = connect(path, create=create)
        try:
            tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and migrations.TABLE not in tables:
                raise IndexNotFound(f"{path} is an SQLite database but not an audiofind index.")
            migrations.migrate(conn)
        except apsw.Error as e:
            conn.close()
            raise storage_error(path, e) from e
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def writer_lock(self) -> AbstractContextManager[None]:
        """Hold the OS lock on <db>.lock for the duration; IndexBusy if another writer holds it."""
        return writer_lock(self.path)

    def claim(self, hash: str, wait: bool = False) -> bool:
        """Always True: one writer at a time (writer_lock) embeds everything it needs."""
        return True

    def release(self, hash: str) -> None:
        """Nothing to give back: claims are not kept."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (a batch of files) into one transaction; each write inside stays atomic on its own."""
        with migrations.write_transaction(self.conn):
            yield

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction, so everything read sees one consistent state while a writer commits."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")  # read only: nothing to keep or undo

    # ---- the model binding

    def model(self) -> ModelBinding | None:
        """The model and segmenting this index was built with, or None before the first bind."""
        return meta.binding(self.conn)

    def _bound(self) -> ModelBinding:
        binding = self.model()
        if binding is None:
            raise ValueError("Bind a model (bind_model) before adding vectors.")
        return binding

    def bind_model(self, binding: ModelBinding) -> None:
        """Record the model on an empty index; ModelMismatch if vectors of another model are already stored."""
        if binding.dim <= 0:
            raise ValueError(f"Vector dimension must be positive, got {binding.dim}.")
        with self.transaction():
            current = self.model()
            if current is not None and current.same_vectors(binding):
                if current.name != binding.name:
                    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'model_name'", (binding.name,))
                return
            if current is not None and self.conn.execute("SELECT 1 FROM audio LIMIT 1").fetchone():
                raise self._mismatch(current, binding)
            meta.bind(self.conn, binding)
        log.info("bound %s to model %s (%d-d)", self.path, binding.name, binding.dim)

    def check_model(self, binding: ModelBinding) -> None:
        """Raise ModelMismatch if this index was built with another model, precision or segmenting."""
        current = self.model()
        if current is not None and not current.same_vectors(binding):
            raise self._mismatch(current, binding)

    def _mismatch(self, current: ModelBinding, asked: ModelBinding) -> ModelMismatch:
        return ModelMismatch(current, asked, self.location, [r.path for r in self.roots()])

    def reset(self) -> None:
        """Delete every file, root, segment and vector, and the model binding."""
        with self.transaction():
            for table in ("files", "partial", "fingerprints", "segments", "audio", "roots", "meta", "codes_cache"):
                self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("DROP TABLE IF EXISTS vectors")
        log.info("reset %s", self.path)

    # ---- files: reading

    def get_file(self, path: Path | str) -> FileRow | None:
        """The stored row for path, or None."""
        found = files.rows(self.conn, "path = ?", (norm_path(path),))
        return found[0] if found else None

    def files_under(self, roots: Iterable[Path | str]) -> list[FileRow]:
        """Every stored file at or below any of roots, ordered by path."""
        return files.under(self.conn, roots)

    def file_entry(self, file_id: int) -> FileEntry | None:
        """The ok file with this id, or None (unknown id, or a file that failed to index)."""
        row = self.conn.execute(
            "SELECT f.id, f.path, f.root, f.size, f.mtime_ns, f.hash, a.duration FROM files f "
            "JOIN audio a ON a.hash = f.hash WHERE f.id = ? AND f.status = 'ok'",
            (int(file_id),),
        ).fetchone()
        return FileEntry(*row) if row else None

    def file_ids(self, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
        """path -> (file id, its root) for the paths that are in the index."""
        sql = "SELECT path, id, root FROM files WHERE path IN (SELECT value FROM json_each(?))"
        return {path: (i, root) for path, i, root in self.conn.execute(sql, (json_list(paths),))}

    def has_audio(self, hash: str) -> bool:
        """Whether vectors for this content are already stored (so a copy or a moved file needs no model run)."""
        return files.has_audio(self.conn, hash)

    def partial_segments(self, hash: str) -> int:
        """How many leading windows of an unfinished content are already committed (0 if none)."""
        if not files.is_partial(self.conn, hash):
            return 0
        return int(scalar(self.conn, "SELECT count(*) FROM segments WHERE hash = ?", (hash,)))

    def partial_duration(self, hash: str) -> float:
        """Seconds covered by the committed windows of an unfinished content."""
        row = self.conn.execute("SELECT duration FROM audio WHERE hash = ?", (hash,)).fetchone()
        return float(row[0]) if row else 0.0

    def segment_vectors(self, hash: str) -> tuple[list[tuple[float, float]], np.ndarray]:
        """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
        binding = self.model()
        return files.segment_vectors(self.conn, hash, binding.dim if binding else 0)

    # ---- files: writing

    def add_segments(
        self, hash: str, path: str, audio: AudioRow, segments: list[tuple[float, float]], vectors: np.ndarray
    ) -> None:
        """Commit the next windows of a content still being embedded; hidden from search until add_file ends it."""
        with self.transaction():
            binding = self._bound()
            if not self.conn.execute("SELECT 1 FROM audio WHERE hash = ?", (hash,)).fetchone():
                files.add_audio(self.conn, replace(audio, hash=hash))
                self.conn.execute("INSERT INTO partial (hash, path) VALUES (?, ?)", (hash, norm_path(path)))
            elif not files.is_partial(self.conn, hash):
                raise ValueError(f"Content {hash} is complete already; it takes no more segments.")
            files.add_segments(self.conn, binding, hash, segments, vectors)
            self.conn.execute("UPDATE audio SET duration = ? WHERE hash = ?", (float(audio.duration), hash))

    def add_file(
        self,
        row: FileRow,
        audio: AudioRow | None = None,
        segments: list[tuple[float, float]] | None = None,
        vectors: np.ndarray | None = None,  # (len(segments), D), normalised here
    ) -> None:
        """Store one indexed file in one transaction; audio, segments and vectors are used only if its hash is new."""
        if row.hash is None:
            raise ValueError("add_file needs a content hash; use record_failure for files that failed.")
        with self.transaction():
            if files.is_partial(self.conn, row.hash):
                if audio is None or segments is None or vectors is None:
                    raise ValueError(f"Content {row.hash} is unfinished: add_file needs its last segments.")
                files.add_segments(self.conn, self._bound(), row.hash, segments, vectors)
                files.set_facts(self.conn, replace(audio, hash=row.hash))
                self.conn.execute("DELETE FROM partial WHERE hash = ?", (row.hash,))
                meta.touched(self.conn)  # its segments become searchable
            elif not files.has_audio(self.conn, row.hash):
                binding = self._bound()
                if audio is None or segments is None or vectors is None or audio.hash != row.hash:
                    raise ValueError(f"New content {row.hash} needs its AudioRow, segments and vectors.")
                files.add_audio(self.conn, audio)
                files.add_segments(self.conn, binding, row.hash, segments, vectors)
            if audio is not None and audio.fingerprint is not None:  # with the content, in the same transaction
                self.set_fingerprints({row.hash: audio.fingerprint})
            files.upsert(
                self.conn, FileRow(row.path, row.root, row.size, row.mtime_ns, row.hash, "ok", row.error, row.tags)
            )
            bound = self.model()
            if bound is not None and files.freeze_centre(self.conn, bound.dim):
                log.info("froze the code centre of %s", self.path)

    def drop_partials(self, keep: Iterable[str] = (), paths: Iterable[str] | None = None) -> int:
        """Forget unfinished contents (all, or those begun for these paths) except the hashes in keep."""
        found = fetch(self.conn, "SELECT hash, path FROM partial")
        wanted = None if paths is None else {norm_path(p) for p in paths}
        kept = set(keep)
        drop = [h for h, p in found if h not in kept and (wanted is None or p in wanted)]
        if drop:
            with self.transaction():
                self.conn.execute(
                    "DELETE FROM partial WHERE hash IN (SELECT value FROM json_each(?))", (json_list(drop),)
                )
                files.collect(self.conn, drop)
        return len(drop)

    def record_failure(self, path: Path | str, root: Path | str, size: int, mtime_ns: int, reason: str) -> None:
        """Remember that path could not be indexed, and why (it is retried when it changes)."""
        with self.transaction():
            files.upsert(self.conn, FileRow(str(path), str(root), size, mtime_ns, None, "failed", reason, {}))

    def move_file(self, old: Path | str, new: Path | str, root: Path | str, size: int, mtime_ns: int) -> None:
        """Give a stored file its new path, keeping its vectors; a file already stored at new is replaced."""
        old_s, new_s = norm_path(old), norm_path(new)
        with self.transaction():
            if old_s != new_s:
                files.remove(self.conn, [new_s])
            sql = (
                "UPDATE files SET path = ?, root = ?, size = ?, mtime_ns = ?, indexed_at = ? WHERE path = ? RETURNING 1"
            )
            cur = self.conn.execute(sql, (new_s, norm_path(root), int(size), int(mtime_ns), time.time(), old_s))
            if not cur.fetchall():  # step RETURNING to the end: an open statement blocks the COMMIT
                raise ValueError(f"{old_s} is not in the index.")

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files, dropping vectors no remaining file shares; returns how many were stored."""
        with self.transaction():
            return files.remove(self.conn, [norm_path(p) for p in paths])

    def fingerprints(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored acoustic fingerprints of those contents that have one."""
        sql = "SELECT hash, print FROM fingerprints WHERE hash IN (SELECT value FROM json_each(?))"
        return {h: bytes(b) for h, b in self.conn.execute(sql, (json_list(hashes),))}

    def set_fingerprints(self, prints: dict[str, bytes]) -> None:
        """Store fingerprints of stored contents (one no longer stored is skipped), in one transaction."""
        sql = "INSERT OR REPLACE INTO fingerprints (hash, print) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM audio WHERE hash = ?1)"
        with self.transaction():
            self.conn.executemany(sql, list(prints.items()))

    def optimize(self) -> None:
        """Save the assembled binary codes for the current segments: one read for the next cold search."""
        with self.transaction():
            search.save_codes(self.conn, str(self.path))

    # ---- search

    def search(
        self, queries: np.ndarray, k: int = 20, filters: Filters | None = None, exact: bool | None = None
    ) -> list[Hit]:
        """The k files whose best segment is closest to any of the query vectors, best first (see search.search)."""
        with self.reading():
            binding = self.model()
            if binding is None:
                return []
            roots = [r.path for r in self.roots()] if filters is not None and filters.under else []
            return search.search(self.conn, str(self.path), binding, roots, queries, k, filters, exact)

    def search_names(self, query: NameQuery, limit: int, filters: Filters | None = None) -> list[Hit]:
        """Ok files whose names and tags match query, best BM25 first; score is the relevance (-BM25)."""
        roots = [r.path for r in self.roots()] if filters is not None and filters.under else []
        cond, params = conditions(filters, roots)
        return fulltext.ranked(self.conn, query, limit, cond, params)

    def names_holding(self, terms: list[str], paths: list[str]) -> dict[str, list[str]]:
        """For each of paths, which of terms its names and tags hold."""
        return fulltext.holding(self.conn, terms, paths)

    def reindex_names(self) -> int:
        """Fill the names index again from the stored files (no audio is read); how many files it holds."""
        with self.transaction():
            return fulltext.refill(self.conn)

    # ---- roots, status, rebuilds

    def mount_root(self, root: Path | str, name: str | None = None) -> str:
        """An SQLite index names a root by its path: that is the name; UsageError for any other."""
        path = norm_path(root)
        if name is not None and name != path:
            raise UsageError(
                f"An SQLite index names its folders by their path, so {path} cannot be called {name!r}; "
                "--root-name needs a shared index (--db postgresql://...)."
            )
        with self.transaction():  # listed from its first file on: an interrupted first run still knows its folder
            roots.add(self.conn, path)
        return path

    def touch_root(self, root: Path | str) -> None:
        """Record that root has just been indexed."""
        with self.transaction():
            roots.touch(self.conn, norm_path(root))

    def forget_root(self, root: Path | str) -> None:
        """Stop listing root as an indexed folder (its files are removed separately)."""
        with self.transaction():
            roots.forget(self.conn, norm_path(root))

    def move_root(self, old: Path | str, new: Path | str) -> int:
        """Re-point the root old, and every file stored under it, to new, in one transaction (see roots.move)."""
        with self.transaction():
            n = roots.move(self.conn, norm_path(old), norm_path(new))
        log.info("moved the root %s to %s (%d files)", old, new, n)
        return n

    def roots(self) -> list[RootRow]:
        """The indexed folders, by path: each named by its path, mounted here, with its file count and state."""
        return roots.listed(self.conn)

    def stats(self) -> Stats:
        """Counts, sizes and failures for `audiofind status`."""
        one = lambda sql: scalar(self.conn, sql)
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        times = (one("SELECT max(indexed_at) FROM files"), one("SELECT max(last_indexed_at) FROM roots"))
        last = [t for t in times if t is not None]
        return Stats(
            path=str(self.path),
            size_bytes=size,
            schema_version=migrations.version(self.conn),
            model=self.model(),
            roots=self.roots(),
            **files.counts(self.conn),
            last_update=max(last) if last else None,
            quantised="centre" in meta.read(self.conn),
        )

    def dump(self, batch: int = 512) -> Iterator[Portion]:
        """Everything this index holds, in portions (see dump.dump), read in one snapshot."""
        with self.reading():
            yield from dump.dump(self.conn, self.model(), self.roots(), batch)

    def load(self, portion: Portion) -> None:
        """Add a portion of another index to this one as it is (see dump.load)."""
        with self.transaction():
            if portion.binding is not None:
                self.bind_model(portion.binding)
            dump.load(self.conn, portion)

    def staging(self) -> "SqliteStore":
        """The file a rebuild of this index is built in, `<db>.rebuild`: new, or what an interrupted rebuild left."""
        return SqliteStore.open(staging_path(self.path), create=True)

    def discard_staging(self) -> None:
        """Delete an unfinished rebuild's file."""
        remove_files(staging_path(self.path))

    def replace_with(self, staged: "SqliteStore") -> None:
        """Rename the finished rebuild over this index, once this index's write-ahead log is empty (else its pages
        would apply to the new file); staged is closed. Readers see the old file or the new one, never a mix."""
        staged.conn.execute("PRAGMA journal_mode=DELETE").fetchall()  # one self-contained file, ready to be renamed
        staged.close()
        empty_log(self.conn, self.path, staged.path)
        self.close()
        os.replace(staged.path, self.path)
