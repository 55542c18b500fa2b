"""The `meta` table: the model binding, the centre of the binary codes and the version of the searchable segments."""

import apsw

from audiofind.store.records import BINDING_KEYS, ModelBinding

# vec0 reads a whole chunk to return one row: 16 vectors a chunk keeps re-scoring 1000 candidates near 15 ms at
# 100k x 1024, where the default 1024 costs ~290 ms; brute-force KNN speed is the same.
CHUNK_SIZE = 16


def read(conn: apsw.Connection) -> dict[str, object]:
    """Every key and value of the meta table."""
    return dict(conn.execute("SELECT key, value FROM meta"))


def binding(conn: apsw.Connection) -> ModelBinding | None:
    """The model binding recorded, or None before the first bind."""
    return ModelBinding.from_meta(read(conn))


def bind(conn: apsw.Connection, binding: ModelBinding) -> None:
    """Record the model on an index with no vectors, the vectors' table made anew for its dimension."""
    conn.execute("DROP TABLE IF EXISTS vectors")
    conn.execute(
        f"CREATE VIRTUAL TABLE vectors USING vec0("
        f"embedding float[{int(binding.dim)}] distance_metric=cosine, chunk_size={CHUNK_SIZE})"
    )
    conn.execute("DELETE FROM meta")
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", zip(BINDING_KEYS, binding.values()))


def touched(conn: apsw.Connection) -> None:
    """Note that the searchable segments changed, so saved codes no longer describe them."""
    sql = (
        "INSERT INTO meta (key, value) VALUES ('segments_version', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
    )
    conn.execute(sql)
