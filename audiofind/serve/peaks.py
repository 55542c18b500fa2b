"""Waveform thumbnails: the peak level of each of a fixed number of slices of a file, cached by content hash.

Peaks are computed from the same streamed decode as indexing (one chunk in memory at a time) and written to
<data folder>/peaks/<hash>.json, so a copy or a moved file, or the same file in another index, reuses them.
"""

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from audiofind.audio import decode
from audiofind.paths import data_dir

log = logging.getLogger(__name__)

BUCKETS = 600  # enough for a full-width waveform; a thumbnail draws several per pixel
VERSION = 1  # bump when the way peaks are computed changes: old cache files are then ignored


def cache_dir() -> Path:
    """Where computed peaks are kept by default (under the audiofind data folder, which AUDIOFIND_HOME moves)."""
    return data_dir() / "peaks"


def cache_file(hash: str, folder: Path | None = None) -> Path:
    """The cache file of one content."""
    return (folder or cache_dir()) / hash[:2] / f"{hash}.json"


def peaks(path: Path, hash: str, duration: float, folder: Path | None = None) -> list[float]:
    """The peak level (0..1) of each of BUCKETS equal slices of the file: from the cache, else computed and cached."""
    cached = _read(cache_file(hash, folder))
    if cached is not None:
        return cached
    values = [round(float(v), 4) for v in compute(path, duration)]
    try:
        _write(cache_file(hash, folder), {"version": VERSION, "buckets": BUCKETS, "peaks": values})
    except OSError as e:  # a read-only data folder costs speed, not the waveform
        log.warning("cannot cache peaks in %s: %s", folder or cache_dir(), e)
    return values


def compute(path: Path, duration: float, buckets: int = BUCKETS) -> np.ndarray:
    """(buckets,) float32 peak levels in [0, 1] of the mono mix-down, streaming the file once."""
    total = max(1, round(duration * decode.SAMPLE_RATE))  # samples the index decoded; any excess joins the last slice
    out = np.zeros(buckets, np.float32)
    pos = 0
    for chunk in decode.stream_audio(path):
        which = np.minimum(np.arange(pos, pos + len(chunk)) * buckets // total, buckets - 1)  # slice of each sample
        starts = np.flatnonzero(np.diff(which, prepend=-1))
        np.maximum.at(out, which[starts], np.maximum.reduceat(np.abs(chunk), starts))
        pos += len(chunk)
    return np.minimum(out / decode.INT16_SCALE, 1.0)


def _read(path: Path) -> list[float] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION or data.get("buckets") != BUCKETS:
        return None
    return data.get("peaks")


def _write(path: Path, data: dict) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".peaks-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
