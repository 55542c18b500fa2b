"""The index: one SQLite file (APSW + sqlite-vec) holding files, their audio, segments and vectors.

Audio is keyed by content hash, so copies share vectors and a moved file is never embedded again. Each file is
written in one transaction and the model runs outside them, so a killed run leaves only complete files. Search
scores each file by its best segment: exactly on small or tightly filtered sets, otherwise by Hamming distance on
binary codes of centred vectors followed by exact re-scoring of the best candidates.
"""

import contextlib
import json
import logging
import shlex
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Self

import apsw
import numpy as np

from audiofind.errors import IndexBusy, IndexNotFound, SchemaMismatch, StorageError
from audiofind.paths import default_db
from audiofind.store import vectors as vec
from audiofind.store.records import (
    BINDING_KEYS,
    AudioRow,
    FileRow,
    ModelBinding,
    RootRow,
    Stats,
    folder_prefix,
    norm_path,
)
from audiofind.store.sqlite import migrations
from audiofind.store.sqlite.connection import connect, lock, storage_error, unlock

if TYPE_CHECKING:
    from audiofind.store.sqlite.nearest import Filters, Hit

log = logging.getLogger(__name__)

# vec0 reads a whole chunk to return one row: 16 vectors a chunk keeps re-scoring 1000 candidates near 15 ms at
# 100k x 1024, where the default 1024 costs ~290 ms; brute-force KNN speed is the same.
CHUNK_SIZE = 16
CENTRE_AFTER = 1024  # segments stored before the centre of the binary codes is frozen


class Index:
    """An open index database; get one with Index.open(path)."""

    def __init__(self, path: Path, conn: apsw.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: Path | str, create: bool = True) -> Self:
        """Open (and migrate) the index at path; IndexNotFound if it is missing and create is False."""
        path = Path(norm_path(path))
        if not path.exists():
            if not create:
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

    def writer_lock(self) -> "contextlib.AbstractContextManager[None]":
        """Hold the OS lock on <db>.lock for the duration; IndexBusy if another writer holds it."""
        return writer_lock(self.path)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (a batch of files) into one transaction; each write inside stays atomic on its own."""
        with migrations.write_transaction(self.conn):
            yield

    # The model binding.

    def _meta(self) -> dict[str, object]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def model(self) -> ModelBinding | None:
        """The model and segmenting this index was built with, or None before the first bind."""
        return ModelBinding.from_meta(self._meta())

    def bind_model(self, binding: ModelBinding) -> None:
        """Record the model on an empty index; SchemaMismatch if vectors of another model are already stored."""
        if binding.dim <= 0:
            raise ValueError(f"Vector dimension must be positive, got {binding.dim}.")
        with self.transaction():
            current = self.model()
            if current is not None and current.same_vectors(binding):
                if current.name != binding.name:
                    self.conn.execute("UPDATE meta SET value = ? WHERE key = 'model_name'", (binding.name,))
                return
            if current is not None and self.conn.execute("SELECT 1 FROM audio LIMIT 1").fetchone():
                raise SchemaMismatch(self._mismatch(current, binding))
            self.conn.execute("DROP TABLE IF EXISTS vectors")
            self.conn.execute(
                f"CREATE VIRTUAL TABLE vectors USING vec0("
                f"embedding float[{int(binding.dim)}] distance_metric=cosine, chunk_size={CHUNK_SIZE})"
            )
            self.conn.execute("DELETE FROM meta")
            self.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", zip(BINDING_KEYS, binding.values()))
        log.info("bound %s to model %s (%d-d)", self.path, binding.name, binding.dim)

    def check_model(self, binding: ModelBinding) -> None:
        """Raise SchemaMismatch if this index was built with another model or segmenting."""
        current = self.model()
        if current is not None and not current.same_vectors(binding):
            raise SchemaMismatch(self._mismatch(current, binding))

    def _mismatch(self, current: ModelBinding, asked: ModelBinding) -> str:
        roots = " ".join(shlex.quote(r.path) for r in self.roots()) or "PATH..."
        db = "" if self.path == Path(norm_path(default_db())) else f" --db {shlex.quote(str(self.path))}"
        fix = f"Rebuild it with: audiofind index --rebuild{db} {roots}"
        if (current.sha256, current.dim) != (asked.sha256, asked.dim):
            fix = f"Rebuild it with: audiofind index --rebuild -w {shlex.quote(asked.name)}{db} {roots}"
            return (
                f"This index was built with model '{current.name}' (sha256 {current.sha256[:12]}...); "
                f"you asked for '{asked.name}'. {fix}"
            )
        if current.precision != asked.precision:
            fix = f"Rebuild it with: audiofind index --rebuild --precision {asked.precision}{db} {roots}"
            return (
                f"This index holds {current.precision} embeddings; you asked for {asked.precision}, which rank "
                f"differently. Use --precision {current.precision}, or {fix[0].lower()}{fix[1:]}"
            )
        return (
            f"This index was built with {current.window:g} s windows every {current.hop:g} s; "
            f"you asked for {asked.window:g} s windows every {asked.hop:g} s. {fix}"
        )

    def reset(self) -> None:
        """Delete every file, root, segment and vector, and the model binding (for --rebuild)."""
        with self.transaction():
            for table in ("files", "partial", "segments", "audio", "roots", "meta", "codes_cache"):
                self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("DROP TABLE IF EXISTS vectors")
        log.info("reset %s", self.path)

    # Files.

    def _file_rows(self, where: str, params: tuple | list) -> list[FileRow]:
        sql = f"SELECT path, root, size, mtime_ns, hash, status, error, tags, indexed_at FROM files WHERE {where}"
        return [FileRow(*r[:7], tags=json.loads(r[7]), indexed_at=r[8]) for r in self.conn.execute(sql, params)]

    def get_file(self, path: Path | str) -> FileRow | None:
        """The stored row for path, or None."""
        rows = self._file_rows("path = ?", (norm_path(path),))
        return rows[0] if rows else None

    def files_under(self, roots: list[Path] | list[str]) -> list[FileRow]:
        """Every stored file at or below any of roots, ordered by path."""
        where, params = [], []
        for root in roots:
            where.append("path = ? OR substr(path, 1, ?) = ?")
            prefix = folder_prefix(norm_path(root))
            params += [norm_path(root), len(prefix), prefix]
        if not where:
            return []
        return self._file_rows(" OR ".join(f"({w})" for w in where) + " ORDER BY path", params)

    def has_audio(self, hash: str) -> bool:
        """Whether vectors for this content are already stored (so a copy or a moved file needs no model run)."""
        sql = "SELECT 1 FROM audio WHERE hash = ? AND hash NOT IN (SELECT hash FROM partial)"
        return self.conn.execute(sql, (hash,)).fetchone() is not None

    def partial_segments(self, hash: str) -> int:
        """How many leading windows of an unfinished content are already committed (0 if none)."""
        if not self.conn.execute("SELECT 1 FROM partial WHERE hash = ?", (hash,)).fetchone():
            return 0
        return self.conn.execute("SELECT count(*) FROM segments WHERE hash = ?", (hash,)).fetchone()[0]

    def partial_duration(self, hash: str) -> float:
        """Seconds covered by the committed windows of an unfinished content."""
        row = self.conn.execute("SELECT duration FROM audio WHERE hash = ?", (hash,)).fetchone()
        return float(row[0]) if row else 0.0

    def add_segments(
        self, hash: str, path: str, audio: AudioRow, segments: list[tuple[float, float]], vectors: np.ndarray
    ) -> None:
        """Commit the next windows of a content still being embedded; hidden from search until add_file ends it."""
        with self.transaction():
            fresh = not self.conn.execute("SELECT 1 FROM audio WHERE hash = ?", (hash,)).fetchone()
            if fresh:
                self._add_audio(hash, audio, [], np.zeros((0, vectors.shape[-1]), np.float32))
                self.conn.execute("INSERT INTO partial (hash, path) VALUES (?, ?)", (hash, norm_path(path)))
            elif not self.conn.execute("SELECT 1 FROM partial WHERE hash = ?", (hash,)).fetchone():
                raise ValueError(f"Content {hash} is complete already; it takes no more segments.")
            self._add_segments(hash, segments, vectors)
            self.conn.execute("UPDATE audio SET duration = ? WHERE hash = ?", (float(audio.duration), hash))

    def drop_partials(self, keep: Iterable[str] = (), paths: Iterable[str] | None = None) -> int:
        """Forget unfinished contents (all, or those begun for these paths) except the hashes in keep."""
        rows = self.conn.execute("SELECT hash, path FROM partial").fetchall()
        wanted = None if paths is None else {norm_path(p) for p in paths}
        drop = [h for h, p in rows if h not in set(keep) and (wanted is None or p in wanted)]
        if drop:
            with self.transaction():
                self.conn.execute("DELETE FROM partial WHERE hash IN (SELECT value FROM json_each(?))", (json.dumps(drop),))
                self._collect(drop)
        return len(drop)

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
            if self.conn.execute("SELECT 1 FROM partial WHERE hash = ?", (row.hash,)).fetchone():
                if audio is None or segments is None or vectors is None:
                    raise ValueError(f"Content {row.hash} is unfinished: add_file needs its last segments.")
                self._add_segments(row.hash, segments, vectors)
                sql = "UPDATE audio SET duration = ?, sample_rate = ?, channels = ? WHERE hash = ?"
                self.conn.execute(sql, (float(audio.duration), int(audio.sample_rate), int(audio.channels), row.hash))
                self.conn.execute("DELETE FROM partial WHERE hash = ?", (row.hash,))
                self._touched()  # its segments become searchable
            elif not self.has_audio(row.hash):
                self._add_audio(row.hash, audio, segments, vectors)
            self._upsert(norm_path(row.path), row.root, row.size, row.mtime_ns, row.hash, "ok", None, row.tags)
            self._freeze_centre()

    def _add_audio(self, hash: str, audio: AudioRow | None, segments: list | None, vectors: np.ndarray | None) -> None:
        binding = self.model()
        if binding is None:
            raise ValueError("Bind a model (Index.bind_model) before adding vectors.")
        if audio is None or segments is None or vectors is None or audio.hash != hash:
            raise ValueError(f"New content {hash} needs its AudioRow, segments and vectors.")
        self.conn.execute(
            "INSERT INTO audio (hash, duration, sample_rate, channels) VALUES (?, ?, ?, ?)",
            (hash, float(audio.duration), int(audio.sample_rate), int(audio.channels)),
        )
        self._add_segments(hash, segments, vectors)

    def _add_segments(self, hash: str, segments: list[tuple[float, float]], vectors: np.ndarray) -> None:
        binding = self.model()
        if binding is None:
            raise ValueError("Bind a model (Index.bind_model) before adding vectors.")
        v = vec.normalize(vectors) if len(segments) else np.zeros((0, binding.dim), np.float32)
        if v.shape != (len(segments), binding.dim):
            raise ValueError(f"Expected vectors of shape ({len(segments)}, {binding.dim}), got {v.shape}.")
        centre = self._meta().get("centre")
        codes = vec.binary_codes(v, np.frombuffer(centre, np.float32)) if isinstance(centre, bytes) else None
        for i, (start, end) in enumerate(segments):
            code = codes[i].tobytes() if codes is not None else None
            sql = 'INSERT INTO segments (hash, start, "end", code) VALUES (?, ?, ?, ?)'
            self.conn.execute(sql, (hash, float(start), float(end), code))
            sql = "INSERT INTO vectors (rowid, embedding) VALUES (?, ?)"
            self.conn.execute(sql, (self.conn.last_insert_rowid(), vec.to_blob(v[i])))
        if len(segments):
            self._touched()

    def _upsert(
        self, path: str, root: str, size: int, mtime_ns: int, hash: str | None, status: str, error: str | None,
        tags: dict,
    ) -> None:
        old = self.conn.execute("SELECT hash FROM files WHERE path = ?", (path,)).fetchone()
        tags_json = json.dumps(tags, ensure_ascii=False, sort_keys=True)
        self.conn.execute(
            """INSERT INTO files (path, root, size, mtime_ns, hash, status, error, tags, indexed_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET root = excluded.root, size = excluded.size, mtime_ns = excluded.mtime_ns,
                 hash = excluded.hash, status = excluded.status, error = excluded.error, tags = excluded.tags,
                 indexed_at = excluded.indexed_at""",
            (path, norm_path(root), int(size), int(mtime_ns), hash, status, error, tags_json, time.time()),
        )
        if old and old[0] and old[0] != hash:
            self._collect([old[0]])

    def record_failure(self, path: Path | str, root: Path | str, size: int, mtime_ns: int, reason: str) -> None:
        """Remember that path could not be indexed, and why (it is retried when it changes)."""
        with self.transaction():
            self._upsert(norm_path(path), str(root), size, mtime_ns, None, "failed", reason, {})

    def move_file(self, old: Path | str, new: Path | str, root: Path | str, size: int, mtime_ns: int) -> None:
        """Give a stored file its new path, keeping its vectors; a file already stored at new is replaced."""
        old_s, new_s = norm_path(old), norm_path(new)
        with self.transaction():
            if old_s != new_s:
                self._remove([new_s])
            sql = "UPDATE files SET path = ?, root = ?, size = ?, mtime_ns = ?, indexed_at = ? WHERE path = ? RETURNING 1"
            cur = self.conn.execute(sql, (new_s, norm_path(root), int(size), int(mtime_ns), time.time(), old_s))
            if not cur.fetchall():  # step RETURNING to the end: an open statement blocks the COMMIT
                raise ValueError(f"{old_s} is not in the index.")

    def remove_files(self, paths: Iterable[Path | str]) -> int:
        """Forget these files, dropping vectors no remaining file shares; returns how many were stored."""
        with self.transaction():
            return self._remove([norm_path(p) for p in paths])

    def _remove(self, paths: list[str]) -> int:
        rows = self.conn.execute(
            "DELETE FROM files WHERE path IN (SELECT value FROM json_each(?)) RETURNING hash", (json.dumps(paths),)
        ).fetchall()
        self._collect({h for (h,) in rows if h})
        return len(rows)

    def _collect(self, hashes: Iterable[str]) -> None:
        """Drop the audio, segments and vectors of hashes that no file references any more."""
        referenced = "SELECT 1 FROM files WHERE hash = ?1 UNION ALL SELECT 1 FROM partial WHERE hash = ?1"
        orphans = [h for h in hashes if not self.conn.execute(referenced, (h,)).fetchone()]
        if not orphans:
            return
        among = (json.dumps(orphans),)
        sql = "SELECT id FROM segments WHERE hash IN (SELECT value FROM json_each(?))"
        ids = [i for (i,) in self.conn.execute(sql, among)]
        self.conn.executemany("DELETE FROM vectors WHERE rowid = ?", ((i,) for i in ids))
        self.conn.execute("DELETE FROM segments WHERE hash IN (SELECT value FROM json_each(?))", among)
        self.conn.execute("DELETE FROM audio WHERE hash IN (SELECT value FROM json_each(?))", among)
        self._touched()
        log.debug("dropped %d unreferenced contents (%d segments)", len(orphans), len(ids))

    def _touched(self) -> None:
        """Note that the searchable segments changed, so saved codes no longer describe them."""
        sql = "INSERT INTO meta (key, value) VALUES ('segments_version', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
        self.conn.execute(sql)

    def save_codes(self) -> None:
        """Store the assembled binary codes for the current segments (writers call it once a run is done)."""
        from audiofind.store.sqlite import nearest

        codes = nearest._codes(self)
        with self.transaction():
            self.conn.execute("DELETE FROM codes_cache")
            version = self._meta().get("segments_version")
            if codes is not None and version is not None:
                self.conn.execute("INSERT INTO codes_cache (version, blob) VALUES (?, ?)", (version, codes.to_bytes()))

    def _freeze_centre(self) -> None:
        """Once the index is big enough, fix the centre of the binary codes and code every segment."""
        if "centre" in self._meta():
            return
        if self.conn.execute("SELECT count(*) FROM segments").fetchone()[0] < CENTRE_AFTER:
            return
        ids = [i for (i,) in self.conn.execute("SELECT id FROM segments ORDER BY id")]
        found, v = self._fetch(ids)
        centre = v.mean(axis=0).astype(np.float32)  # (D,)
        codes = vec.binary_codes(v, centre)
        rows = ((code.tobytes(), int(i)) for code, i in zip(codes, found))
        self.conn.executemany("UPDATE segments SET code = ? WHERE id = ?", rows)
        self.conn.execute("INSERT INTO meta (key, value) VALUES ('centre', ?)", (centre.tobytes(),))
        self._touched()
        log.info("froze the code centre of %s over %d segments", self.path, len(ids))

    def search(self, queries: np.ndarray, k: int = 20, filters: "Filters | None" = None, exact: bool | None = None) -> list["Hit"]:
        """The k files whose best segment is closest to any of the query vectors, best first (see nearest.search)."""
        from audiofind.store.sqlite import nearest

        return nearest.search(self, queries, k, filters, exact)

    def segment_vectors(self, hash: str) -> tuple[list[tuple[float, float]], np.ndarray]:
        """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
        sql = 'SELECT id, start, "end" FROM segments WHERE hash = ? ORDER BY start, id'
        rows = self.conn.execute(sql, (hash,)).fetchall()
        _, v = self._fetch([i for i, _, _ in rows])  # in the order asked; segments and vectors are written together
        return [(start, end) for _, start, end in rows], v

    def _fetch(self, ids: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of these segment ids in order: (found ids (M,), vectors (M, D)); missing ids are skipped."""
        # One point query per id: 2.5x faster than `rowid IN (...)`, which vec0 0.1.9 does not turn into lookups.
        found, blobs = [], []
        for i in ids:
            row = self.conn.execute("SELECT embedding FROM vectors WHERE rowid = ?", (int(i),)).fetchone()
            if row is not None:
                found.append(int(i))
                blobs.append(row[0])
        binding = self.model()
        return np.array(found, dtype=np.int64), vec.from_blobs(blobs, binding.dim if binding else 0)

    # Roots and status.

    def touch_root(self, root: Path | str) -> None:
        """Record that root has just been indexed."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO roots (path, last_indexed_at) VALUES (?, ?) "
                "ON CONFLICT(path) DO UPDATE SET last_indexed_at = excluded.last_indexed_at",
                (norm_path(root), time.time()),
            )

    def forget_root(self, root: Path | str) -> None:
        """Stop listing root as an indexed folder (its files are removed separately)."""
        with self.transaction():
            self.conn.execute("DELETE FROM roots WHERE path = ?", (norm_path(root),))

    def roots(self) -> list[RootRow]:
        """The indexed folders, by path."""
        return [RootRow(*r) for r in self.conn.execute("SELECT path, last_indexed_at FROM roots ORDER BY path")]

    def stats(self) -> Stats:
        """Counts, sizes and failures for `audiofind status`."""
        one = lambda sql: self.conn.execute(sql).fetchone()[0]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        times = (one("SELECT max(indexed_at) FROM files"), one("SELECT max(last_indexed_at) FROM roots"))
        last = [t for t in times if t is not None]
        return Stats(
            path=self.path,
            size_bytes=size,
            schema_version=migrations.version(self.conn),
            model=self.model(),
            roots=self.roots(),
            files=one("SELECT count(*) FROM files"),
            ok=one("SELECT count(*) FROM files WHERE status = 'ok'"),
            failed=one("SELECT count(*) FROM files WHERE status = 'failed'"),
            audio=one("SELECT count(*) FROM audio"),
            segments=one("SELECT count(*) FROM segments"),
            audio_seconds=one("SELECT coalesce(sum(a.duration), 0.0) FROM files f JOIN audio a ON a.hash = f.hash"),
            failures=list(self.conn.execute("SELECT path, error FROM files WHERE status = 'failed' ORDER BY path")),
            last_update=max(last) if last else None,
            quantised="centre" in self._meta(),
        )

def peek_model(db: Path | str) -> ModelBinding | None:
    """The model an existing index was built with, read without migrating or creating anything (None if none)."""
    path = Path(norm_path(db))
    if not path.is_file():
        return None
    conn = connect(path, create=False)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            return None
        m = dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()
    return ModelBinding.from_meta(m)


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


def open_index(db: Path | str | None = None, create: bool = False) -> Index:
    """Open the index at db, or at the default location (AUDIOFIND_DB, then the user data folder) when None."""
    return Index.open(db if db else default_db(), create=create)
