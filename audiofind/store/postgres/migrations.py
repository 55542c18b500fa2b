"""Numbered schema migrations of the PostgreSQL index, applied in order, once, under an advisory lock.

Each migration runs in one transaction with the row that records it in `_audiofind_migrations`, while the session
holds an advisory lock, so two processes opening a new database at once apply each exactly once. A shipped
migration is never edited. The vector columns are not here: their width comes from the model (`rows.bind_vectors`).
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from audiofind.errors import SchemaMismatch, StorageError
from audiofind.store.postgres import facts, fulltext, rows
from audiofind.store.postgres.connection import Db, key
from audiofind.store.postgres.roots import Places

log = logging.getLogger(__name__)

TABLE = "_audiofind_migrations"

Migration = Callable[[Db], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Append fn to the ordered list of migrations; each name may be registered once."""
    if any(m.__name__ == fn.__name__ for m in MIGRATIONS):
        raise ValueError(f"Migration {fn.__name__} is registered twice.")
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_meta(db: Db) -> None:
    """Key-value facts about the index: the model binding and the code centre."""
    db.execute("CREATE TABLE meta (key text PRIMARY KEY, value jsonb NOT NULL)")


@migration
def m002_roots(db: Db) -> None:
    """Named roots, and where each machine mounts them."""
    db.execute(
        "CREATE TABLE roots (id serial PRIMARY KEY, name text NOT NULL UNIQUE, last_indexed_at double precision)"
    )
    db.execute(
        """CREATE TABLE mounts (
            root_id integer NOT NULL REFERENCES roots(id) ON DELETE CASCADE,
            host text NOT NULL,
            path text NOT NULL,
            PRIMARY KEY (root_id, host),
            UNIQUE (host, path)
        )"""
    )


@migration
def m003_audio_segments(db: Db) -> None:
    """Distinct audio contents by hash, and their segments (vector columns arrive with the model)."""
    db.execute(
        """CREATE TABLE audio (
            hash text PRIMARY KEY,
            duration double precision NOT NULL,
            sample_rate integer NOT NULL,
            channels integer NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE segments (
            id bigserial PRIMARY KEY,
            hash text NOT NULL REFERENCES audio(hash),
            start double precision NOT NULL,
            "end" double precision NOT NULL
        )"""
    )
    db.execute("CREATE INDEX segments_hash ON segments (hash)")


@migration
def m004_files(db: Db) -> None:
    """Files, by root and path below it, with what the filters and the names index read."""
    # folded: tags with keys and values case-folded in Python (the server's lower() depends on its locale);
    # words: the stems of the names index's three columns; terms: the same as a tsvector, for matching.
    db.execute(
        """CREATE TABLE files (
            id bigserial PRIMARY KEY,
            root_id integer NOT NULL REFERENCES roots(id),
            relpath text NOT NULL,
            size bigint NOT NULL,
            mtime_ns bigint NOT NULL,
            hash text REFERENCES audio(hash),
            status text NOT NULL CHECK (status IN ('ok', 'failed')),
            error text,
            tags jsonb NOT NULL DEFAULT '{}',
            folded jsonb NOT NULL DEFAULT '{}',
            indexed_at double precision NOT NULL,
            words text[],
            n_words integer NOT NULL DEFAULT 0,
            terms tsvector,
            UNIQUE (root_id, relpath),
            CHECK ((status = 'ok') = (hash IS NOT NULL))
        )"""
    )
    db.execute("CREATE INDEX files_hash ON files (hash)")
    db.execute("CREATE INDEX files_terms ON files USING gin (terms)")
    db.execute("CREATE INDEX files_folded ON files USING gin (folded jsonb_path_ops)")


@migration
def m005_partial(db: Db) -> None:
    """Contents whose embedding is under way: committed a chunk at a time, hidden until done."""
    db.execute(
        """CREATE TABLE partial (
            hash text PRIMARY KEY REFERENCES audio(hash),
            root_id integer NOT NULL REFERENCES roots(id),
            relpath text NOT NULL
        )"""
    )


@migration
def m006_extension_words(db: Db) -> None:
    """Names index again, now that a file's extension is one of its words (`-mp3` leaves MP3s out)."""
    fulltext.refill(db, Places(db))


@migration
def m007_audio_facts(db: Db) -> None:
    """Each content's container, codec and bit depth, read from the header of one of its files this machine sees
    (nothing embedded)."""
    db.execute("ALTER TABLE audio ADD COLUMN container text, ADD COLUMN codec text, ADD COLUMN bits integer")
    facts.fill(db, Places(db))


@migration
def m008_fingerprints(db: Db) -> None:
    """Acoustic fingerprints of contents, for duplicates: stored with each content as it is indexed, and for older
    contents by the first `duplicates` run (decoding, no embedding)."""
    db.execute("CREATE TABLE fingerprints (hash text PRIMARY KEY REFERENCES audio(hash), print bytea NOT NULL)")


@migration
def m009_format_words(db: Db) -> None:
    """Names index again, now that a file's format (container, codec family) is among its words (`aiff` finds an
    .aif): from the facts m007 read, nothing decoded."""
    fulltext.refill(db, Places(db))


@migration
def m010_whole_format_words(db: Db) -> None:
    """Names index again, now that a format name mixing letters and digits is one word (`m4a`, not m 4 a, whose
    "a" matched a query's stop word) and a name's extension a word once: from the stored paths, tags and facts,
    nothing decoded."""
    fulltext.refill(db, Places(db))


@migration
def m011_tag_parts(db: Db) -> None:
    """Folded tags again, now that each part of a multi-value tag written as one string (`Ambience; Nature`) is
    matched too (`--tag genre=ambience`): from the stored tags, nothing read from disk."""
    rows.refold(db)


def names() -> list[str]:
    """Every migration this code knows, in order."""
    return [m.__name__ for m in MIGRATIONS]


def applied(db: Db) -> list[str]:
    """Names recorded in the database, in the order they were applied (reads only)."""
    if db.value("SELECT to_regclass(%s)", (f"{db.schema}.{TABLE}",)) is None:
        return []
    return [name for (name,) in db.execute(f"SELECT name FROM {db.schema}.{TABLE} ORDER BY seq")]


def pending(db: Db) -> list[str]:
    """Known migrations not applied yet; never writes."""
    done = set(applied(db))
    return [name for name in names() if name not in done]


def version(db: Db) -> int:
    """The schema version: how many migrations have been applied."""
    return len(applied(db))


def check(db: Db) -> None:
    """Raise SchemaMismatch if a newer audiofind has migrated this database."""
    known = set(names())
    newer = [name for name in applied(db) if name not in known]
    if newer:
        raise SchemaMismatch(
            f"The index {db.location} was written by a newer audiofind (unknown migrations: {', '.join(newer)}); "
            "upgrade audiofind to use it."
        )


def may_migrate(db: Db) -> bool:
    """Whether this role may apply migrations: it owns the schema (a member of its owner's role), or, before the
    schema exists, may create schemas in the database."""
    owner = db.value("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (db.schema,))
    if owner is None:
        return bool(db.value("SELECT has_database_privilege(current_database(), 'CREATE')"))
    return bool(db.value("SELECT pg_has_role(current_user, %s::regrole, 'MEMBER')", (owner,)))


def migrate(db: Db) -> list[str]:
    """Apply the pending migrations, each with its record in one transaction, all under the lock; their names."""
    check(db)
    todo = pending(db)
    if not todo:
        return []
    if not may_migrate(db):
        raise StorageError(
            f"The index at {db.location} needs {len(todo)} upgrade step(s) for this release of audiofind, which the "
            f"role {db.conn.info.user} may not make (they change its tables): run `audiofind status` once with the "
            "role that owns the index (the writer), then this works as before."
        )
    # A session lock taken before the transactions: each then starts after the last holder committed, and sees
    # its tables (a lock taken inside a transaction would leave it reading the catalog as it was before).
    lock = key("migrate", db.schema)
    db.execute("SELECT pg_advisory_lock(%s)", (lock,))
    try:
        with db.transaction():
            db.execute(f"CREATE SCHEMA IF NOT EXISTS {db.schema}")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {db.schema}.{TABLE} "
                "(seq serial, name text PRIMARY KEY, applied_at timestamptz NOT NULL)"
            )
        done = []
        for fn in MIGRATIONS:
            with db.transaction():
                # Read again under the lock: another process may have applied it since we looked.
                if db.one(f"SELECT 1 FROM {db.schema}.{TABLE} WHERE name = %s", (fn.__name__,)):
                    continue
                fn(db)
                sql = f"INSERT INTO {db.schema}.{TABLE} (name, applied_at) VALUES (%s, %s)"
                db.execute(sql, (fn.__name__, datetime.now(UTC)))
            log.info("applied migration %s to %s", fn.__name__, db.location)
            done.append(fn.__name__)
    finally:
        if not db.conn.closed:
            db.execute("SELECT pg_advisory_unlock(%s)", (lock,))
    check(db)
    return done
