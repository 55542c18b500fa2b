"""Filters (store.records.Filters) as SQL conditions on `files f JOIN audio a`, for searches by sound and by name:
the same files the SQLite backend lets through."""

from psycopg.types.json import Jsonb

from audiofind.store.postgres.roots import Places
from audiofind.store.records import Filters
from audiofind.store.scope import under_folders


def spots(folder: str, places: Places) -> list[tuple[int, str]]:
    """(root id, relpath prefix) of every stored place at or below folder, as given, as resolved, or through a
    root indexed via a symlink ('' prefix: the whole root)."""
    named = places.named(folder)
    if named is not None:
        return [(named[0].id, named[1])]
    found: list[tuple[int, str]] = []
    for f in under_folders(folder, [r.mount for r in places.local() if r.mount]):
        found += [s for s in places.prefixes(f) if s not in found]
    return found


def conditions(filters: Filters | None, places: Places) -> tuple[str, list]:
    """SQL conditions on files f joined with audio a (each starting with AND), and their parameters."""
    if filters is None or filters.is_empty():
        return "", []
    conds: list[str] = []
    params: list = []
    if filters.under:
        places.reload()  # a folder is matched against every root known now
        at = spots(filters.under, places)
        ors = []
        for root_id, prefix in at:
            if prefix:
                ors.append("(f.root_id = %s AND (f.relpath = %s OR starts_with(f.relpath, %s)))")
                params += [root_id, prefix, prefix + "/"]
            else:
                ors.append("f.root_id = %s")
                params.append(root_id)
        conds.append("(" + " OR ".join(ors) + ")" if ors else "false")
    if filters.exts:
        # Extensions are ASCII: the server's lower() folds them whatever its locale.
        exts = sorted({"." + e.casefold().lstrip(".") for e in filters.exts})
        conds.append("(" + " OR ".join("lower(right(f.relpath, %s)) = %s" for _ in exts) + ")")
        params += [x for e in exts for x in (len(e), e)]
    if filters.min_duration is not None:
        conds.append("a.duration >= %s")
        params.append(float(filters.min_duration))
    if filters.max_duration is not None:
        conds.append("a.duration <= %s")
        params.append(float(filters.max_duration))
    if filters.paths is not None:
        places.reload()  # once: a path under no root is looked for no further
        located = [found for p in sorted(filters.paths) if (found := places.locate(p, again=False))]
        conds.append("(f.root_id, f.relpath) IN (SELECT * FROM unnest(%s::int[], %s::text[]))")
        params += [[r.id for r, _ in located], [rel for _, rel in located]]
    if filters.min_rate is not None:
        conds.append("a.sample_rate >= %s")
        params.append(int(filters.min_rate))
    if filters.channels is not None:
        conds.append("a.channels = %s")
        params.append(int(filters.channels))
    for key, value in (filters.tags or {}).items():
        # folded holds every tag as a list of case-folded strings, each value whole and each of its ;-separated
        # parts (rows.fold_tags): containment is "any element matches".
        conds.append("f.folded @> %s")
        params.append(Jsonb({key.casefold(): [str(value).casefold()]}))
    return "".join(f" AND {c}" for c in conds), params
