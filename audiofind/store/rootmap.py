"""Where this machine has the roots of a shared index, as told by `audiofind roots map NAME PATH`.

A machine that only reads a shared index (it never indexes, so never writes its mounts) names its own mount
points here, in the data folder's `roots.json`: {"NAME": "/absolute/path"}. A mapping here wins over the one the
index records for this host.
"""

import json
import os
from pathlib import Path

from audiofind.errors import StorageError
from audiofind.paths import data_dir
from audiofind.store.records import norm_path

FILE = "roots.json"


def path() -> Path:
    """The file holding this machine's mappings."""
    return data_dir() / FILE


def read() -> dict[str, str]:
    """name -> local folder, as mapped on this machine ({} when nothing is)."""
    try:
        found = json.loads(path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StorageError(f"Cannot read {path()} ({e}); fix or delete it (it maps root names to folders).") from e
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def write(name: str, folder: str | None) -> dict[str, str]:
    """Map name to folder on this machine (None: forget the mapping); the mappings now."""
    mapped = read()
    if folder is None:
        mapped.pop(name, None)
    else:
        mapped[name] = norm_path(folder)
    target = path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(mapped, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        raise StorageError(f"Cannot write {target}: {e.strerror or e}.") from e
    return mapped
