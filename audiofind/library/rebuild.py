"""Rebuilding an index without risk: a new file beside the database, swapped in only once it is complete.

`index --rebuild` embeds every root the index knows (and those named) into `<db>.rebuild`. Until the swap, search,
status and serve keep reading the old index; an interrupted rebuild is continued by the next `index --rebuild`
(everything it committed is kept); a failed one leaves the old index exactly as it was. The new file replaces the
old one with one atomic rename, and only when it holds every root's files: a root that is unplugged, or that lost
more than a quarter of its files, stops the swap until it is back or `--prune` says the files are gone.
"""

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from audiofind.errors import RebuildIncomplete, StorageError
from audiofind.library.sync import PRUNE_MIN, PRUNE_SHARE, Report, binding, prepare, sync
from audiofind.library.walk import absolute, readable
from audiofind.model.encoder import Encoder
from audiofind.store import Index, norm_path
from audiofind.store.sqlite.connection import connect

log = logging.getLogger(__name__)

SWAP_WAIT = 30.0  # seconds to wait for readers of the old index to let its write-ahead log be emptied


def staging_path(db: Path | str) -> Path:
    """Where a rebuild of db is built."""
    return Path(f"{norm_path(db)}.rebuild")


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def rebuild(db: Path | str, encoder: Encoder, roots: Iterable[Path], *, prune: bool = False, **kwargs) -> Report:
    """Embed every root of db (plus roots) into a new file with encoder, then swap it in; see the module doc."""
    db = Path(norm_path(db))
    counts: dict[str, int] = {}
    known: list[Path] = []
    if db.exists():
        with Index.open(db, create=False) as old:
            known = [Path(r.path) for r in old.roots()]
            counts = {str(r): len(old.files_under([r])) for r in known}
    wanted = list(dict.fromkeys([*known, *absolute(roots)]))
    wanted = [r for r in wanted if not any(o in r.parents for o in wanted)]  # a named subfolder is in its root
    stage = staging_path(db)
    if stage.exists():
        with Index.open(stage) as new:
            current = new.model()
        if current is not None and not current.same_vectors(binding(encoder)):
            log.info("discarding an unfinished rebuild of %s made with model %s", db, current.name)
            _remove(stage)
    missing = [r for r in wanted if not (r.is_dir() and readable(r))]
    with Index.open(stage, create=True) as new:
        prepare(new, encoder)
        report = sync(new, encoder, [r for r in wanted if r not in missing], prune=prune, **kwargs)
        if report.stopped:
            return report
        short = [] if prune else _shortfalls(new, counts, missing)
        if short:
            raise RebuildIncomplete(
                f"The rebuilt index is not in use yet: {'; '.join(short)}. The current index is unchanged; run the "
                "same command when the folders are back (what was embedded is kept), or add --prune to drop them."
            )
        if prune:
            for root in missing:
                new.forget_root(root)
        new.conn.execute("PRAGMA journal_mode=DELETE").fetchall()  # one self-contained file, ready to be renamed
    _swap(stage, db)
    log.info("rebuilt %s", db)
    return report


def _shortfalls(new: Index, counts: dict[str, int], missing: list[Path]) -> list[str]:
    """Why the new index cannot replace the old one yet: roots missing, or holding far fewer files than before."""
    out = []
    for root, before in counts.items():
        after = len(new.files_under([root]))
        lost = before - after
        if Path(root) in missing and before:
            out.append(f"{root} is not available ({before:,} files in the current index)")
        elif before and (after == 0 or (lost > PRUNE_MIN and lost > PRUNE_SHARE * before)):
            out.append(f"{root} holds {after:,} of the {before:,} files the current index has")
    return out


def _swap(stage: Path, db: Path) -> None:
    """Atomically replace db by stage, once db's write-ahead log is empty (else its pages would apply to stage)."""
    if db.exists():
        conn = connect(db, create=False)
        try:
            deadline = time.monotonic() + SWAP_WAIT
            while True:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"Readers keep {db} busy, so the rebuilt index could not replace it; it is ready at {stage}: "
                        "run the same command again when searches have finished."
                    )
                time.sleep(0.1)
        finally:
            conn.close()
    os.replace(stage, db)
