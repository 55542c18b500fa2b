"""What a search returns of each file on PostgreSQL: its Hit, with the file's facts and whether its root is there."""

import os

from audiofind.store.postgres.roots import Places
from audiofind.store.records import Hit

# What a search selects of each file `f` and its content `a`, for hit() to read.
HIT_COLUMNS = (
    "f.root_id, f.relpath, f.hash, f.tags, a.duration, a.container, a.codec, a.sample_rate, a.bits, a.channels"
)


def hit(places: Places, row: tuple, score: float, start: float | None, end: float | None, seen: dict[int, bool]) -> Hit:
    """The Hit of a row of HIT_COLUMNS (start and end None: the whole file). Available: this machine mounts its root
    and the folder is there now; seen caches that per root for one search."""
    root_id, rel, hash, tags, duration, container, codec, rate, bits, channels = row
    root = places.root(root_id)
    if root_id not in seen:
        seen[root_id] = root.mount is not None and os.path.isdir(root.mount)
    whole = (0.0, float(duration)) if start is None or end is None else (start, end)
    shown = dict(sorted(tags.items()))  # in key order, as the SQLite backend returns them (jsonb keeps its own)
    return Hit(root.path(rel), score, *whole, float(duration), shown, hash, container, codec, rate, bits, channels,
               seen[root_id])  # fmt: skip
