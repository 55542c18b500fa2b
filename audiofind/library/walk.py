"""What is on disk: the one folder walker, the audio files it finds, and telling a missing drive from deleted files.

Symlinked folders are followed, each folder once: a folder already visited (by st_dev, st_ino) is skipped, so a
symlink loop ends at once and a folder reachable two ways is stored under the first path the walk reaches it by
(real folders before symlinked ones in each folder). Hidden names are skipped. `index`, watch's folder map and its
poller all walk with `walk_folders`.

A root that is missing, empty or unreadable while the index holds files under it is *unavailable*, not emptied:
an unplugged drive, a share that failed to mount or an empty mount point all look like that. Folders that could not
be listed are remembered too, so the files the index holds under them are kept rather than removed.
"""

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from audiofind.audio.formats import AUDIO_EXTS, OTHER_AUDIO_EXTS, extension
from audiofind.errors import UsageError

log = logging.getLogger(__name__)

FolderId = tuple[int, int]  # (st_dev, st_ino)


def walk_folders(
    top: Path | str,
    seen: dict[FolderId, str],
    stopped: Callable[[], bool] = lambda: False,
    aliases: set[str] | None = None,
    onerror: Callable[[OSError], None] | None = None,
) -> Iterator[tuple[str, os.stat_result, list[str]]]:
    """(folder, its stat, its visible file names) for each folder under top not in `seen` (identity -> path).

    Paths that lead to a folder already seen (a symlink loop, a second way in) go to `aliases`; folders that cannot
    be listed go to onerror. Stops early, between folders, once stopped() is true.
    """
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=onerror):
        if stopped():
            return
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop or a folder reached twice
            dirnames[:] = []
            if aliases is not None:
                aliases.add(dirpath)
            continue
        seen[key] = dirpath
        # Real folders before symlinked ones: a folder reachable both ways is stored under its real path.
        visible = (d for d in dirnames if not d.startswith("."))
        dirnames[:] = sorted(visible, key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
        yield dirpath, st, sorted(n for n in filenames if not n.startswith("."))


@dataclass
class Walk:
    """One walk's findings besides the files: folders that could not be listed (their files are kept), and the
    audio files the extensions asked for left out."""

    unreadable: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # paths of audio files not walked for their extension

    def note_left_out(self, folder: str, names: list[str], exts: frozenset[str]) -> None:
        """Note the files among a folder's names of audio formats (default or other) that exts leaves out."""
        for name in names:
            ext = extension(name)
            if ext not in exts and (ext in AUDIO_EXTS or ext in OTHER_AUDIO_EXTS):
                self.left_out.append(os.path.join(folder, name))

    def covers(self, path: str) -> bool:
        """Whether path lies in a folder this walk could not see into."""
        return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in self.unreadable)


def absolute(roots: Iterable[Path]) -> list[Path]:
    """The roots as absolute paths, '..' folded and symlinks kept (as the store keeps paths)."""
    return [Path(os.path.abspath(os.path.expanduser(r))) for r in roots]


def check_roots(roots: Iterable[Path]) -> list[Path]:
    """The roots as absolute paths; UsageError naming the first that is not a folder."""
    out = absolute(roots)
    for root in out:
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder.")
    return out


def readable(root: Path) -> bool:
    """Whether root is a folder whose entries can be listed."""
    try:
        with os.scandir(root):
            return True
    except OSError:
        return False


def walk(
    roots: Iterable[Path],
    exts: frozenset[str] = AUDIO_EXTS,
    found: Walk | None = None,
    seen: dict[FolderId, str] | None = None,
) -> Iterator[tuple[Path, Path, os.stat_result]]:
    """(root, file, stat) for every audio file under the roots, folders walked as folders.walk_folders does."""
    seen = {} if seen is None else seen
    found = found if found is not None else Walk()

    def unreadable(e: OSError) -> None:
        log.info("cannot list %s: %s", e.filename, e.strerror or e)
        found.unreadable.append(os.fsdecode(e.filename or ""))

    for root in roots:
        for dirpath, _, names in walk_folders(root, seen, onerror=unreadable):
            found.note_left_out(dirpath, names, exts)
            for path, fst in audio_files(dirpath, names, exts):
                yield root, Path(path), fst


def audio_files(folder: str, names: list[str], exts: frozenset[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(path, stat) of the audio files among a folder's names (as walk_folders gives them); dangling links and
    files deleted meanwhile are skipped, and so is a folder named like an audio file."""
    for name in names:
        if extension(name) not in exts:
            continue
        path = os.path.join(folder, name)
        try:
            fst = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(fst.st_mode):
            yield path, fst


def root_of(path: Path, roots: list[Path]) -> Path | None:
    """The innermost root that holds path, or None."""
    holders = [r for r in roots if path == r or r in path.parents]
    return max(holders, key=lambda r: len(r.parts)) if holders else None


def walk_only(
    paths: list[Path], roots: list[Path], exts: frozenset[str], found: Walk | None = None
) -> Iterator[tuple[Path, Path, os.stat_result]]:
    """walk() restricted to these files and folders, each attributed to the root that holds it."""
    for path in paths:
        root = root_of(path, roots)
        if root is None or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_dir():
            # The folders above it count as walked, so a symlink inside that leads back up is a loop, as in walk().
            above = [root, *reversed([p for p in path.parents if root in p.parents])]
            seen = {(st.st_dev, st.st_ino): str(p) for p in above if (st := _stat(p)) is not None}
            for _, file, st in walk([path], exts, found, seen):
                yield root, file, st
        elif extension(str(path)) in exts:
            try:
                yield root, path, os.stat(path)
            except OSError:
                continue  # gone again: the index forgets it


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def signature(path: str | Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file now, or None if it is gone: a file being written changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
