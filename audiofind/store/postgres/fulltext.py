"""The names index on PostgreSQL: the same stems, phrases and BM25 as SQLite's FTS5, kept in `files`.

Each ok file keeps the stems of its three columns (`words`, by `store.words`, which borrows FTS5's own porter
tokenizer), their count (`n_words`) and a tsvector of them (`terms`, lexemes given verbatim, so the server's
parser never splits a stem differently; one position left empty between columns, so no phrase spans two). The
server finds the files that match (GIN index, `@@` with `<->` for phrases); Python scores them with FTS5's bm25
formula over the same counts (rows, tokens, rows holding each phrase), so both backends rank the same files in the
same order, ties going to the file indexed first.
"""

from audiofind.store.postgres.connection import Db
from audiofind.store.postgres.hits import HIT_COLUMNS, hit
from audiofind.store.postgres.roots import Places
from audiofind.store.records import Hit, NameQuery, norm_path
from audiofind.store.words import Doc, bm25, file_words, idf, phrase, stems

MAX_POSITION = 16383  # tsvector positions stop here


def _quote(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def columns(
    relpath: str, root: str, tags: dict, container: str | None = None, codec: str | None = None
) -> tuple[list[str], int, str]:
    """A file's names-index data: the stems of its columns (space-joined), how many, and their tsvector; container
    and codec are its content's (its format is among its words)."""
    path, base = (f"/{relpath}", "/") if relpath else (root, root)  # '' when the root is the file itself
    cols = [stems(file_words(path, base, tags, part, container, codec)) for part in range(3)]
    positions: dict[str, list[int]] = {}
    at = 0
    for col in cols:
        for token in col:
            at += 1
            positions.setdefault(token, []).append(min(at, MAX_POSITION))
        at += 1  # an empty position between columns: `a <-> b` never spans two
    terms = " ".join(f"{_quote(t)}:{','.join(map(str, ps))}" for t, ps in positions.items())
    return [" ".join(c) for c in cols], sum(len(c) for c in cols), terms


def doc(words: list[str]) -> Doc:
    """The stored stems of a file as a Doc."""
    return Doc(tuple(tuple(c.split(" ")) if c else () for c in words))


def tsquery(p: tuple[str, ...]) -> str:
    """A phrase as tsquery text: its stems, each followed by the next."""
    return " <-> ".join(_quote(t) for t in p)


def expression(q: NameQuery) -> str | None:
    """q as one tsquery: any of the words, every phrase, none of the excluded; None if nothing can match."""
    parts = []
    if q.words:
        any_of = [tsquery(p) for p in map(phrase, q.words) if p]
        if not any_of:
            return None
        parts.append("(" + " | ".join(any_of) + ")")
    for p in map(phrase, q.phrases):
        if not p:
            return None
        parts.append(f"({tsquery(p)})")
    if not parts:
        return None
    excluded = [tsquery(p) for p in map(phrase, q.excluded) if p]
    return " & ".join(parts) + (f" & !({' | '.join(excluded)})" if excluded else "")


def ranked(db: Db, places: Places, q: NameQuery, limit: int, cond: str = "", params: list | None = None) -> list[Hit]:
    """Ok files matching q, best BM25 first (ties: the file indexed first), scored as FTS5 scores them."""
    expr = expression(q) if q.terms else None
    if expr is None or limit <= 0:
        return []
    sql = (
        f"SELECT f.id, f.words, {HIT_COLUMNS} FROM files f "
        f"JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok' AND f.terms @@ %s::tsquery{cond}"
    )
    found = db.execute(sql, [expr, *(params or [])]).fetchall()
    if not found:
        return []
    rows, tokens = db.one("SELECT count(*), coalesce(sum(n_words), 0) FROM files WHERE status = 'ok'")
    # FTS5 numbers phrases as they appear: the words, then the phrases (excluded ones never occur in a match).
    phrases = [phrase(t) for t in q.words + q.phrases]
    hit_sql = "SELECT count(*) FROM files WHERE status = 'ok' AND terms @@ %s::tsquery"
    idfs = [idf(rows, db.value(hit_sql, (tsquery(p),)) if p else 0) for p in phrases]
    avgdl = tokens / rows
    scored = sorted(((bm25(doc(w), phrases, idfs, avgdl), i, row) for i, w, *row in found), key=lambda x: (-x[0], x[1]))
    seen: dict[int, bool] = {}  # root id -> whether it is there now
    return [hit(places, tuple(row), score, None, None, seen) for score, _, row in scored[:limit]]


def holding(db: Db, places: Places, terms: list[str], paths: list[str]) -> dict[str, list[str]]:
    """For each of paths, which of terms its names and tags hold (each term as a phrase of its stems)."""
    found: dict[str, list[str]] = {}
    spots: dict[tuple[int, str], str] = {}
    for p in paths:
        at = places.locate(p)
        shown = p if places.named(p) else norm_path(p)
        found[shown] = []
        if at is not None:
            spots[(at[0].id, at[1])] = shown
    if not spots or not terms:
        return found
    sql = (
        "SELECT f.root_id, f.relpath, f.words FROM files f JOIN unnest(%s::int[], %s::text[]) AS s(root_id, relpath) "
        "ON f.root_id = s.root_id AND f.relpath = s.relpath WHERE f.status = 'ok'"
    )
    for root_id, rel, words in db.execute(sql, ([r for r, _ in spots], [p for _, p in spots])):
        held = doc(words)
        found[spots[(root_id, rel)]] = [t for t in terms if held.holds(phrase(t))]
    return found


def has_facts(db: Db) -> bool:
    """Whether this index records each content's container and codec yet (migration m007)."""
    sql = (
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = 'audio' "
        "AND column_name = 'codec')"
    )
    return bool(db.value(sql, (db.schema,)))


def refill(db: Db, places: Places) -> int:
    """Compute every ok file's names-index data again from its path, tags and format (where the index records
    formats: m006 runs before m007 adds them); how many files it holds."""
    fmt = "a.container, a.codec" if has_facts(db) else "NULL, NULL"
    sql = f"SELECT f.id, f.root_id, f.relpath, f.tags, {fmt} FROM files f JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok'"
    values = []
    for id, root_id, rel, tags, container, codec in db.execute(sql).fetchall():
        words, n, terms = columns(rel, places.root(root_id).label, tags, container, codec)
        values.append((words, n, terms, id))
    db.executemany("UPDATE files SET words = %s, n_words = %s, terms = %s::tsvector WHERE id = %s", values)
    return len(values)
