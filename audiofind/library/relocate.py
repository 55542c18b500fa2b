"""Libraries that moved: re-pointing a root (`roots move`), and telling `index` that a new folder is a missing root.

A library folder that is renamed, moved to another drive or mounted elsewhere holds the same files at the same
relative paths. Indexing the new place as a folder of its own would list every sound twice (the old root is only
missing, so its files are kept), so `sync` first asks `find`: a new root whose files match most of a missing
root's is left alone, with a line that names `audiofind roots move OLD NEW`, which re-points the old root.
"""

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from audiofind.errors import UsageError
from audiofind.library.decoding import Work
from audiofind.paths import hash_file
from audiofind.store import FileRow, Store, norm_path
from audiofind.store.scope import check_move, within

log = logging.getLogger(__name__)

SAMPLE = 5  # matching files hashed to confirm a relocation: enough to tell a copy of the names from the sounds
SAMPLE_FILES = 200  # indexed files looked for at the new place before a move is believed


def move_root(index: Store, old: Path | str, new: Path | str) -> int:
    """Re-point the indexed folder old at new, where it is now (Store.move_root), after checking the disk: new is a
    folder, and old no longer holds the files indexed there (then new is a copy). How many files it holds."""
    old_s, new_s = norm_path(old), norm_path(new)
    if not os.path.isdir(new_s):
        why = "does not exist" if not os.path.lexists(new_s) else "is not a folder"
        raise UsageError(f"{new_s} {why}: move the library there first, then run this again; nothing was moved.")
    rows = index.files_under([old_s])
    still = next((r.path for r in rows if os.path.exists(r.path)), None)
    if still is not None:
        raise UsageError(
            f"{old_s} still holds its indexed files ({still}), so {new_s} is a copy, not a move: index it as a "
            "folder of its own (copies reuse their vectors, nothing is embedded again); nothing was moved."
        )
    others = [r.path for r in index.roots() if r.local and r.path != old_s and not within(r.path, old_s)]
    check_move(old_s, new_s, others)  # the store checks again as it moves; here, so its reasons come first
    sample = rows[:: max(1, len(rows) // SAMPLE_FILES)][
        :SAMPLE_FILES
    ]  # spread over the library, a few stats on a slow share
    if sample and not any(os.path.exists(os.path.join(new_s, os.path.relpath(r.path, old_s))) for r in sample):
        raise UsageError(
            f"{new_s} holds none of the files indexed under {old_s} (looked for {len(sample):,} of them, such as "
            f"{os.path.relpath(sample[0].path, old_s)}): is it the folder the library moved to? Nothing was moved."
        )
    return index.move_root(old_s, new_s)


@dataclass(frozen=True)
class Relocation:
    """A new folder holding the files of a root that is missing: most likely that root, moved."""

    old: str  # the missing root
    new: str  # the folder given to index
    files: int  # the missing root's files found at the same relative path with the same size
    of: int  # the missing root's indexed files

    def as_dict(self) -> dict:
        """The entry of the index report's `relocated` list."""
        return {"old": self.old, "new": self.new, "files": self.files}

    @property
    def hint(self) -> str:
        """One line that says so and how to re-point the old root."""
        return (
            f"{self.files:,} of the {self.of:,} files of the missing folder {self.old} are here: it moved? Nothing "
            f"was indexed here; to re-point it without embedding anything, run: audiofind roots move "
            f"{shlex.quote(self.old)} {shlex.quote(self.new)}"
        )


def find(index: Store, fresh: list[Path], on_disk: list[Work]) -> list[Relocation]:
    """Those of the fresh roots (given to a sync, holding no indexed file yet, walked into on_disk) that hold most of
    a missing root's files: same relative paths and sizes, and the same content for a hashed sample."""
    missing = [r for r in index.roots() if r.local and not r.available and r.files]
    if not missing:
        return []
    stored = {r.path: [f for f in index.files_under([r.path]) if f.status == "ok" and f.hash] for r in missing}
    found = []
    for root in fresh:
        if index.files_under([root]):  # it holds files of other extensions than this run's --ext: not new
            continue
        here = {os.path.relpath(w.path, root): w for w in on_disk if w.root == str(root)}
        best: Relocation | None = None
        for old, rows in stored.items():
            if within(str(root), old) or within(old, str(root)) or not rows:
                continue
            found_here = ((f, here.get(os.path.relpath(f.path, old))) for f in rows)
            pairs = [(f, w) for f, w in found_here if w is not None and w.size == f.size]
            if 2 * len(pairs) > len(rows) and (best is None or len(pairs) > best.files) and _same_sounds(pairs):
                best = Relocation(old, str(root), len(pairs), len(rows))
        if best is not None:
            log.info("%s holds %d of the %d files of the missing root %s", root, best.files, best.of, best.old)
            found.append(best)
    return found


def _same_sounds(pairs: list[tuple[FileRow, Work]]) -> bool:
    """Whether most of a sample of the matching files, spread over them, hold the indexed content."""
    step = max(1, len(pairs) // SAMPLE)
    sample = pairs[::step][:SAMPLE]
    same = 0
    for row, work in sample:
        try:
            same += hash_file(work.path) == row.hash
        except OSError:
            continue  # unreadable now: not evidence either way
    return 2 * same > len(sample)
