"""Nearest files to query vectors on PostgreSQL: pgvector finds candidate segments, numpy scores them exactly.

Two ways to candidates, both re-scored with the SQLite backend's arithmetic (store.ranking), so scores match it:
- exact: the server orders the searchable segments by inner product (a scan, no index); the best are re-scored,
  widening until the k-th file beats, by a margin, every segment left out. Small indexes are scored whole.
- indexed, once `optimize` has built the HNSW index over the binary codes (bit_hamming_ops): the nearest codes,
  with iterative index scans so filters and unfinished contents never leave fewer than asked; widened until k files
  are found, and exact when even that is not enough.
"""

import logging
from typing import Any

import numpy as np

from audiofind.store import ranking
from audiofind.store import vectors as vec
from audiofind.store.postgres import rows
from audiofind.store.postgres.connection import Db, key
from audiofind.store.postgres.filters import conditions
from audiofind.store.postgres.hits import HIT_COLUMNS, hit
from audiofind.store.postgres.roots import Places
from audiofind.store.records import Filters, Hit, ModelBinding

log = logging.getLogger(__name__)

INDEX = "segments_code"  # the HNSW index over binary codes
INDEX_AFTER = 10_000  # coded segments before optimize builds it (below, a scan costs less than keeping it)
CANDIDATES = 400  # segments re-scored exactly per query vector, at least
CANDIDATES_PER_FILE = 20  # ...and this many per file asked for
EF_MAX = 1000  # pgvector's ceiling on hnsw.ef_search
CODES_PER = 500  # segments of the index per code looked at (2,000 codes at a million: recall@10 0.96 there)
SCAN_MAX = 20_000  # candidates an index search may ask for before it gives way to an exact one
MARGIN = 1e-5  # the server's float32 inner products may differ from numpy's by this much
# Segments of contents still being embedded are not searched yet.
_DONE = "NOT EXISTS (SELECT 1 FROM partial p WHERE p.hash = s.hash)"

Fetched = dict[int, tuple[str, float, float, np.ndarray]]  # segment id -> (hash, start, end, vector)


def search(
    db: Db, places: Places, queries: np.ndarray, k: int = 20, filters: Filters | None = None, exact: bool | None = None
) -> list[Hit]:
    """The k files whose best segment is closest to any of the query vectors (Q, D) or (D,), best first (none
    before a model is bound).

    Runs inside the caller's read transaction. exact=True scans every segment; otherwise the HNSW index is used
    when it exists.
    """
    sql = (
        "SELECT key, value FROM meta UNION ALL SELECT '', to_jsonb(coalesce((SELECT indisvalid FROM pg_index "
        "WHERE indexrelid = to_regclass(%s)), false)) UNION ALL SELECT ' ', to_jsonb(reltuples) FROM pg_class "
        "WHERE oid = to_regclass(%s)"
    )
    where_index, where_table = f"{db.schema}.{INDEX}", f"{db.schema}.segments"
    facts: dict[str, Any] = dict(
        db.execute(sql, (where_index, where_table)).fetchall()
    )  # binding, centre, index, size: one trip
    binding = ModelBinding.from_meta(facts)
    if k <= 0 or binding is None:
        return []
    q = vec.normalize(queries)  # (Q, D)
    if q.shape[1] != binding.dim:
        raise ValueError(f"Query vectors have {q.shape[1]} dimensions; this index holds {binding.dim}.")
    cond, params = conditions(None if filters is None or filters.is_empty() else filters, places)
    where = _DONE
    if cond:
        where += (
            f" AND s.hash IN (SELECT f.hash FROM files f JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok'{cond})"
        )
    rank = lambda found: _rank(db, places, found, q, k, cond, params)
    want = max(CANDIDATES, CANDIDATES_PER_FILE * k)
    centre = rows.centre(db, facts)
    if not exact and centre is not None and facts[""]:
        codes = rows.bits(vec.binary_codes(q, centre), binding.dim)
        # Binary codes order segments coarsely: the larger the index, the more of them to look at (500 a million).
        look = max(want, int(facts.get(" ") or 0) // CODES_PER)
        while look <= SCAN_MAX:
            found, full = _nearest_codes(db, codes, q, where, params, look, want)
            hits = rank(found)
            if len(hits) >= k or not full:  # k files, or every searchable segment seen
                return hits
            look, want = 4 * look, 4 * want
    while True:
        found, thresholds = _nearest_exact(db, q, where, params, want)
        hits = rank(found)
        if not thresholds:  # every searchable segment was scored
            return hits
        if len(hits) >= k and hits[k - 1].score > max(thresholds) + MARGIN:
            return hits
        want *= 4


def indexed(db: Db) -> bool:
    """Whether the HNSW index over the binary codes is built and valid."""
    sql = "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)"
    return bool(db.value(sql, (f"{db.schema}.{INDEX}",)))


def _nearest_codes(
    db: Db, codes: list, q: np.ndarray, where: str, params: list, look: int, want: int
) -> tuple[Fetched, bool]:
    """Of the look segments nearest to each query's code (Hamming, through the index), the want of highest inner
    product (ordered on the server: only those travel); whether a query may have more."""
    # How wide the search, and keep going until `look` pass the conditions (for the session: a round trip saved
    # whenever the next search asks the same).
    db.set_once(hnsw_ef_search=min(look, EF_MAX), hnsw_iterative_scan="relaxed_order",
                hnsw_max_scan_tuples=max(SCAN_MAX, 2 * look))  # fmt: skip
    sql = (
        'WITH c AS MATERIALIZED (SELECT s.id, s.hash, s.start, s."end", s.embedding FROM segments s '
        f"WHERE s.code IS NOT NULL AND {where} ORDER BY s.code <~> %s LIMIT %s) "
        'SELECT id, hash, start, "end", embedding FROM c ORDER BY embedding <#> %s LIMIT %s'
    )
    found: Fetched = {}
    full = False
    for code, query in zip(codes, q):
        got = db.execute(sql, [*params, code, look, query, want], binary=True).fetchall()
        full = full or len(got) == want
        found.update((i, (h, s, e, v)) for i, h, s, e, v in got)
    return found, full


def _nearest_exact(db: Db, q: np.ndarray, where: str, params: list, want: int) -> tuple[Fetched, list[float]]:
    """The want segments of highest inner product with each query (a scan); for each query that had more, the
    score below which everything left out lies."""
    sql = (
        f'SELECT s.id, s.hash, s.start, s."end", s.embedding, s.embedding <#> %s AS d FROM segments s WHERE {where} '
        "ORDER BY d LIMIT %s"
    )
    found: Fetched = {}
    thresholds = []
    for query in q:
        got = db.execute(sql, [query, *params, want], binary=True).fetchall()
        if len(got) == want:
            thresholds.append(-float(got[-1][5]))  # <#> is the negated inner product
        found.update((i, (h, s, e, v)) for i, h, s, e, v, _ in got)
    return found, thresholds


def _rank(db: Db, places: Places, found: Fetched, q: np.ndarray, k: int, cond: str, params: list) -> list[Hit]:
    """Score the fetched segments exactly and group them by file (store.ranking), in id order as SQLite does."""
    ids = np.array(sorted(found), dtype=np.int64)
    if not len(ids):
        return []
    seen: dict[int, bool] = {}  # root id -> whether it is there now
    scores = ranking.best_scores(np.stack([found[int(i)][3] for i in ids]), q)

    def segments_of(block: np.ndarray) -> dict[int, tuple[str, float, float]]:
        return {int(i): found[int(i)][:3] for i in block}

    def files_of(hashes: list[str]) -> list[Hit]:
        sql = f"SELECT {HIT_COLUMNS} FROM files f JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok' AND f.hash = ANY(%s){cond}"
        return [hit(places, row, 0.0, None, None, seen) for row in db.execute(sql, [hashes, *params])]

    return ranking.rank_files(ids, scores, k, segments_of, files_of)


def optimize(db: Db) -> None:
    """Build the HNSW index if it is worth having now, unless inside a transaction (no CONCURRENTLY there), another
    writer is building it, or this role does not own the tables (the owner's next run will)."""
    lock = key("hnsw", db.schema)
    if db.in_transaction or not db.value("SELECT pg_try_advisory_lock(%s)", (lock,)):
        return
    try:
        if not owner(db):
            log.info("only the owner of %s builds its search index", db.location)
        elif build_index(db):
            log.info("built the HNSW index of %s", db.location)
    finally:
        db.execute("SELECT pg_advisory_unlock(%s)", (lock,))


def owner(db: Db) -> bool:
    """Whether this role owns the tables (only the owner creates and drops their indexes)."""
    return bool(db.value("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'segments'::regclass"))


def drop_index(db: Db) -> None:
    """Drop the HNSW index, if this role may."""
    if owner(db):
        db.execute(f"DROP INDEX IF EXISTS {INDEX}")


def build_index(db: Db) -> bool:
    """Build the HNSW index over the binary codes once enough segments are coded; True if it did."""
    if indexed(db):
        return False
    if db.value("SELECT count(*) FROM segments WHERE code IS NOT NULL") < INDEX_AFTER:
        return False
    db.execute(f"DROP INDEX IF EXISTS {INDEX}")  # an invalid one left by an interrupted build
    db.execute("SET maintenance_work_mem = '1GB'")  # the graph in memory: a build several times faster
    try:
        # CONCURRENTLY: other writers keep writing while it builds (~7 s for 100k segments on 2 cores).
        db.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON segments USING hnsw (code bit_hamming_ops)")
    finally:
        db.execute("RESET maintenance_work_mem")
    db.execute("ANALYZE segments")
    return True
