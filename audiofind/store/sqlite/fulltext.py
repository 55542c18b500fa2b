"""The full-text index of names and tags: SQLite FTS5 over each file's folders, name and describing tags.

Each ok file has one row in `file_words` (rowid = files.id) holding " ".join(names.words(...)) of its folders
below its root (top down), its name with its extension and format, and its text tags, one column each. SQL triggers
on `files` keep it in step, calling the SQL function `file_words(path, root, tags, part[, container, codec])` that
`connection.connect` registers on every connection, so every write path (index, watch, moves, copies, changes,
deletions, --rebuild) updates it with no bookkeeping in Python. The format comes from the content's row in `audio`,
which every write path stores before a file points at it. FTS5's porter tokenizer stems English at both ends
(`creaks` finds `creak`); BM25 ranks. `store.words` holds the words of each column (shared with the PostgreSQL
backend).
"""

import json

import apsw

from audiofind.audio.names import words
from audiofind.store.records import Hit, NameQuery, norm_path
from audiofind.store.sqlite.files import HIT_COLUMNS, hit
from audiofind.store.sqlite.typed import fetch, scalar
from audiofind.store.words import COLUMNS, TOKENIZER, file_words

TABLE = "file_words"
TRIGGERS = ("insert", "update", "delete")


def _values(row: str, facts: bool) -> str:
    """The SQL of the three columns of row (`new` in a trigger, `f` in a query); the name's with its content's
    format when the index records formats (migration m009 added them: m007 and m008 run before)."""
    fmt = f", (SELECT container FROM audio WHERE hash = {row}.hash), (SELECT codec FROM audio WHERE hash = {row}.hash)"
    return ", ".join(
        f"file_words({row}.path, {row}.root, {row}.tags, {i}{fmt if facts and i == 1 else ''})"
        for i in range(len(COLUMNS))
    )


def _schema(facts: bool) -> str:
    values, cols = _values("new", facts), ", ".join(COLUMNS)
    return f"""
CREATE VIRTUAL TABLE {TABLE} USING fts5({cols}, tokenize='{TOKENIZER[0]} {" ".join(TOKENIZER[1])}');
CREATE TRIGGER {TABLE}_insert AFTER INSERT ON files WHEN new.status = 'ok' BEGIN
    INSERT INTO {TABLE} (rowid, {cols}) VALUES (new.id, {values});
END;
CREATE TRIGGER {TABLE}_update AFTER UPDATE ON files BEGIN
    DELETE FROM {TABLE} WHERE rowid = old.id;
    INSERT INTO {TABLE} (rowid, {cols}) SELECT new.id, {values} WHERE new.status = 'ok';
END;
CREATE TRIGGER {TABLE}_delete AFTER DELETE ON files BEGIN
    DELETE FROM {TABLE} WHERE rowid = old.id;
END;
"""


def register(conn: apsw.Connection) -> None:
    """Make `file_words(path, root, tags, part[, container, codec])` callable from this connection's SQL (its
    triggers need it; those made before formats were words call it with four arguments)."""
    for n in (4, 6):
        # apsw types every scalar function as variadic; SQLite calls this one with exactly n arguments
        conn.create_scalar_function("file_words", file_words, n, deterministic=True)  # type: ignore[arg-type]


def has_facts(conn: apsw.Connection) -> bool:
    """Whether this index records each content's container and codec yet (migration m009)."""
    return any(column == "codec" for _, column, *_ in conn.execute("PRAGMA table_info(audio)"))


def create(conn: apsw.Connection) -> None:
    """Create the table and its triggers and fill it from the files already stored (no audio is read)."""
    facts = has_facts(conn)
    conn.execute(_schema(facts))
    conn.execute(
        f"INSERT INTO {TABLE} (rowid, {', '.join(COLUMNS)}) SELECT f.id, {_values('f', facts)} FROM files f "
        "WHERE f.status = 'ok'"
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
    for suffix in TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_{suffix}")
    create(conn)
    return int(scalar(conn, f"SELECT count(*) FROM {TABLE}"))
