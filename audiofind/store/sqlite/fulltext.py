"""The full-text index of names and tags: SQLite FTS5 over each file's folders, name and describing tags.

Each ok file has one row in `file_words` (rowid = files.id) holding " ".join(names.words(...)) of its folders
below its root (top down), its name and its text tags, one column each. SQL triggers on `files` keep it in step,
calling the SQL function `file_words(path, root, tags, part)` that `connection.connect` registers on every
connection, so every write path (index, watch, moves, copies, changes, deletions, --rebuild) updates it with no
bookkeeping in Python. FTS5's porter tokenizer stems English at both ends (`creaks` finds `creak`); BM25 ranks.
`store.words` holds the words of each column (shared with the PostgreSQL backend).
"""

import json

import apsw

from audiofind.audio.names import words
from audiofind.store.records import Hit, NameQuery, norm_path
from audiofind.store.sqlite.files import HIT_COLUMNS, hit
from audiofind.store.sqlite.typed import fetch, scalar
from audiofind.store.words import COLUMNS, TOKENIZER, file_words

TABLE = "file_words"
_VALUES = ", ".join(f"file_words(new.path, new.root, new.tags, {i})" for i in range(len(COLUMNS)))
SCHEMA = f"""
CREATE VIRTUAL TABLE {TABLE} USING fts5({", ".join(COLUMNS)}, tokenize='{TOKENIZER[0]} {" ".join(TOKENIZER[1])}');
CREATE TRIGGER {TABLE}_insert AFTER INSERT ON files WHEN new.status = 'ok' BEGIN
    INSERT INTO {TABLE} (rowid, {", ".join(COLUMNS)}) VALUES (new.id, {_VALUES});
END;
CREATE TRIGGER {TABLE}_update AFTER UPDATE ON files BEGIN
    DELETE FROM {TABLE} WHERE rowid = old.id;
    INSERT INTO {TABLE} (rowid, {", ".join(COLUMNS)}) SELECT new.id, {_VALUES} WHERE new.status = 'ok';
END;
CREATE TRIGGER {TABLE}_delete AFTER DELETE ON files BEGIN
    DELETE FROM {TABLE} WHERE rowid = old.id;
END;
"""


def register(conn: apsw.Connection) -> None:
    """Make `file_words(path, root, tags, part)` callable from this connection's SQL (its triggers need it)."""
    # apsw types every scalar function as variadic; SQLite calls this one with exactly four arguments
    conn.create_scalar_function("file_words", file_words, 4, deterministic=True)  # type: ignore[arg-type]


def create(conn: apsw.Connection) -> None:
    """Create the table and its triggers and fill it from the files already stored (no audio is read)."""
    conn.execute(SCHEMA)
    values = ", ".join(f"file_words(path, root, tags, {i})" for i in range(len(COLUMNS)))
    conn.execute(
        f"INSERT INTO {TABLE} (rowid, {', '.join(COLUMNS)}) SELECT id, {values} FROM files WHERE status = 'ok'"
    )


# ---------------------------------------------------------------- queries


def match_expr(term: str) -> str:
    """An FTS5 expression for one typed term: the phrase of its name-words (`Kick808` is "kick 808")."""
    return '"' + " ".join(words(term)) + '"'


def _any(terms: list[str]) -> str:
    return " OR ".join(match_expr(t) for t in terms)


def ranked(conn: apsw.Connection, q: NameQuery, limit: int, cond: str = "", params: list | None = None) -> list[Hit]:
    """Ok files matching q's names and holding none of its excluded words, best BM25 first (ties: the file indexed
    first), scored by relevance (-BM25).

    Every phrase must appear; among files that hold them, any of the words counts, more and rarer ones ranking
    higher. cond/params: extra conditions on files f and audio a (filters.conditions).
    """
    if not q.terms:
        return []
    parts = [f"({_any(q.words)})"] if q.words else []
    parts += [match_expr(p) for p in q.phrases]
    expr = " AND ".join(parts) + (f" NOT ({_any(q.excluded)})" if q.excluded else "")
    pick = f"SELECT rowid AS id, bm25({TABLE}) AS score FROM {TABLE} WHERE {TABLE} MATCH ?"
    if not cond:  # FTS5 ranks and cuts alone, before any join: 3x faster when a word is in thousands of files
        pick += f" ORDER BY bm25({TABLE}), rowid LIMIT {int(limit)}"
    sql = (
        f"SELECT {HIT_COLUMNS}, m.score FROM ({pick}) m JOIN files f ON f.id = m.id "
        f"JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok'{cond} ORDER BY m.score, m.id LIMIT ?"
    )
    found = fetch(conn, sql, [expr, *(params or []), int(limit)])
    roots: dict[str, bool] = {}
    return [hit(row[:-1], -float(row[-1]), None, None, roots) for row in found]


def holding(conn: apsw.Connection, terms: list[str], paths: list[str]) -> dict[str, list[str]]:
    """For each of paths, which of terms its names and tags hold (each term as match_expr reads it)."""
    found: dict[str, list[str]] = {norm_path(p): [] for p in paths}
    sql = "SELECT id, path FROM files WHERE path IN (SELECT value FROM json_each(?))"
    ids = dict(conn.execute(sql, (json.dumps(list(found)),)))
    sql = f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? AND rowid IN (SELECT value FROM json_each(?))"
    for term in terms:
        for (rowid,) in conn.execute(sql, (match_expr(term), json.dumps(list(ids)))):
            found[ids[rowid]].append(term)
    return found


def refill(conn: apsw.Connection) -> int:
    """Drop the names index and its triggers and make them again from the stored files; how many rows it holds."""
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    for suffix in ("insert", "update", "delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_{suffix}")
    create(conn)
    return int(scalar(conn, f"SELECT count(*) FROM {TABLE}"))
