"""The folders `index` visits under its roots, walked by `walk.walk_folders` and kept up to date by watch."""

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from audiofind.audio.formats import AUDIO_EXTS, extension
from audiofind.library.walk import FolderId, walk_folders


class Folders:
    """The folders `walk` visits under the roots, each under the one path it is indexed by.

    Watch keeps this in step with folder events, to tell which changed paths the index can hold (a folder reached
    again through a symlink is not one of them) and where symlinked folders really are (their events come from
    watches on their targets).
    """

    def __init__(self, roots: Iterable[Path], exts: frozenset[str] = AUDIO_EXTS,
                 stopped: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        self.roots = [str(r) for r in roots]
        self.exts, self.stopped = exts, stopped
        self.dirs: dict[str, FolderId] = {}  # walked path -> identity
        self.seen: dict[FolderId, str] = {}  # identity -> walked path
        self.aliases: set[str] = set()  # paths under the roots that lead to a folder walked by another path
        self.version = 0  # counts changes, so watch knows when to look at symlinks again

    def rebuild(self) -> None:
        """Walk every root again, as `index` does."""
        self.dirs.clear()
        self.seen.clear()
        self.aliases.clear()
        for root in self.roots:
            self._walk(root)

    def add(self, path: str) -> bool:
        """Take in a folder that appeared (with what it holds); False when the walk would not visit it."""
        if path not in self.roots and os.path.dirname(path) not in self.dirs:
            return False
        self._walk(path)
        return path in self.dirs

    def drop(self, path: str) -> None:
        """Forget a folder that went away, with every folder under it."""
        prefix = path.rstrip(os.sep) + os.sep
        for p in [p for p in self.dirs if p == path or p.startswith(prefix)]:
            self.seen.pop(self.dirs.pop(p), None)
            self.version += 1
        self.aliases -= {p for p in self.aliases if p == path or p.startswith(prefix)}

    def update(self, path: str) -> bool:
        """Bring one changed path in step (a folder added, removed or replaced); True when the folders changed."""
        try:
            st = os.stat(path)
            now = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
        except OSError:
            now = None
        before = self.dirs.get(path)
        if before == now:
            return False
        if before is not None:
            self.drop(path)
        if now is not None:
            self.add(path)
        return self.dirs.get(path) != before

    def holds(self, path: str, was_folder: bool = False) -> bool:
        """Whether the index can hold this changed path: a walked folder (or one that was), an audio file in one."""
        if path in self.dirs or was_folder:
            return True
        if extension(path) not in self.exts:
            return False
        try:
            st = os.stat(path)
        except OSError:  # gone (or a dangling link): the index forgets whatever it held there
            return True
        return not stat.S_ISDIR(st.st_mode) and os.path.dirname(path) in self.dirs

    def aliased(self, path: str) -> bool:
        """Whether a folder holds a path that leads out of it to a folder walked by another path (a loop, say)."""
        prefix = path.rstrip(os.sep) + os.sep
        return any(a.startswith(prefix) for a in self.aliases)

    def links(self) -> dict[str, str]:
        """Each walked folder below a root that is a symlink, with the real folder it leads to."""
        return {p: os.path.realpath(p) for p in self.dirs if p not in self.roots and os.path.islink(p)}

    def _walk(self, top: str) -> None:
        for dirpath, st, _ in walk_folders(top, self.seen, self.stopped, self.aliases):
            self.dirs[dirpath] = (st.st_dev, st.st_ino)
            self.version += 1
