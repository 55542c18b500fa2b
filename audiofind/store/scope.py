"""Which stored paths a folder covers: the one rule every backend uses for `--under` and for roots.

Paths are stored as walked (absolute, symlinks kept), so a folder may be named by another path than the one its
files are stored under: as the user typed it, as it resolves, or, seen from a root indexed through a symlink, the
same place under that root. Each is a path prefix the backend matches in its own SQL.
"""

import os
from pathlib import Path

from audiofind.store.records import folder_prefix, norm_path


def under_folders(folder: Path | str, roots: list[str]) -> list[str]:
    """Where files under folder are stored: it as given and as resolved, and the same place under any root
    indexed through a symlink."""
    given = norm_path(folder)
    real = os.path.realpath(given)
    found = {given, real}
    for root in roots:
        root_real = os.path.realpath(root)
        if root_real == root:
            continue
        if within(real, root_real):
            found.add(norm_path(os.path.join(root, os.path.relpath(real, root_real))))
        elif within(root_real, real):
            found.add(root)
    return sorted(found)


def within(path: str, folder: str) -> bool:
    """Whether path is folder or lies inside it (as strings: nothing is resolved)."""
    return path == folder or path.startswith(folder_prefix(folder))
