"""Query results typed as the schema says their columns hold: apsw types every value as any SQLite value (or a
missing row), which the code would otherwise narrow value by value. The schema (migrations.py) is the promise."""

from typing import Any

import apsw


def scalar(conn: apsw.Connection, sql: str, params: tuple | list = ()) -> Any:
    """The one value a query like `SELECT count(*)` returns, typed as what the schema says it holds (apsw types
    every value as any SQLite value)."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def fetch(conn: apsw.Connection, sql: str, params: tuple | list = ()) -> list[Any]:
    """Every row of a query, each typed as what the schema says its columns hold (see scalar)."""
    return list(conn.execute(sql, params))
