"""The facts of each content (container, codec, bit depth) for a PostgreSQL index made before they were recorded.

As on SQLite (store.headers): read from the header of one of the content's files, only a file this machine mounts
and only if it is still the very one indexed (same size and modification time). A content none of whose files this
machine can read so keeps NULL facts until it is indexed again (from here or from another machine).
"""

import logging

from audiofind.store.headers import read
from audiofind.store.postgres.connection import Db
from audiofind.store.postgres.roots import Places

log = logging.getLogger(__name__)


def fill(db: Db, places: Places) -> int:
    """Fill the NULL facts of every content with a file readable here, inside the caller's transaction; how many."""
    sql = (
        "SELECT a.hash, f.root_id, f.relpath, f.size, f.mtime_ns FROM audio a JOIN files f ON f.hash = a.hash "
        "WHERE f.status = 'ok' AND a.codec IS NULL ORDER BY a.hash, f.id"
    )
    done: set[str] = set()
    tried = 0
    for hash, root_id, rel, size, mtime_ns in db.execute(sql).fetchall():
        root = places.root(root_id)
        if hash in done or root.mount is None:  # a root this machine does not mount: another machine's to read
            continue
        tried += 1
        info = read(root.path(rel), int(size), int(mtime_ns))
        if info is not None:
            update = "UPDATE audio SET container = %s, codec = %s, bits = %s WHERE hash = %s"
            db.execute(update, (info.container, info.codec, info.bits, hash))
            done.add(str(hash))
    log.info("read the facts of %d contents from their headers (%d files tried)", len(done), tried)
    return len(done)
