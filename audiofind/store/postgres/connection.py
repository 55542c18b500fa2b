"""One session with the PostgreSQL server: connecting (pgvector present, our schema first on the search path),
transactions that nest, consistent reads, what failures mean, and the keys of the advisory locks.

Every statement of the backend goes through `Db`, so every psycopg failure leaves here as a typed error of one
sentence, and never with the password: messages show the URL as `location.redact` writes it. libpq reads
PGPASSWORD, ~/.pgpass and the other PG* variables itself; nothing here gets in its way.
"""

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg
from psycopg import sql as pgsql
from psycopg.adapt import Loader
from psycopg.pq import Format

from audiofind.errors import AudiofindError, IndexBusy, IndexNotFound, StorageError, UnsupportedServer
from audiofind.store.location import redact, scrub
from audiofind.store.protocol import ConnectionLost

log = logging.getLogger(__name__)

SCHEMA = "audiofind"  # the live index
STAGING = "audiofind_rebuild"  # where `index --rebuild` builds its replacement
CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
LOCK_TIMEOUT = "30s"  # how long a schema swap waits for readers of the old tables
KEPT = "everything committed so far is kept"
NEEDS_POSTGRES = 16  # the oldest major version audiofind is tested on
NEEDS_PGVECTOR = (0, 8)  # iterative index scans (hnsw.iterative_scan): a filtered search keeps its k results
_LOST = {"57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"}  # shutdown, crash, connection


class VectorLoader(Loader):
    """pgvector's binary `vector` straight into float32 numpy (pgvector-python's loader builds an object per row)."""

    format = Format.BINARY

    def load(self, data: Any) -> np.ndarray:
        # A vector is int16 dim, int16 unused, then dim big-endian float32.
        return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


def key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for these words (namespaced: claims and contents never collide)."""
    return int.from_bytes(hashlib.blake2b(":".join(parts).encode(), digest_size=8).digest(), "big", signed=True)


class Db:
    """An open session: statements, transactions and reads, every failure turned into a typed error."""

    def __init__(self, conn: psycopg.Connection, url: str, schema: str) -> None:
        self.conn = conn
        self.url = url
        self.location = redact(url)
        self.schema = schema
        self.settings: dict[str, str] = {}  # session settings as last set (set_once skips a repeat)

    def execute(self, sql: str, params: Any = None, binary: bool = False) -> psycopg.Cursor:
        """Run one statement; its rows are fetched already (client-side cursor)."""
        try:
            return self.conn.execute(sql, params, binary=binary)
        except psycopg.Error as e:
            raise storage_error(self, e) from e

    def executemany(self, sql: str, params: list) -> None:
        """Run one statement for each of params (pipelined by psycopg)."""
        try:
            with self.conn.cursor() as cur:
                cur.executemany(sql, params)
        except psycopg.Error as e:
            raise storage_error(self, e) from e

    def one(self, sql: str, params: Any = None) -> Any:
        """The first row of a statement, or None."""
        return self.execute(sql, params).fetchone()

    def value(self, sql: str, params: Any = None) -> Any:
        """The first column of the first row of a statement."""
        row = self.one(sql, params)
        return row[0] if row else None

    @contextmanager
    def copy(self, sql: str, types: list[str]) -> Iterator[Any]:
        """A binary COPY ... FROM STDIN: write rows with write_row."""
        try:
            with self.conn.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(types)
                yield copy
        except psycopg.Error as e:
            raise storage_error(self, e) from e

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction, or a savepoint inside an open one: everything in it lands together or not at all."""
        try:
            with self.conn.transaction():
                yield
        except BaseException as e:
            self.settings.clear()  # a rollback undoes the SETs made inside
            if isinstance(e, psycopg.Error):
                raise storage_error(self, e) from e
            raise

    def set_once(self, **values: object) -> None:
        """Set session settings (`hnsw_ef_search=400` is hnsw.ef_search), skipping those already at that value."""
        todo = {k.replace("_", ".", 1): str(v) for k, v in values.items()}
        todo = {k: v for k, v in todo.items() if self.settings.get(k) != v}
        if todo:
            sql = "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in todo)
            self.execute(sql, [x for kv in todo.items() for x in kv])
            self.settings.update(todo)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """Send the statements inside without waiting for each answer (one round trip); read results after."""
        try:
            with self.conn.pipeline():
                yield
        except psycopg.Error as e:
            raise storage_error(self, e) from e

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this session."""
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One snapshot for everything read inside (REPEATABLE READ), unless a transaction is open already."""
        if self.in_transaction:
            yield
            return
        # Said in the BEGIN itself (psycopg writes it from these): one round trip less than a SET TRANSACTION.
        self.conn.isolation_level, self.conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        try:
            with self.transaction():
                yield
        finally:
            self.conn.isolation_level, self.conn.read_only = None, None

    def close(self) -> None:
        """End the session (the server releases its advisory locks)."""
        self.conn.close()


def connect(url: str, schema: str = SCHEMA) -> Db:
    """Open a session on the server at url with pgvector loaded and schema first on the search path."""
    extra: dict[str, Any] = {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT}
    try:
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=None, **extra)
    except psycopg.Error as e:
        raise connect_error(url, e) from None  # libpq's text may hold the conninfo: nothing of it is chained
    db = Db(conn, url, schema)
    try:
        found = vector_schema(db)
        conn.execute("SET application_name = 'audiofind'")
        conn.execute(f"SET search_path = {schema}, {found}")
        conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        # A commit returns before its WAL reaches the disk (~4 ms a file less): a server crash may lose the last
        # moments of writes, as a power cut may lose SQLite's (synchronous=NORMAL), never leave half a file; the
        # next run embeds them again.
        conn.execute("SET synchronous_commit = off")
        register_vector(conn)
        conn.adapters.register_loader("vector", VectorLoader)
    except psycopg.Error as e:
        conn.close()
        raise storage_error(db, e) from e
    except BaseException:
        conn.close()
        raise
    return db


@dataclass(frozen=True)
class Versions:
    """What a server runs: PostgreSQL, and pgvector as this database has it (None: not created in it)."""

    postgres: str  # server_version: "17.2 (Debian 17.2-1.pgdg130+1)"
    postgres_num: int  # server_version_num: 170002
    vector: str | None  # pgvector's extversion in this database
    vector_schema: str | None  # the schema it was created in


def read_versions(db: Db) -> Versions:
    """The server's PostgreSQL version and the pgvector this database has (reads only)."""
    row = db.conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, e.extversion, "
        "n.nspname FROM (SELECT 1) one LEFT JOIN pg_extension e ON e.extname = 'vector' "
        "LEFT JOIN pg_namespace n ON n.oid = e.extnamespace"
    ).fetchone()
    assert row is not None, "a SELECT without WHERE has its row"
    return Versions(*row)


def offered_vector(db: Db) -> str | None:
    """The pgvector version the server's package would create (None: the package is not installed there)."""
    row = db.conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    return None if row is None else row[0]


def _release(version: str) -> tuple[int, ...]:
    """(0, 8) for "0.8.5" or "0.8.0-dev": what NEEDS_PGVECTOR is compared with."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[: len(NEEDS_PGVECTOR)])


def vector_schema(db: Db) -> str:
    """The schema pgvector lives in, creating the extension if this role may; UnsupportedServer, in one line, where
    PostgreSQL or pgvector is older than NEEDS_POSTGRES and NEEDS_PGVECTOR, or pgvector is missing."""
    # Everything is checked before anything is created: a server we cannot use is left as it was found.
    found = read_versions(db)
    where, name, needs = db.location, db.conn.info.dbname, f"pgvector {'.'.join(map(str, NEEDS_PGVECTOR))} or later"
    if found.postgres_num < NEEDS_POSTGRES * 10000:
        raise UnsupportedServer(
            f"The server at {where} runs PostgreSQL {found.postgres.split()[0]}; audiofind needs PostgreSQL "
            f"{NEEDS_POSTGRES} or later with {needs}."
        )
    if found.vector is not None and _release(found.vector) >= NEEDS_PGVECTOR:
        assert found.vector_schema is not None, "an extension lives in a schema"
        return pgsql.Identifier(found.vector_schema).as_string(db.conn)
    offered = offered_vector(db)
    package = f"the server's pgvector package (Debian: postgresql-{found.postgres_num // 10000}-pgvector)"
    if found.vector is not None:
        upgrade = "" if offered and _release(offered) >= NEEDS_PGVECTOR else f"upgrade {package}, then "
        raise UnsupportedServer(
            f"The database {name} at {where} has pgvector {found.vector}; audiofind needs {needs} (its iterative "
            f"index scans): {upgrade}a superuser or the extension's owner must run ALTER EXTENSION vector UPDATE in it."
        )
    if offered is None or _release(offered) < NEEDS_PGVECTOR:
        has, fix = ("has no pgvector", "install") if offered is None else (f"offers pgvector {offered}", "upgrade")
        raise UnsupportedServer(
            f"The server at {where} {has}; audiofind needs {needs}: {fix} {package}, then a superuser must run "
            f"CREATE EXTENSION vector in the database {name}."
        )
    try:
        db.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except pg.UniqueViolation:
        pass  # another session created it at the same moment
    except (pg.InsufficientPrivilege, pg.FeatureNotSupported, pg.UndefinedFile, pg.ReadOnlySqlTransaction) as e:
        raise UnsupportedServer(
            f"pgvector is not installed in the database {name} at {where} (the server offers pgvector {offered}), and "
            f"the role {db.conn.info.user} may not create it: a superuser must run CREATE EXTENSION vector in it "
            f"({_reason(db.url, e)})."
        ) from None
    return vector_schema(db)  # checked again as created: the server's package may differ from what it listed


def _reason(url: str, e: BaseException) -> str:
    """libpq's or the server's words, first line only, password scrubbed."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return scrub(text.removeprefix("connection failed: ").strip(), url)


def connect_error(url: str, e: psycopg.Error) -> AudiofindError:
    """The typed error for a connection the server or the network refused."""
    where, text = redact(url), str(e)
    if "password authentication failed" in text or "no password supplied" in text:
        return StorageError(
            f"The PostgreSQL server at {where} refused the password ({_reason(url, e)}); give the right one in the "
            "URL, PGPASSWORD or ~/.pgpass."
        )
    if "does not exist" in text and "database" in text:
        return IndexNotFound(f"No such database at {where} ({_reason(url, e)}); create it (createdb) or fix the URL.")
    if "does not exist" in text and "role" in text:
        return StorageError(
            f"The PostgreSQL server at {where} has no such role ({_reason(url, e)}); fix the URL's user."
        )
    return StorageError(
        f"Cannot reach the PostgreSQL server at {where} ({_reason(url, e)}); check that it is running and that the "
        "URL's host, port and database are right."
    )


def storage_error(db: Db, e: psycopg.Error) -> AudiofindError:
    """The typed error for a failure of a statement on the index: one sentence that says what to do."""
    state = getattr(e, "sqlstate", None) or ""
    where, reason = db.location, _reason(db.url, e)
    if state in _LOST or db.conn.broken or isinstance(e, psycopg.OperationalError) and db.conn.closed:
        return ConnectionLost(
            f"The connection to the PostgreSQL server at {where} was lost ({reason}); {KEPT}: run the same command "
            "again to continue."
        )
    if isinstance(e, pg.ReadOnlySqlTransaction):
        return StorageError(
            f"The role {db.conn.info.user} cannot write to the index at {where} ({reason}); `audiofind index` needs a "
            "role with INSERT, UPDATE and DELETE on it (search and status work as they are)."
        )
    if isinstance(e, pg.InsufficientPrivilege):  # a read refused as much as a write: say what each command needs
        return StorageError(
            f"The role {db.conn.info.user} lacks a privilege on the index at {where} ({reason}): `search` and "
            "`status` need USAGE on the schema audiofind and SELECT on its tables, `index` INSERT, UPDATE and DELETE "
            "as well (the README's team section has the GRANTs)."
        )
    if isinstance(e, pg.DeadlockDetected | pg.SerializationFailure | pg.LockNotAvailable):
        return IndexBusy(f"Another writer holds what this write needs at {where} ({reason}); run it again: {KEPT}.")
    if isinstance(e, pg.DiskFull | pg.OutOfMemory | pg.ConfigurationLimitExceeded):
        return StorageError(
            f"The PostgreSQL server at {where} is out of room ({reason}); free some and run it again: {KEPT}."
        )
    return StorageError(f"PostgreSQL failed on the index at {where} ({type(e).__name__}: {reason}); {KEPT}.")
