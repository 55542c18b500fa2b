"""Copies in a library: exact ones (the same content hash) and near ones (the same recording in another codec, sample
rate, channel count, gain, or trimmed by up to a second: acoustic fingerprints alike). Never deletes anything.

Near copies are found by fingerprint (audio.fingerprint, compared by audio.printmatch, grouped by search.copies),
not by the model: a model's vectors say "sounds like the same kind of thing", a fingerprint "is the same
recording", and the grouping is the same whichever model built the index, or none. Each content's fingerprint is
made when it is indexed; contents indexed before that get theirs on the first run here (decoding, no model).
Each file is in one group at most: a near group holds every file of each content it links, and says which of them
are exact copies of each other (`identical`); an exact group is one content in several files that no other content
is near. A group's `wasted` bytes are what keeping only its largest file would free, so the groups' sum is true.
"""

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from audiofind.audio.printmatch import NEAR
from audiofind.errors import DecodeError, StorageError, UsageError
from audiofind.search.copies import group
from audiofind.store import FileRow, Store

log = logging.getLogger(__name__)

FILL_BATCH = 64  # fingerprints made before they are stored: a stopped fill keeps what it made

Progress = Callable[[str, int, int], None]  # (what: "fingerprints" | "comparisons", done, total)


@dataclass(frozen=True)
class Member:
    """One file of a group, as indexed."""

    path: str
    bytes: int
    available: bool  # its root folder is there now (False: an unplugged drive), as search's hits say


@dataclass(frozen=True)
class Group:
    """Files holding the same recording: exactly (one content) or nearly (several contents, fingerprints alike)."""

    kind: str  # "exact": one content in several files | "near": several contents, one recording
    paths: list[str]
    bytes: int  # all of them together
    wasted: int  # freed by keeping only the largest
    files: list[Member]  # the paths' files, in the same order
    identical: list[list[str]]  # paths sharing one content (byte-for-byte copies), each list of two or more

    def as_dict(self) -> dict:
        """The object `duplicates --json` prints."""
        return asdict(self)


def find(
    index: Store,
    paths: list[Path] | list[str] | None = None,
    near: float | None = NEAR,
    progress: Progress | None = None,
) -> list[Group]:
    """Groups of copies among the ok files of the whole index, largest waste first; with paths, only the groups
    holding a file under one of them (with all their files, wherever the others are).

    near is the fingerprint similarity (0 to 1) at or above which two contents count as one recording; 0 or None
    lists exact copies only. progress gets the fingerprints made for contents that had none, then comparisons.
    UsageError for a path that neither exists nor holds indexed files (an unplugged drive's folders still do).
    """
    if near is not None and not 0 <= near <= 1:
        raise UsageError(f"--near is a fingerprint similarity from 0 to 1, got {near:g}.")
    for path in paths or []:
        if not Path(path).exists() and not index.files_under([path]):
            raise UsageError(f"{path}: no such folder.")
    roots = index.roots()
    by_hash: dict[str, list[FileRow]] = {}
    for r in index.files_under([r.path for r in roots]):
        if r.status == "ok" and r.hash:
            by_hash.setdefault(r.hash, []).append(r)
    sets = [[h] for h, files in by_hash.items() if len(files) > 1]
    if near:  # 0 (or None): exact copies only
        prints = fingerprints(index, by_hash, progress)
        step = (lambda done, total: progress("comparisons", done, total)) if progress else None
        linked = group(prints, near, step)
        absorbed = {h for hashes in linked for h in hashes}  # a content near another is listed with it, not alone
        sets = [s for s in sets if s[0] not in absorbed] + linked
    online = {r.path: r.available for r in roots}
    groups = [_group(hashes, by_hash, online) for hashes in sets]
    if paths:
        wanted = {r.path for r in index.files_under(paths)}
        groups = [g for g in groups if not wanted.isdisjoint(g.paths)]
    return sorted(groups, key=lambda g: (-g.wasted, g.kind, g.paths))


def fingerprints(index: Store, by_hash: dict[str, list[FileRow]], progress: Progress | None = None) -> dict[str, bytes]:
    """The fingerprint of each content, made (and stored, where the index can be written) for those without one from
    the first of its files that decodes; a content none of whose files can be read now is left out."""
    from audiofind.audio import decode
    from audiofind.audio.fingerprint import MAX_SECONDS, fingerprint

    prints = index.fingerprints(by_hash)
    missing = [h for h in by_hash if h not in prints]
    made: dict[str, bytes] = {}
    for done, h in enumerate(missing, 1):
        for r in by_hash[h]:
            try:
                made[h] = fingerprint(decode.load_audio(Path(r.path), max_seconds=MAX_SECONDS)).to_bytes()
                break
            except (DecodeError, OSError) as e:  # offline, moved or changed since: another copy may do
                log.info("cannot fingerprint %s: %s", r.path, e)
        if len(made) >= FILL_BATCH or done == len(missing):
            _keep(index, made)
            prints |= made
            made = {}
        if progress:
            progress("fingerprints", done, len(missing))
    return prints


def _keep(index: Store, made: dict[str, bytes]) -> None:
    try:
        index.set_fingerprints(made)
    except StorageError as e:  # a read-only index: the fingerprints are used this time, made again next time
        log.info("fingerprints not stored: %s", e)


def _group(hashes: list[str], by_hash: dict[str, list[FileRow]], online: dict[str, bool]) -> Group:
    files = sorted((r for h in hashes for r in by_hash[h]), key=lambda r: r.path)
    total = sum(r.size for r in files)
    members = [Member(r.path, r.size, online.get(r.root, True)) for r in files]
    identical = sorted(sorted(r.path for r in by_hash[h]) for h in hashes if len(by_hash[h]) > 1)
    kind = "exact" if len(hashes) == 1 else "near"
    return Group(kind, [m.path for m in members], total, total - max(r.size for r in files), members, identical)
