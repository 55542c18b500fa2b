"""Files: where audiofind keeps its data (one place decides, one variable redirects it all), and the one way a
file's bytes are hashed (content hashes of sounds, checkpoints, downloads)."""

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import platformdirs

APP = "audiofind"


def home() -> Path | None:
    """The AUDIOFIND_HOME override, if set (tests and portable installs use it)."""
    value = os.environ.get("AUDIOFIND_HOME")
    return Path(value).expanduser() if value else None


def weights_dir() -> Path:
    """Folder holding downloaded, imported and fine-tuned checkpoints."""
    root = home()
    return root / "weights" if root else Path(platformdirs.user_cache_dir(APP)) / "weights"


def data_dir() -> Path:
    """Folder holding the default index and caches that are worth keeping."""
    root = home()
    return root if root else Path(platformdirs.user_data_dir(APP))


def run_dir(name: str) -> Path:
    """Folder of the fine-tuning run that produces model NAME, unless `finetune --out` chose another."""
    return data_dir() / "runs" / name


# What a run folder holds (train.py writes them): removing a run deletes these and nothing else the user put there.
RUN_CHECKPOINT, RUN_METRICS, RUN_SNAPSHOTS, RUN_CARD = "checkpoint.pt", "metrics.jsonl", "best", "card.json"


def default_db() -> Path:
    """The index used when neither --db nor AUDIOFIND_DB is given."""
    value = os.environ.get("AUDIOFIND_DB")
    return Path(value).expanduser() if value else data_dir() / "index.db"


HASH_CHUNK = 1 << 20


def feed(h: "hashlib._Hash", path: Path | str, progress: Callable[[int, int], None] | None = None,
         stop: threading.Event | None = None) -> "hashlib._Hash":  # fmt: skip
    """Feed a file's bytes into h, reporting (done, total) bytes; InterruptedError once stop is set."""
    total, done = os.stat(path).st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
            if stop is not None and stop.is_set():
                raise InterruptedError("stopped while hashing")
    return h


def hash_file(path: Path | str, algorithm: str = "sha256", progress: Callable[[int, int], None] | None = None,
              stop: threading.Event | None = None) -> str:  # fmt: skip
    """The hex digest of a file's bytes (sha256 unless asked otherwise)."""
    return feed(hashlib.new(algorithm), path, progress, stop).hexdigest()
