"""Rebuilding an index without risk: a new index beside the old one, swapped in only once it is complete.

`index --rebuild` embeds every root the index knows (and those named) into the store's staging area (`<db>.rebuild`
for SQLite). Until the swap, search, status and serve keep reading the old index; an interrupted rebuild is
continued by the next `index --rebuild` (everything it committed is kept); a failed one leaves the old index
exactly as it was. The new index replaces the old one atomically, and only when it holds every root's files: a root
that is unplugged, or that lost more than a quarter of its files, stops the swap until it is back or `--prune` says
the files are gone.
"""

import logging
from collections.abc import Iterable
from pathlib import Path

from audiofind.errors import RebuildIncomplete
from audiofind.library.sync import PRUNE_MIN, PRUNE_SHARE, Report, binding, prepare, sync
from audiofind.library.walk import absolute, readable
from audiofind.model.embedder import Embedder
from audiofind.store import Store

log = logging.getLogger(__name__)


def rebuild(index: Store, encoder: Embedder, roots: Iterable[Path], *, prune: bool = False, **kwargs) -> Report:
    """Embed every root of index (plus roots) into its staging store with encoder, then swap it in; closes index
    when it swaps. See the module doc."""
    known = [Path(r.path) for r in index.roots()]
    counts = {str(r): len(index.files_under([r])) for r in known}
    wanted = list(dict.fromkeys([*known, *absolute(roots)]))
    wanted = [r for r in wanted if not any(o in r.parents for o in wanted)]  # a named subfolder is in its root
    new = index.staging()
    current = new.model()
    if current is not None and not current.same_vectors(binding(encoder)):
        log.info("discarding an unfinished rebuild of %s made with model %s", index.location, current.name)
        new.close()
        index.discard_staging()
        new = index.staging()
    missing = [r for r in wanted if not (r.is_dir() and readable(r))]
    try:
        prepare(new, encoder)
        report = sync(new, encoder, [r for r in wanted if r not in missing], prune=prune, **kwargs)
        if report.stopped:
            new.close()
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
    except BaseException:
        new.close()
        raise
    index.replace_with(new)
    log.info("rebuilt %s", index.location)
    return report


def _shortfalls(new: Store, counts: dict[str, int], missing: list[Path]) -> list[str]:
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
