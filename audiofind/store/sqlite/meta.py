"""The `meta` table: the model binding, the centre of the binary codes and the version of the searchable segments."""

import apsw

from audiofind.store.records import ModelBinding


def read(conn: apsw.Connection) -> dict[str, object]:
    """Every key and value of the meta table."""
    return dict(conn.execute("SELECT key, value FROM meta"))


def binding(conn: apsw.Connection) -> ModelBinding | None:
    """The model binding recorded, or None before the first bind."""
    return ModelBinding.from_meta(read(conn))


def touched(conn: apsw.Connection) -> None:
    """Note that the searchable segments changed, so saved codes no longer describe them."""
    sql = "INSERT INTO meta (key, value) VALUES ('segments_version', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
    conn.execute(sql)
