"""The whole PostgreSQL index at once: its status, read out in portions and written back (`db copy`, bit for
bit, bulk through binary COPY), and the schema swap that ends a rebuild."""

import os
from collections.abc import Iterator

import numpy as np
import psycopg
from psycopg import errors as pg
from psycopg.types.json import Jsonb

from audiofind.errors import StorageError
from audiofind.store.postgres import fulltext, migrations, rows
from audiofind.store.postgres.connection import Db, key, storage_error
from audiofind.store.postgres.roots import Places, check_name
from audiofind.store.records import AudioRow, Content, FileRow, ModelBinding, PlacedFile, Portion, RootRow, Stats


def stats(db: Db, places: Places, binding: ModelBinding | None, roots: list[RootRow]) -> Stats:
    """Counts, sizes and failures for `audiofind status` (inside the caller's read)."""
    size = db.value(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'm')",
        (db.schema,),
    )
    files, ok, failed, last = db.one(
        "SELECT count(*), count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status = 'failed'), "
        "max(indexed_at) FROM files"
    )
    seconds = db.value("SELECT coalesce(sum(a.duration), 0.0) FROM files f JOIN audio a ON a.hash = f.hash")
    failures = db.execute("SELECT root_id, relpath, error FROM files WHERE status = 'failed'").fetchall()
    warned = db.execute(
        "SELECT root_id, relpath, error FROM files WHERE status = 'ok' AND error IS NOT NULL"
    ).fetchall()
    times = [t for t in (last, *(r.last_indexed_at for r in roots)) if t is not None]
    return Stats(
        path=db.location,
        size_bytes=int(size),
        schema_version=migrations.version(db),
        model=binding,
        roots=roots,
        files=files,
        ok=ok,
        failed=failed,
        audio=db.value("SELECT count(*) FROM audio"),
        segments=db.value("SELECT count(*) FROM segments"),
        audio_seconds=float(seconds),
        failures=sorted((places.path(r, rel), error) for r, rel, error in failures),
        warnings=sorted((places.path(r, rel), error) for r, rel, error in warned),
        last_update=max(times) if times else None,
        quantised=rows.centre(db) is not None,
    )


def dump(db: Db, places: Places, binding: ModelBinding | None, roots: list[RootRow], batch: int) -> Iterator[Portion]:
    """Portions of the whole index, for another store's load: binding, centre and roots, contents, files."""
    yield Portion(binding, rows.centre(db), roots)
    if binding is None:
        return
    sql = "SELECT hash FROM audio a WHERE NOT EXISTS (SELECT 1 FROM partial p WHERE p.hash = a.hash) ORDER BY hash"
    hashes = [h for (h,) in db.execute(sql)]
    for start in range(0, len(hashes), batch):
        yield Portion(contents=_contents(db, hashes[start : start + batch], binding.dim))
    sql = f"SELECT {rows.FILE_COLUMNS} FROM files f WHERE f.id > %s ORDER BY f.id LIMIT %s"
    last = 0
    while found := db.execute(sql, (last, batch)).fetchall():
        placed = []
        for id, root_id, rel, size, mtime_ns, hash, status, error, tags, at in found:
            root = places.root(root_id)
            row = FileRow(root.path(rel), root.label, size, mtime_ns, hash, status, error, rows.sorted_tags(tags), at)
            placed.append(PlacedFile(id, root.name, rel, row))
        yield Portion(files=placed)
        last = found[-1][0]


def _contents(db: Db, hashes: list[str], dim: int) -> list[Content]:
    audio = db.execute(
        "SELECT a.hash, a.duration, a.sample_rate, a.channels, a.container, a.codec, a.bits, p.print FROM audio a "
        "LEFT JOIN fingerprints p ON p.hash = a.hash WHERE a.hash = ANY(%s)",
        (hashes,),
    )
    facts = {
        h: AudioRow(h, d, r, c, container, codec, bits, None if fp is None else bytes(fp))
        for h, d, r, c, container, codec, bits, fp in audio
    }
    sql = 'SELECT hash, start, "end", embedding FROM segments WHERE hash = ANY(%s) ORDER BY hash, start, id'
    spans: dict[str, list[tuple[float, float]]] = {h: [] for h in hashes}
    vectors: dict[str, list[np.ndarray]] = {h: [] for h in hashes}
    for h, s, e, v in db.execute(sql, (hashes,), binary=True):
        spans[h].append((s, e))
        vectors[h].append(v)
    return [
        Content(facts[h], spans[h], np.stack(vectors[h]) if vectors[h] else np.zeros((0, dim), np.float32))
        for h in hashes
    ]


def load(db: Db, places: Places, binding: ModelBinding | None, portion: Portion) -> None:
    """Write a portion of another index into this one, inside the caller's transaction (bound already)."""
    if portion.centre is not None and rows.centre(db) is None:
        rows.set_centre(db, portion.centre)
    for r in portion.roots:
        name, mount = _named(r.name or r.path, places.host, r.path if r.local else None)
        at = db.value(
            "INSERT INTO roots (name, last_indexed_at) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
            "SET last_indexed_at = excluded.last_indexed_at RETURNING id",
            (name, r.last_indexed_at),
        )
        if mount is not None:
            sql = "INSERT INTO mounts (root_id, host, path) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
            db.execute(sql, (at, places.host, mount))
    if portion.contents:
        if binding is None:
            raise ValueError("Load the binding (the first portion) before contents.")
        _load_contents(db, binding.dim, portion.contents)
    if portion.files:
        _load_files(db, places, portion.files)
    places.reload()


def _named(name: str, host: str, mount: str | None) -> tuple[str, str | None]:
    """A root's name and mount here: an SQLite index names roots by their path, which becomes HOST:/path, mounted."""
    if os.path.isabs(name):
        return f"{host}:{name}", name
    return check_name(name), mount


def _load_contents(db: Db, dim: int, contents: list[Content]) -> None:
    """Audio rows and their fingerprints, then every segment with its vector exactly as given: binary COPYs."""
    with db.copy("COPY audio (hash, duration, sample_rate, channels, container, codec, bits) FROM STDIN (FORMAT BINARY)",
                 ["text", "float8", "int4", "int4", "text", "text", "int4"]) as copy:  # fmt: skip
        for c in contents:
            copy.write_row((c.audio.hash, *rows.audio_values(c.audio)))
    with db.copy("COPY fingerprints (hash, print) FROM STDIN (FORMAT BINARY)", ["text", "bytea"]) as copy:
        for c in contents:
            if c.audio.fingerprint is not None:
                copy.write_row((c.audio.hash, bytes(c.audio.fingerprint)))
    hashes = [c.audio.hash for c in contents for _ in c.segments]
    spans = [s for c in contents for s in c.segments]
    v = np.concatenate([np.asarray(c.vectors, np.float32).reshape(-1, dim) for c in contents])
    rows.copy_segments(db, dim, hashes, spans, v)


_FILE_FIELDS = "id, root_id, relpath, size, mtime_ns, hash, status, error, tags, folded, indexed_at, words, n_words"


def _load_files(db: Db, places: Places, placed: list[PlacedFile]) -> None:
    """Files through one binary COPY into a scratch table (tsvector has no binary form to send), then one INSERT."""
    ids: dict[str, int] = {}
    places.reload()
    sql = "SELECT hash, container, codec FROM audio WHERE hash = ANY(%s)"  # loaded before the files that use them
    formats = {h: (c, k) for h, c, k in db.execute(sql, (list({f.row.hash for f in placed if f.row.hash}),))}
    todo = []
    for f in placed:
        name, mount = _named(f.root, places.host, None)
        if name not in ids:
            ids[name] = db.value("SELECT id FROM roots WHERE name = %s", (name,)) or db.value(
                "INSERT INTO roots (name) VALUES (%s) RETURNING id", (name,)
            )
        r = f.row
        label = mount or next((x.label for x in places.by_id.values() if x.name == name), f"{name}:")
        fmt = formats.get(r.hash or "", (None, None))
        words, n, terms = fulltext.columns(f.relpath, label, r.tags, *fmt) if r.status == "ok" else (None, 0, None)
        todo.append((f.id, ids[name], f.relpath, r.size, r.mtime_ns, r.hash, r.status, r.error, Jsonb(r.tags),
                     Jsonb(rows.fold_tags(r.tags)), r.indexed_at or 0.0, words, n, terms))  # fmt: skip
    db.execute("CREATE TEMP TABLE IF NOT EXISTS files_in (LIKE files) ON COMMIT DROP")
    db.execute("ALTER TABLE files_in ALTER COLUMN terms TYPE text")
    types = ["int8", "int4", "text", "int8", "int8", "text", "text", "text", "jsonb", "jsonb", "float8", "text[]",
             "int4", "text"]  # fmt: skip
    with db.copy(f"COPY files_in ({_FILE_FIELDS}, terms) FROM STDIN (FORMAT BINARY)", types) as copy:
        for values in todo:
            copy.write_row(values)
    db.execute(f"INSERT INTO files ({_FILE_FIELDS}, terms) SELECT {_FILE_FIELDS}, terms::tsvector FROM files_in")
    db.execute("TRUNCATE files_in")
    db.execute("SELECT setval(pg_get_serial_sequence('files', 'id'), (SELECT max(id) FROM files))")


def swap(db: Db, staging: str) -> None:
    """Make the staging schema the index in one transaction: readers see the old one or the new one."""
    old = f"{db.schema}_old"
    try:
        with db.conn.transaction():
            db.conn.execute("SELECT pg_advisory_xact_lock(%s)", (key("swap", db.schema),))
            db.conn.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
            db.conn.execute(f"ALTER SCHEMA {db.schema} RENAME TO {old}")
            db.conn.execute(f"ALTER SCHEMA {staging} RENAME TO {db.schema}")
            db.conn.execute(f"DROP SCHEMA {old} CASCADE")  # waits for readers of the old tables, up to lock_timeout
    except pg.LockNotAvailable as e:
        raise StorageError(
            f"Readers keep the index at {db.location} busy, so the rebuilt index could not replace it; it is ready in "
            f"the schema {staging}: run the same command again when searches have finished."
        ) from e
    except psycopg.Error as e:
        raise storage_error(db, e) from e
