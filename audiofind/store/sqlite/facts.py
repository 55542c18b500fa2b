"""The facts of each content (container, codec, bit depth) for an index made before they were recorded.

Read from the header of one of the content's files, only if that file is still the very one indexed (same size and
modification time): no audio is decoded and nothing is embedded. A content none of whose files can be read so
(an unplugged drive, a deleted or changed file) keeps NULL facts until it is indexed again.
"""

import logging

import apsw

from audiofind.store.headers import read
from audiofind.store.sqlite.typed import fetch

log = logging.getLogger(__name__)


def fill(conn: apsw.Connection) -> int:
    """Fill the NULL facts of every content with a readable file, inside the caller's transaction; how many."""
    sql = (
        "SELECT a.hash, f.path, f.size, f.mtime_ns FROM audio a JOIN files f ON f.hash = a.hash "
        "WHERE f.status = 'ok' AND a.codec IS NULL ORDER BY a.hash, f.id"
    )
    done: set[str] = set()
    tried = 0
    for hash, path, size, mtime_ns in fetch(conn, sql):
        if hash in done:
            continue
        tried += 1
        info = read(path, size, mtime_ns)
        if info is not None:
            update = "UPDATE audio SET container = ?, codec = ?, bits = ? WHERE hash = ?"
            conn.execute(update, (info.container, info.codec, info.bits, hash))
            done.add(str(hash))
    log.info("read the facts of %d contents from their headers (%d files tried)", len(done), tried)
    return len(done)
