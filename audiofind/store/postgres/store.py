"""The PostgreSQL backend of the store protocol: a team's shared index on a server with pgvector.

Tables live in the schema `audiofind` of the URL's database (`audiofind_rebuild` while `index --rebuild` builds a
replacement, swapped in by two renames in one transaction). Several writers work at once: each file is one
transaction, contents are serialised by advisory locks, and a writer claims what it embeds (`claim`), so two
writers never embed the same content; a session that dies drops its claims with it. Files are stored below named
roots (see roots.py), so machines that mount a share in different places share its files.
"""

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Self

import numpy as np
from psycopg.types.json import Jsonb

from audiofind.errors import IndexBusy, IndexNotFound, ModelMismatch, StorageError
from audiofind.store import rootmap
from audiofind.store.postgres import dump, files, fulltext, migrations, rows, search
from audiofind.store.postgres.connection import SCHEMA, STAGING, Db, connect, key
from audiofind.store.postgres.filters import conditions
from audiofind.store.postgres.roots import Places, copy_roots
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

log = logging.getLogger(__name__)

FEATURES = Features(shared_writers=True, swap_file=False)


class PostgresStore:
    """An open PostgreSQL index; get one with PostgresStore.open(url) (or store.open_store)."""

    features = FEATURES

    def __init__(self, db: Db) -> None:
        self.db = db
        self.url = db.url
        self.location = db.location
        self.places = Places(db)
        self.claims: set[str] = set()
        self.to_release: set[str] = set()  # claims to give back when the outermost transaction commits

    @classmethod
    def open(cls, url: str, create: bool = True, schema: str = SCHEMA) -> Self:
        """Open (and migrate) the index at url; IndexNotFound if it has none and create is False."""
        db = connect(url, schema)
        try:
            if not create and not migrations.applied(db):
                raise IndexNotFound(f"No index at {db.location}; build one with: audiofind index --db URL FOLDER")
            migrations.migrate(db)
            store = cls(db)
            if create:
                store.check_writable()
        except BaseException:
            db.close()
            raise
        return store

    def close(self) -> None:
        """End the session (its claims end with it)."""
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_writable(self) -> None:
        """StorageError, in one line, if this role can only read the index."""
        sql = (
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' AND "
            "bool_and(has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE')) FROM pg_class c "
            "WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind = 'r'"
        )
        if not self.db.value(sql, (self.db.schema,)):
            raise StorageError(
                f"The role {self.db.conn.info.user} can only read the index at {self.location}, so `audiofind index` "
                "cannot write with it; search and status work as they are (for writing, ask the index's owner for "
                "INSERT, UPDATE and DELETE on its tables, or use another role)."
            )

    def writer_lock(self) -> AbstractContextManager[None]:
        """Writers share this index (features.shared_writers): only check that this role may write."""
        self.check_writable()
        return nullcontext()

    def claim(self, hash: str, wait: bool = False) -> bool:
        """Take the right to embed this content (a session-level advisory lock); False if another live writer has it."""
        if hash in self.claims:
            return True
        lock = key("claim", self.db.schema, hash)
        if wait:
            with self.db.transaction():  # the session lock outlives this transaction; no lock_timeout while waiting
                self.db.execute("SET LOCAL lock_timeout = 0")
                self.db.execute("SELECT pg_advisory_lock(%s)", (lock,))
        elif not self.db.value("SELECT pg_try_advisory_lock(%s)", (lock,)):
            return False
        self.claims.add(hash)
        return True

    def release(self, hash: str) -> None:
        """Give a claim back; an unheld one is nothing to give."""
        if hash in self.claims:
            self.db.execute("SELECT pg_advisory_unlock(%s)", (key("claim", self.db.schema, hash),))
            self.claims.discard(hash)
            self.to_release.discard(hash)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction (nested ones are savepoints); each write inside stays atomic."""
        outer = not self.db.in_transaction
        try:
            with self.db.transaction():
                yield
        except BaseException:
            if outer:
                self.to_release.clear()  # rolled back: the unfinished contents are still ours to finish
            raise
        if outer:
            for hash in sorted(self.to_release):
                self.release(hash)

    def reading(self) -> AbstractContextManager[None]:
        """One snapshot (REPEATABLE READ) for everything read inside, while writers commit."""
        return self.db.reading()

    # ---- the model binding

    def model(self) -> ModelBinding | None:
        """The model and segmenting this index was built with, or None before the first bind."""
        return ModelBinding.from_meta(rows.meta(self.db))

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
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (key("bind", self.db.schema),))
            current = self.model()
            if current is not None and current.same_vectors(binding):
                if current.name != binding.name:
                    self.db.execute("UPDATE meta SET value = %s WHERE key = 'model_name'", (Jsonb(binding.name),))
                return
            if current is not None and self.db.one("SELECT 1 FROM audio LIMIT 1"):
                raise self._mismatch(current, binding)
            rows.bind(self.db, binding)
        log.info("bound %s to model %s (%d-d)", self.location, binding.name, binding.dim)

    def check_model(self, binding: ModelBinding) -> None:
        """Raise ModelMismatch if this index was built with another model, precision or segmenting."""
        current = self.model()
        if current is not None and not current.same_vectors(binding):
            raise self._mismatch(current, binding)

    def _mismatch(self, current: ModelBinding, asked: ModelBinding) -> ModelMismatch:
        return ModelMismatch(current, asked, self.location, [r.path for r in self.roots()])

    def reset(self) -> None:
        """Delete every file, root, segment and vector, and the model binding (the vector columns stay, for the next
        bind to keep or change)."""
        with self.transaction():
            rows.clear(self.db, truncate=search.owner(self.db))
            search.drop_index(self.db)  # rebuilt when the new content is large enough (a bulk load is faster without)
        self.places.reload()
        log.info("reset %s", self.location)

    # ---- files: reading

    def get_file(self, path: Path | str) -> FileRow | None:
        """The stored row for path, or None."""
        return files.get(self.db, self.places, path)

    def files_under(self, roots: Iterable[Path | str]) -> list[FileRow]:
        """Every stored file at or below any of roots (local folders or `NAME:` prefixes), ordered by path."""
        return files.under(self.db, self.places, roots)

    def file_entry(self, file_id: int) -> FileEntry | None:
        """The ok file with this id, or None (unknown id, or a file that failed to index)."""
        return files.entry(self.db, self.places, file_id)

    def file_ids(self, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
        """path -> (file id, its root) for the paths that are in the index."""
        return files.ids(self.db, self.places, paths)

    def has_audio(self, hash: str) -> bool:
        """Whether vectors for this content are already stored (so a copy or a moved file needs no model run)."""
        return rows.has_audio(self.db, hash)

    def partial_segments(self, hash: str) -> int:
        """How many leading windows of an unfinished content are already committed (0 if none)."""
        if not rows.is_partial(self.db, hash):
            return 0
        return self.db.value("SELECT count(*) FROM segments WHERE hash = %s", (hash,))

    def partial_duration(self, hash: str) -> float:
        """Seconds covered by the committed windows of an unfinished content."""
        found = self.db.value("SELECT duration FROM audio WHERE hash = %s", (hash,))
        return float(found) if found is not None else 0.0

    def segment_vectors(self, hash: str) -> tuple[list[tuple[float, float]], np.ndarray]:
        """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
        binding = self.model()
        return rows.segment_vectors(self.db, hash, binding.dim if binding else 0)

    # ---- files: writing

    def add_segments(
        self, hash: str, path: str, audio: AudioRow, segments: list[tuple[float, float]], vectors: np.ndarray
    ) -> None:
        """Commit the next windows of a content still being embedded (claiming it); hidden from search until
        add_file ends it."""
        if not self.claim(hash):
            raise IndexBusy(
                f"Another writer is embedding the content of {path} right now; index it again once that writer is done."
            )
        with self.transaction():
            files.add_segments(self.db, self.places, self._bound(), hash, path, audio, segments, vectors)

    def add_file(
        self,
        row: FileRow,
        audio: AudioRow | None = None,
        segments: list[tuple[float, float]] | None = None,
        vectors: np.ndarray | None = None,  # (len(segments), D), normalised here
    ) -> None:
        """Store one indexed file in one transaction; audio, segments and vectors are used only if its hash is new."""
        with self.transaction():
            if files.add(self.db, self.places, row, audio, segments, vectors):
                self.to_release.add(str(row.hash))  # its claim goes once this commits

    def drop_partials(self, keep: Iterable[str] = (), paths: Iterable[str] | None = None) -> int:
        """Forget unfinished contents (all, or those begun for these paths) but the hashes in keep, and those another
        live writer is embedding now; how many."""
        found = self.db.execute("SELECT hash, root_id, relpath FROM partial").fetchall()
        wanted = None if paths is None else {(a[0].id, a[1]) for p in paths if (a := self.places.locate(str(p)))}
        kept = set(keep)
        drop = [h for h, r, rel in found if h not in kept and (wanted is None or (r, rel) in wanted)]
        drop = [h for h in drop if self.claim(h)]  # a live writer's unfinished content is its own
        if drop:
            with self.transaction():
                self.db.execute("DELETE FROM partial WHERE hash = ANY(%s)", (drop,))
                rows.collect(self.db, drop)
                self.to_release.update(drop)
        return len(drop)

    def record_failure(self, path: Path | str, root: Path | str, size: int, mtime_ns: int, reason: str) -> None:
        """Remember that path could not be indexed, and why (it is retried when it changes)."""
        with self.transaction():
            files.fail(self.db, self.places, path, root, size, mtime_ns, reason)

    def move_file(self, old: Path | str, new: Path | str, root: Path | str, size: int, mtime_ns: int) -> None:
        """Give a stored file its new path, keeping its vectors; a file already stored at new is replaced."""
        with self.transaction():
            files.move(self.db, self.places, old, new, root, size, mtime_ns)

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files, dropping vectors no remaining file shares; files under roots this machine does not
        mount are never removed from here. How many were stored."""
        with self.transaction():
            return files.remove(self.db, self.places, paths)

    def fingerprints(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored acoustic fingerprints of those contents that have one."""
        return rows.fingerprints(self.db, hashes)

    def set_fingerprints(self, prints: dict[str, bytes]) -> None:
        """Store fingerprints of stored contents (one no longer stored is skipped), in one transaction."""
        with self.transaction():
            rows.set_fingerprints(self.db, prints)

    def optimize(self) -> None:
        """Code what was stored before the centre was seen, and build the HNSW index once it is worth having."""
        binding = self.model()
        if binding is not None:
            with self.transaction():
                rows.fill_codes(self.db, binding.dim)
            search.optimize(self.db)

    # ---- search

    def search(
        self, queries: np.ndarray, k: int = 20, filters: Filters | None = None, exact: bool | None = None
    ) -> list[Hit]:
        """The k files whose best segment is closest to any of the query vectors, best first (see search.search)."""
        with self.reading():
            return search.search(self.db, self.places, queries, k, filters, exact)

    def search_names(self, query: NameQuery, limit: int, filters: Filters | None = None) -> list[Hit]:
        """Ok files whose names and tags match query, best BM25 first; score is the relevance."""
        with self.reading():
            cond, params = conditions(filters, self.places)
            return fulltext.ranked(self.db, self.places, query, limit, cond, params)

    def names_holding(self, terms: list[str], paths: list[str]) -> dict[str, list[str]]:
        """For each of paths, which of terms its names and tags hold."""
        return fulltext.holding(self.db, self.places, terms, paths)

    def reindex_names(self) -> int:
        """Fill the names index again from the stored files (no audio is read); how many files it holds."""
        with self.transaction():
            return fulltext.refill(self.db, self.places)

    # ---- roots, status, rebuilds

    def mount_root(self, root: Path | str, name: str | None = None) -> str:
        """Map the folder root on this machine to the root called name (see the protocol); the name."""
        with self.transaction():
            return self.places.mount(str(root), name).name

    def touch_root(self, root: Path | str) -> None:
        """Record that root has just been indexed."""
        r = self.places.ensure(str(root))
        with self.transaction():
            self.db.execute("UPDATE roots SET last_indexed_at = %s WHERE id = %s", (time.time(), r.id))

    def forget_root(self, root: Path | str) -> None:
        """Stop mapping root on this machine; the root goes once no file and no other machine uses it."""
        with self.transaction():
            self.places.forget(norm_path(root))
        self.places.reload()

    def move_root(self, old: Path | str, new: Path | str) -> int:
        """Re-point this machine's mount of the root at old to new (see roots.Places.move); its name, its files and
        other machines' mounts stay. A mapping made with `roots map` follows. How many files it holds."""
        with self.transaction():
            root = self.places.move(norm_path(old), norm_path(new))
            n = self.db.value("SELECT count(*) FROM files WHERE root_id = %s", (root.id,))
        if root.name in rootmap.read():  # it wins over the mounts table: it must say the same
            rootmap.write(root.name, norm_path(new))
        self.places.reload()
        log.info("moved the root %s from %s to %s (%d files)", root.name, old, new, n)
        return int(n)

    def roots(self) -> list[RootRow]:
        """Every root, by path: its path here (or `NAME:`), name, whether mounted here, file count and state."""
        self.places.reload()
        return self.places.rows()

    def stats(self) -> Stats:
        """Counts, sizes and failures for `audiofind status`."""
        with self.reading():
            return dump.stats(self.db, self.places, self.model(), self.roots())

    def dump(self, batch: int = 512) -> Iterator[Portion]:
        """Everything this index holds, in portions (see dump.dump), read in one snapshot."""
        with self.reading():
            yield from dump.dump(self.db, self.places, self.model(), self.roots(), batch)

    def load(self, portion: Portion) -> None:
        """Add a portion of another index to this one as it is (see dump.load)."""
        with self.transaction():
            if portion.binding is not None:
                self.bind_model(portion.binding)
            dump.load(self.db, self.places, self._bound() if portion.contents else None, portion)

    def staging(self) -> "PostgresStore":
        """The schema a rebuild of this index is built in: new, or what an interrupted rebuild left."""
        staged = PostgresStore.open(self.url, create=True, schema=STAGING)
        with staged.transaction():  # the same roots, by name and mount: a rebuild keeps every machine's names
            copy_roots(staged.db, SCHEMA)
        staged.places.reload()
        return staged

    def discard_staging(self) -> None:
        """Drop an unfinished rebuild's schema."""
        self.db.execute(f"DROP SCHEMA IF EXISTS {STAGING} CASCADE")

    def replace_with(self, staged: "PostgresStore") -> None:
        """Swap the finished rebuild in, in one transaction (two renames, then the old schema dropped); staged and
        this store are closed. Readers see the old index or the new one, never a mix."""
        staged.close()
        dump.swap(self.db, STAGING)
        self.close()


def peek_model(url: str) -> ModelBinding | None:
    """The model an existing index was built with, read without migrating or creating anything (None if none)."""
    db = connect(url)
    try:
        if db.value("SELECT to_regclass(%s)", (f"{db.schema}.meta",)) is None:
            return None
        return ModelBinding.from_meta(rows.meta(db))
    finally:
        db.close()
