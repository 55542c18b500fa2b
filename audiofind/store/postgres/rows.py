"""Rows of files, audio, segments and vectors on PostgreSQL: the reads and writes the store's transactions are made
of. Every function runs inside the caller's transaction (store.PostgresStore opens it); none commits.

Several writers share the server, so a content is changed only under its advisory lock (`lock_content`): adding
it, ending it, adding a copy of it and collecting it are serialised per content, and each statement after the lock
sees what the others committed before (READ COMMITTED).
"""

import logging
import struct
import time
from collections.abc import Iterable

import numpy as np
from pgvector import Bit
from psycopg.types.json import Jsonb

from audiofind.store import vectors as vec
from audiofind.store.postgres import fulltext
from audiofind.store.postgres.connection import Db, key
from audiofind.store.postgres.roots import Places, Root
from audiofind.store.records import BINDING_KEYS, AudioRow, FileRow, ModelBinding, tag_forms

log = logging.getLogger(__name__)

CENTRE_AFTER = 1024  # segments stored before the centre of the binary codes is frozen (as SQLite's)
FILE_COLUMNS = "f.id, f.root_id, f.relpath, f.size, f.mtime_ns, f.hash, f.status, f.error, f.tags, f.indexed_at"


def sorted_tags(tags: dict) -> dict:
    """Tags in key order, as the SQLite backend returns them (jsonb keeps its own order)."""
    return dict(sorted(tags.items()))


def file_rows(db: Db, places: Places, where: str, params: tuple | list = ()) -> list[tuple[int, FileRow]]:
    """(id, FileRow) of the files f matching an SQL condition."""
    out = []
    for id, root_id, rel, size, mtime_ns, hash, status, error, tags, at in db.execute(
        f"SELECT {FILE_COLUMNS} FROM files f WHERE {where}", params
    ):
        root = places.root(root_id)
        out.append(
            (id, FileRow(root.path(rel), root.label, size, mtime_ns, hash, status, error, sorted_tags(tags), at))
        )
    return out


def meta(db: Db) -> dict[str, object]:
    """Every key and value of the meta table."""
    return dict(db.execute("SELECT key, value FROM meta").fetchall())


def bind(db: Db, binding: ModelBinding) -> None:
    """Record the model on an index with no vectors (the vector columns made or remade for its dimension)."""
    bind_vectors(db, binding.dim)
    db.execute("DELETE FROM meta")
    values = [(k, Jsonb(v)) for k, v in zip(BINDING_KEYS, binding.values())]
    db.executemany("INSERT INTO meta (key, value) VALUES (%s, %s)", values)


def clear(db: Db, truncate: bool) -> None:
    """Delete every file, root, segment and vector and the binding; TRUNCATE (at once, and no dead rows left for the
    next writer to wade through) where this session owns the tables."""
    tables = "files, partial, fingerprints, segments, audio, mounts, roots, meta"
    if truncate:
        db.execute(f"TRUNCATE {tables}")
    else:
        for table in tables.split(", "):
            db.execute(f"DELETE FROM {table}")


def centre(db: Db, facts: dict | None = None) -> np.ndarray | None:
    """The frozen centre of the binary codes (from facts, the meta table read already), or None while the index
    is small."""
    found = facts.get("centre") if facts is not None else db.value("SELECT value FROM meta WHERE key = 'centre'")
    return np.frombuffer(bytes.fromhex(found), np.float32).copy() if isinstance(found, str) else None


def set_centre(db: Db, value: np.ndarray) -> None:
    """Freeze the centre of the binary codes."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('centre', %s)", (Jsonb(np.asarray(value, np.float32).tobytes().hex()),)
    )


def bind_vectors(db: Db, dim: int | None) -> None:
    """Give segments vector and code columns of dim dimensions (None: take them away, with their index)."""
    db.execute("ALTER TABLE segments DROP COLUMN IF EXISTS embedding, DROP COLUMN IF EXISTS code")
    if dim is not None:
        db.execute(
            f"ALTER TABLE segments ADD COLUMN embedding vector({int(dim)}) NOT NULL, ADD COLUMN code bit({int(dim)})"
        )


def lock_content(db: Db, hash: str) -> None:
    """Hold this content's advisory lock until the transaction ends."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (key("content", db.schema, hash),))


def lock_and_read(db: Db, hash: str) -> tuple[dict, tuple[bool, bool]]:
    """Take the content's lock, then read the meta table and the content's state: one round trip (pipelined), each
    read after the lock, so it sees what other writers committed before."""
    with db.pipeline():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (key("content", db.schema, hash),))
        facts = db.execute("SELECT key, value FROM meta")
        found = db.execute(
            "SELECT EXISTS (SELECT 1 FROM audio WHERE hash = %s), EXISTS (SELECT 1 FROM partial WHERE hash = %s)",
            (hash, hash),
        )
    stored, unfinished = found.fetchone() or (False, False)
    return dict(facts.fetchall()), (bool(stored), bool(unfinished))


def is_partial(db: Db, hash: str) -> bool:
    """Whether this content is still being embedded."""
    return db.one("SELECT 1 FROM partial WHERE hash = %s", (hash,)) is not None


def has_audio(db: Db, hash: str) -> bool:
    """Whether complete vectors for this content are stored."""
    sql = "SELECT 1 FROM audio a WHERE a.hash = %s AND NOT EXISTS (SELECT 1 FROM partial p WHERE p.hash = a.hash)"
    return db.one(sql, (hash,)) is not None


def add_audio(db: Db, audio: AudioRow) -> None:
    """The audio row of a new content (its segments follow), with what the decoder read of its header."""
    sql = (
        "INSERT INTO audio (hash, duration, sample_rate, channels, container, codec, bits) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)"
    )
    db.execute(sql, (audio.hash, *audio_values(audio)))


def set_facts(db: Db, audio: AudioRow) -> None:
    """Record what the decoder read of a content that was begun before (duration, rate, channels, format)."""
    sql = (
        "UPDATE audio SET duration = %s, sample_rate = %s, channels = %s, container = %s, codec = %s, bits = %s "
        "WHERE hash = %s"
    )
    db.execute(sql, (*audio_values(audio), audio.hash))


def audio_values(audio: AudioRow) -> tuple[float, int, int, str | None, str | None, int | None]:
    """(duration, sample_rate, channels, container, codec, bits) of an AudioRow, as the columns take them."""
    bits = None if audio.bits is None else int(audio.bits)
    facts = (audio.container or None, audio.codec or None, bits)
    return (float(audio.duration), int(audio.sample_rate), int(audio.channels), *facts)


def fingerprints(db: Db, hashes: Iterable[str]) -> dict[str, bytes]:
    """The stored acoustic fingerprints of those of hashes that have one."""
    sql = "SELECT hash, print FROM fingerprints WHERE hash = ANY(%s)"
    return {h: bytes(b) for h, b in db.execute(sql, (list(hashes),))}


def set_fingerprints(db: Db, prints: dict[str, bytes]) -> None:
    """Store fingerprints of stored contents, each under its content's lock (a content no longer stored is
    skipped: a collector may have taken it meanwhile)."""
    sql = (
        "INSERT INTO fingerprints (hash, print) SELECT %s, %s WHERE EXISTS (SELECT 1 FROM audio WHERE hash = %s) "
        "ON CONFLICT (hash) DO UPDATE SET print = excluded.print"
    )
    for h in sorted(prints):  # in order, so two writers never wait on each other
        lock_content(db, h)
    db.executemany(sql, [(h, bytes(p), h) for h, p in sorted(prints.items())])


def bits(codes: np.ndarray, dim: int) -> list[Bit]:
    """Packed binary codes (N, W) uint64 as pgvector bit(dim) values."""
    raw = np.ascontiguousarray(codes).view(np.uint8)[:, : (dim + 7) // 8]
    head = struct.pack(">i", dim)
    return [Bit.from_binary(head + row.tobytes()) for row in raw]


def add_segments(
    db: Db, binding: ModelBinding, hash: str, segments: list[tuple[float, float]], vectors: np.ndarray,
    facts: dict | None = None,
) -> None:  # fmt: skip
    """Segments of a content and their vectors (normalised here), coded once the index has a centre; one COPY."""
    v = vec.normalize(vectors) if len(segments) else np.zeros((0, binding.dim), np.float32)
    if v.shape != (len(segments), binding.dim):
        raise ValueError(f"Expected vectors of shape ({len(segments)}, {binding.dim}), got {v.shape}.")
    copy_segments(db, binding.dim, [hash] * len(segments), segments, v, facts)


def copy_segments(
    db: Db, dim: int, hashes: list[str], segments: list[tuple[float, float]], v: np.ndarray, facts: dict | None = None
) -> None:
    """Segment rows (hash, start, end) with their vectors (N, D) stored as given, coded once the index has a centre,
    in one binary COPY (facts: the meta table, if read already)."""
    if not len(segments):
        return
    if v.shape != (len(segments), dim) or not np.all(np.isfinite(v)):
        raise ValueError(f"Expected finite vectors of shape ({len(segments)}, {dim}), got {v.shape}.")
    found = centre(db, facts)
    codes = bits(vec.binary_codes(v, found), dim) if found is not None else [None] * len(segments)
    sql = 'COPY segments (hash, start, "end", embedding, code) FROM STDIN (FORMAT BINARY)'
    with db.copy(sql, ["text", "float8", "float8", "vector", "bit"]) as copy:
        for h, (start, end), row, code in zip(hashes, segments, v, codes):
            copy.write_row((h, float(start), float(end), row, code))


def upsert(db: Db, root: Root, relpath: str, row: FileRow) -> None:
    """Insert or replace the file at (root, relpath); a content no file references any more is collected."""
    ok = row.status == "ok"
    # The content's row is stored before any file points at it: its format is known here.
    fmt = db.one("SELECT container, codec FROM audio WHERE hash = %s", (row.hash,)) if ok else None
    words, n_words, terms = fulltext.columns(relpath, root.label, row.tags, *(fmt or ())) if ok else (None, 0, None)
    # Read (and lock) the row it replaces first: a CTE could not lock a row its own upsert changes.
    old = db.value("SELECT hash FROM files WHERE root_id = %s AND relpath = %s FOR UPDATE", (root.id, relpath))
    db.execute(
        """INSERT INTO files (root_id, relpath, size, mtime_ns, hash, status, error, tags, folded, indexed_at, words,
             n_words, terms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::tsvector)
           ON CONFLICT (root_id, relpath) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
             hash = excluded.hash, status = excluded.status, error = excluded.error, tags = excluded.tags,
             folded = excluded.folded, indexed_at = excluded.indexed_at, words = excluded.words,
             n_words = excluded.n_words, terms = excluded.terms""",
        (root.id, relpath, int(row.size), int(row.mtime_ns), row.hash, row.status, row.error, Jsonb(row.tags),
         Jsonb(fold_tags(row.tags)), time.time() if row.indexed_at is None else row.indexed_at, words, n_words, terms),
    )  # fmt: skip
    if old and old != row.hash:
        collect(db, [old])


def fold_tags(tags: dict) -> dict[str, list[str]]:
    """Tags with keys case-folded in Python, each value the list of its string values' tag_forms (the value
    case-folded, then its ;-separated parts): what the filters match."""
    out: dict[str, list[str]] = {}
    for name, value in tags.items():
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        out.setdefault(str(name).casefold(), []).extend(f for v in values if isinstance(v, str) for f in tag_forms(v))
    return out


def refold(db: Db) -> int:
    """Compute every file's folded tags again from its stored tags (nothing read from disk); how many files."""
    found = db.execute("SELECT id, tags FROM files").fetchall()
    db.executemany("UPDATE files SET folded = %s WHERE id = %s", [(Jsonb(fold_tags(tags)), id) for id, tags in found])
    return len(found)


def remove(db: Db, places: list[tuple[int, str]]) -> int:
    """Delete the files at these (root id, relpath) and collect their contents; how many were stored."""
    if not places:
        return 0
    sql = (
        "DELETE FROM files f USING unnest(%s::int[], %s::text[]) AS gone(root_id, relpath) "
        "WHERE f.root_id = gone.root_id AND f.relpath = gone.relpath RETURNING f.hash"
    )
    found = db.execute(sql, ([r for r, _ in places], [p for _, p in places])).fetchall()
    collect(db, {h for (h,) in found if h})
    return len(found)


def collect(db: Db, hashes: Iterable[str]) -> None:
    """Drop the audio, segments, vectors and fingerprints of hashes no file and no unfinished content references."""
    wanted = sorted(set(hashes))
    for h in wanted:  # in order, so two collectors never wait on each other
        lock_content(db, h)
    sql = (
        "SELECT h FROM unnest(%s::text[]) AS h WHERE NOT EXISTS (SELECT 1 FROM files WHERE hash = h) "
        "AND NOT EXISTS (SELECT 1 FROM partial WHERE hash = h)"
    )
    orphans = [h for (h,) in db.execute(sql, (wanted,))]
    if not orphans:
        return
    n = db.execute("DELETE FROM segments WHERE hash = ANY(%s)", (orphans,)).rowcount
    db.execute("DELETE FROM fingerprints WHERE hash = ANY(%s)", (orphans,))
    db.execute("DELETE FROM audio WHERE hash = ANY(%s)", (orphans,))
    log.debug("dropped %d unreferenced contents (%d segments)", len(orphans), n)


def segment_vectors(db: Db, hash: str, dim: int) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The segments (start, end) of one content and their unit vectors (N, D), in time order."""
    if not dim:
        return [], np.zeros((0, 0), np.float32)
    found = db.execute(
        'SELECT start, "end", embedding FROM segments WHERE hash = %s ORDER BY start, id', (hash,), binary=True
    )
    rows = found.fetchall()
    if not rows:
        return [], np.zeros((0, dim), np.float32)
    return [(s, e) for s, e, _ in rows], np.stack([v for _, _, v in rows])


def freeze_centre(db: Db, dim: int, facts: dict | None = None) -> bool:
    """Once the index is big enough, fix the centre of the binary codes and code every segment; True if it did."""
    if centre(db, facts) is not None or db.value("SELECT count(*) FROM segments") < CENTRE_AFTER:
        return False
    db.execute("SELECT pg_advisory_xact_lock(%s)", (key("centre", db.schema),))
    if centre(db) is not None:  # another writer froze it while we waited
        return False
    rows = db.execute("SELECT id, embedding FROM segments ORDER BY id", binary=True).fetchall()
    v = np.stack([e for _, e in rows])
    value = v.mean(axis=0).astype(np.float32)  # (D,)
    set_centre(db, value)
    store_codes(db, [i for i, _ in rows], vec.binary_codes(v, value), dim)
    return True


def store_codes(db: Db, ids: list[int], codes: np.ndarray, dim: int) -> None:
    """Write the binary codes of these segments."""
    db.executemany("UPDATE segments SET code = %s WHERE id = %s", list(zip(bits(codes, dim), ids)))


def fill_codes(db: Db, dim: int) -> int:
    """Code the segments a writer stored without a code (it did not see the centre yet); how many."""
    value = centre(db)
    if value is None:
        return 0
    rows = db.execute("SELECT id, embedding FROM segments WHERE code IS NULL ORDER BY id", binary=True).fetchall()
    if rows:
        store_codes(db, [i for i, _ in rows], vec.binary_codes(np.stack([e for _, e in rows]), value), dim)
    return len(rows)
