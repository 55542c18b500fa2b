"""The records the index stores and returns, and the one rule for how paths are kept."""

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

BINDING_KEYS = ("model_name", "model_sha256", "dim", "window", "hop", "precision")


@dataclass(frozen=True)
class ModelBinding:
    """Which model made the vectors and how the audio was cut into segments."""

    name: str
    sha256: str
    dim: int
    window: float  # seconds per segment
    hop: float  # seconds between segment starts
    precision: str = "fp32"  # fp32 | tf32 | bf16: how the audio tower computed them (indexes before this were fp32)

    def same_vectors(self, other: "ModelBinding") -> bool:
        """True if vectors made under other can be compared with ours (the name alone may differ)."""
        mine = (self.sha256, self.dim, self.window, self.hop, self.precision)
        return mine == (other.sha256, other.dim, other.window, other.hop, other.precision)

    def values(self) -> tuple:
        """The meta values, in BINDING_KEYS order."""
        return (self.name, self.sha256, int(self.dim), float(self.window), float(self.hop), self.precision)

    @classmethod
    def from_meta(cls, meta: dict) -> "ModelBinding | None":
        """The binding recorded in an index's meta table, or None before the first bind."""
        if "model_sha256" not in meta:
            return None
        name, sha256, dim, window, hop = (meta[key] for key in BINDING_KEYS[:5])
        precision = str(meta.get("precision", "fp32"))
        return cls(str(name), str(sha256), int(dim), float(window), float(hop), precision)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FileRow:
    """One file on disk as the index knows it; hash is None for a file that failed."""

    path: str
    root: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str = "ok"  # 'ok' or 'failed'
    error: str | None = None
    tags: dict[str, str | list[str]] = field(default_factory=dict)
    indexed_at: float | None = None  # unix seconds, set by the store


@dataclass(frozen=True)
class AudioRow:
    """Facts about one distinct audio content."""

    hash: str
    duration: float  # seconds
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class RootRow:
    """A folder the user indexed."""

    path: str
    last_indexed_at: float | None


@dataclass(frozen=True)
class Stats:
    """Everything `audiofind status` shows."""

    path: Path
    size_bytes: int  # database plus its write-ahead log
    schema_version: int
    model: ModelBinding | None
    roots: list[RootRow]
    files: int
    ok: int
    failed: int
    audio: int  # distinct contents
    segments: int
    audio_seconds: float  # summed over ok files, copies included
    failures: list[tuple[str, str]]  # (path, reason)
    last_update: float | None  # unix seconds
    quantised: bool  # whether binary codes exist (large index)

    @property
    def audio_hours(self) -> float:
        """Indexed audio in hours."""
        return self.audio_seconds / 3600

    def as_dict(self) -> dict:
        """The object `status --json` prints (and serve's /api/status returns)."""
        when = lambda t: datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else None
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "schema_version": self.schema_version,
            "model": self.model.name if self.model else None,
            "sha256": self.model.sha256 if self.model else None,
            "roots": [r.path for r in self.roots],
            "files": self.files,
            "ok": self.ok,
            "failed": self.failed,
            "segments": self.segments,
            "audio_hours": round(self.audio_hours, 4),
            "last_update": when(self.last_update),
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
        }


def norm_path(path: Path | str) -> str:
    """The absolute form in which paths are stored: '..' folded, symlinks kept.

    Not resolved: a file reached through a symlinked folder keeps the path the user sees under its root, so it
    stays inside that root on the next walk.
    """
    return os.path.abspath(os.path.expanduser(path))


def casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def ids_json(ids: Iterable[int]) -> str:
    return json.dumps([int(i) for i in ids])


def folder_prefix(folder: str) -> str:
    return folder if folder.endswith(os.sep) else folder + os.sep
