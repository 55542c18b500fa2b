"""Which stored paths a folder covers: the one rule every backend uses for `--under` and for roots, and where a
root may move (`roots move`).

Paths are stored as walked (absolute, symlinks kept), so a folder may be named by another path than the one its
files are stored under: as the user typed it, as it resolves, or, seen from a root indexed through a symlink, the
same place under that root. Each is a path prefix the backend matches in its own SQL.
"""

import os
from pathlib import Path

from audiofind.errors import UsageError
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


def check_move(old: str, new: str, others: list[str]) -> None:
    """UsageError unless new can take the place of the root old (both as stored): another folder, neither inside
    nor around old or any of the other roots (others: their paths on this machine)."""
    if new == old:
        raise UsageError(f"{old} is already where the index has it; nothing to move.")
    if within(new, old) or within(old, new):
        raise UsageError(f"{new} and {old} overlap: a root cannot move inside itself or around itself.")
    for root in others:
        if within(new, root):
            raise UsageError(f"{new} is inside the indexed folder {root}, so it is indexed already; nothing was moved.")
        if within(root, new):
            raise UsageError(f"{new} holds the indexed folder {root}; move {old} to a folder of its own.")


def not_a_root(path: str) -> UsageError:
    """The error for a move of a folder that is not one of this machine's roots."""
    return UsageError(f"{path} is not an indexed folder here (`audiofind roots` lists them); nothing was moved.")
