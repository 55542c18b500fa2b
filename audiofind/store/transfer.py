"""Copying a whole index between backends and places (`audiofind db copy`): nothing embedded again.

The source is read in one snapshot (`Store.dump`) and the destination written in one transaction (`Store.load`,
binary COPY on PostgreSQL), so a copy that stops half-way leaves the destination as it was. Vectors arrive bit for
bit, file ids and root names are kept; unfinished contents (a long recording being embedded) are left behind.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from audiofind.errors import UsageError
from audiofind.store import open_store
from audiofind.store.protocol import Store

BATCH = 512  # contents or files a portion


@dataclass(frozen=True)
class CopyReport:
    """What one copy moved, and where (locations as shown: no password)."""

    source: str
    destination: str
    files: int
    contents: int
    segments: int
    seconds: float

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


def holds_index(store: Store) -> bool:
    """Whether a store already holds something worth keeping: a model binding, a root or a file."""
    return store.model() is not None or bool(store.roots()) or store.stats().files > 0


def copy_index(
    src: Path | str, dst: Path | str, replace: bool = False, progress: Callable[[int, int], None] | None = None
) -> CopyReport:
    """Copy the whole index at src to dst (either may be a file or a URL); UsageError if dst holds an index and
    replace is not set. progress gets (contents and files done, total)."""
    started = time.monotonic()
    with open_store(src) as source, open_store(dst, create=True) as dest:
        if source.location == dest.location:
            raise UsageError(f"{source.location} is both the source and the destination; copy it somewhere else.")
        if holds_index(dest) and not replace:
            raise UsageError(
                f"{dest.location} already holds an index; add --replace to overwrite it with {source.location}."
            )
        before = source.stats()
        total, done, files, contents, segments = before.audio + before.files, 0, 0, 0, 0
        with dest.transaction():
            dest.reset()
            for portion in source.dump(BATCH):
                dest.load(portion)
                contents += len(portion.contents)
                files += len(portion.files)
                segments += sum(len(c.segments) for c in portion.contents)
                done += len(portion.contents) + len(portion.files)
                if progress:
                    progress(done, max(total, done))
        dest.optimize()
        return CopyReport(source.location, dest.location, files, contents, segments, time.monotonic() - started)
