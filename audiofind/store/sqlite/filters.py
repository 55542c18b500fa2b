"""Filters (store.records.Filters) as SQL conditions on `files f JOIN audio a`, for searches by sound and by name."""

import json
from collections.abc import Iterable

import apsw

from audiofind.store.records import Filters, folder_prefix, tag_forms
from audiofind.store.scope import under_folders


def casefold(value: object) -> object:
    """The SQL function casefold(x): Python's casefold, so extensions and tags compare as Python compares them."""
    return value.casefold() if isinstance(value, str) else value


def tag_holds(value: object, wanted: str) -> bool:
    """The SQL function tag_holds(value, wanted): whether a stored tag value (text) holds wanted, a case-folded
    filter value, whole or as one of its ;-separated parts (records.tag_forms)."""
    return isinstance(value, str) and wanted in tag_forms(value)


def register(conn: apsw.Connection) -> None:
    """Make casefold(x) and tag_holds(value, wanted) callable from this connection's SQL."""
    # apsw types every scalar function as variadic; SQLite calls these with exactly this many arguments
    conn.create_scalar_function("casefold", casefold, 1, deterministic=True)  # type: ignore[arg-type]
    conn.create_scalar_function("tag_holds", tag_holds, 2, deterministic=True)  # type: ignore[arg-type]


def ids_json(ids: Iterable[int]) -> str:
    """Integer ids as one JSON parameter, for `IN (SELECT value FROM json_each(?))`."""
    return json.dumps([int(i) for i in ids])


def json_list(values: Iterable[str]) -> str:
    """Strings as one JSON parameter, for `IN (SELECT value FROM json_each(?))`."""
    return json.dumps(list(values))


def conditions(filters: Filters | None, roots: list[str]) -> tuple[str, list]:
    """SQL conditions on files f joined with audio a (each starting with AND), and their parameters.

    roots: the indexed folders, to find a folder given by its real path under a root indexed through a symlink.
    """
    if filters is None or filters.is_empty():
        return "", []
    conds: list[str] = []
    params: list[str | int | float] = []
    if filters.under:
        folders = under_folders(filters.under, roots)
        conds.append("(" + " OR ".join("f.path = ? OR substr(f.path, 1, ?) = ?" for _ in folders) + ")")
        params += [x for folder in folders for x in (folder, len(folder_prefix(folder)), folder_prefix(folder))]
    if filters.exts:
        exts = sorted({"." + e.casefold().lstrip(".") for e in filters.exts})
        conds.append("(" + " OR ".join("casefold(substr(f.path, -?)) = ?" for _ in exts) + ")")
        params += [x for e in exts for x in (len(e), e)]
    if filters.min_duration is not None:
        conds.append("a.duration >= ?")
        params.append(float(filters.min_duration))
    if filters.max_duration is not None:
        conds.append("a.duration <= ?")
        params.append(float(filters.max_duration))
    if filters.paths is not None:
        conds.append("f.path IN (SELECT value FROM json_each(?))")
        params.append(json_list(sorted(filters.paths)))
    if filters.min_rate is not None:
        conds.append("a.sample_rate >= ?")
        params.append(int(filters.min_rate))
    if filters.channels is not None:
        conds.append("a.channels = ?")
        params.append(int(filters.channels))
    for key, value in (filters.tags or {}).items():
        # A tag value is a string or, as mutagen often gives, a list of strings: any element may match, whole or
        # by one of its ;-separated parts.
        conds.append(
            "EXISTS (SELECT 1 FROM json_each(f.tags) t WHERE casefold(t.key) = ? AND (tag_holds(t.value, ?) OR "
            "(t.type = 'array' AND EXISTS (SELECT 1 FROM json_each(t.value) e WHERE tag_holds(e.value, ?)))))"
        )
        params += [key.casefold(), str(value).casefold(), str(value).casefold()]
    return "".join(f" AND {c}" for c in conds), params
