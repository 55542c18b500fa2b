"""The records the index stores and returns, what a search may ask of it, and the one rule for how paths are kept.

Plain data shared by every backend: each backend turns these into its own SQL, and code above the store reads and
builds only these.
"""

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

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
        return cls(str(name), str(sha256), int(dim), float(window), float(hop), precision)


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
    container: str | None = None  # the demuxer's name ("wav", "flac", "mp3", "m4a"...); None where never read
    codec: str | None = None  # FFmpeg's codec name ("pcm_s24le", "flac", "mp3"...)
    bits: int | None = None  # bit depth of PCM and lossless codecs; None for lossy ones, or where never read
    fingerprint: bytes | None = field(default=None, repr=False)  # audio.fingerprint's, stored with the content


@dataclass(frozen=True)
class RootRow:
    """A folder the user indexed.

    A shared index names each root (`HOST:/absolute/path` unless `index --root-name` chose another) and stores its
    files below it, so every machine finds them under its own mount point. On a machine that does not mount a root,
    path is `NAME:` and its files' paths are `NAME:relative/path`: searchable, not playable. An SQLite index names
    roots by their path.
    """

    path: str  # where it is on this machine, or `NAME:` when it is not mounted here
    last_indexed_at: float | None
    name: str = ""  # the name every machine knows it by ("" before it has one: the path)
    local: bool = True  # mounted on this machine
    files: int = 0  # stored files under it, ok or failed
    available: bool = True  # there now: mounted here and a folder (False for an unplugged drive), as last listed

    @property
    def state(self) -> str:
        """How `status` and `roots` show it: available, missing (mounted here but not there now) or not mounted."""
        return "available" if self.available else "missing" if self.local else "not mounted"


@dataclass(frozen=True)
class Content:
    """One complete audio content with its segments and unit vectors, as `db copy` moves it (bit for bit)."""

    audio: AudioRow
    segments: list[tuple[float, float]]  # (start, end) seconds, in time order
    vectors: np.ndarray  # (N, D) float32, unit rows exactly as stored


@dataclass(frozen=True)
class PlacedFile:
    """A stored file as `db copy` moves it: its id, its root by name and its path below that root."""

    id: int
    root: str  # the root's name (an SQLite index: the root's path)
    relpath: str  # below the root, '/'-separated ('' when the root is the file itself)
    row: FileRow


@dataclass(frozen=True)
class Portion:
    """A part of a whole index, as `Store.dump` gives it and `Store.load` takes it: the first portion carries the
    model binding, the code centre and the roots; later ones contents, then files."""

    binding: ModelBinding | None = None
    centre: np.ndarray | None = None  # (D,) float32: the centre binary codes are taken around, once frozen
    roots: list[RootRow] = field(default_factory=list)
    contents: list[Content] = field(default_factory=list)
    files: list[PlacedFile] = field(default_factory=list)


@dataclass(frozen=True)
class FileEntry:
    """One indexed file, addressed by its row id: where it is and what was indexed there (serve's files)."""

    id: int
    path: str
    root: str
    size: int  # bytes at indexing time
    mtime_ns: int  # modification time at indexing time
    hash: str
    duration: float  # seconds, as indexed


@dataclass(frozen=True)
class Hit:
    """One file found by search, with its best segment."""

    path: str
    score: float  # the ranking's: cosine of the best segment to the closest query vector, or BM25 relevance
    start: float
    end: float
    duration: float
    tags: dict[str, str | list[str]]
    hash: str
    # The file's facts, as its header said when it was indexed (None where an older index could not read them).
    format: str | None = None  # the container: "wav", "flac", "mp3", "m4a"...
    codec: str | None = None
    sample_rate: int | None = None
    bits: int | None = None  # None for lossy codecs
    channels: int | None = None
    available: bool = True  # whether the file's root folder is there now (an unplugged drive's is not)


def tag_forms(value: str) -> list[str]:
    """What a tag filter's value may equal in one stored tag value, case-folded: the whole value, then each part of
    a multi-value tag written as one string (`Ambience; Nature`, as many taggers write one), each once."""
    whole = value.casefold()
    parts = (p.strip() for p in whole.split(";")) if ";" in whole else ()
    return list(dict.fromkeys([whole, *(p for p in parts if p)]))


@dataclass(frozen=True)
class Filters:
    """Restrictions on which files a search may return; None means no restriction (search.filters reads them from
    what a person typed)."""

    under: str | None = None  # a folder, matched as given and as resolved
    exts: frozenset[str] | None = None  # lower-case, without the dot
    min_duration: float | None = None
    max_duration: float | None = None
    tags: dict[str, str] | None = None  # lower-case key -> value; every one must match one of tag_forms, ignoring case
    paths: frozenset[str] | None = None  # only these files (a query's "phrase" holders, say)
    min_rate: int | None = None  # sample rate, Hz
    channels: int | None = None  # exactly this many

    def is_empty(self) -> bool:
        """True if nothing is filtered out."""
        bounds = (self.paths, self.min_duration, self.max_duration, self.min_rate, self.channels)
        return not (self.under or self.exts or self.tags) and all(b is None for b in bounds)


@dataclass(frozen=True)
class NameQuery:
    """A query as the names index reads it (search.query parses it): every term is typed text, split into name-words
    by audio.names.words on both sides, so every backend sees the same terms."""

    words: list[str] = field(default_factory=list)  # any of them may match; more and rarer ones rank higher
    phrases: list[str] = field(default_factory=list)  # each must appear, its words in this order
    excluded: list[str] = field(default_factory=list)  # a file whose names or tags hold any of these is left out

    @property
    def terms(self) -> list[str]:
        """The positive terms (words, then phrases), as typed."""
        return self.words + self.phrases


@dataclass(frozen=True)
class Stats:
    """Everything `audiofind status` shows."""

    path: str  # where the index is: its file, or its server's URL with the password left out
    size_bytes: int  # everything the index takes on disk
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
    warnings: list[tuple[str, str]]  # (path, note) of files indexed with a warning (truncated, say)
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
            "path": self.path,
            "size_bytes": self.size_bytes,
            "schema_version": self.schema_version,
            "model": self.model.name if self.model else None,
            "sha256": self.model.sha256 if self.model else None,
            "precision": self.model.precision if self.model else None,
            "roots": [r.path for r in self.roots],
            "root_state": {r.path: r.state for r in self.roots},
            "files": self.files,
            "ok": self.ok,
            "failed": self.failed,
            "segments": self.segments,
            "audio_hours": round(self.audio_hours, 4),
            "last_update": when(self.last_update),
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "warnings": [{"path": p, "reason": r} for p, r in self.warnings],
        }


def norm_path(path: Path | str) -> str:
    """The absolute form in which paths are stored: '..' folded, symlinks kept.

    Not resolved: a file reached through a symlinked folder keeps the path the user sees under its root, so it
    stays inside that root on the next walk.
    """
    return os.path.abspath(os.path.expanduser(path))


def folder_prefix(folder: str) -> str:
    """folder with one trailing separator: the prefix of every path inside it."""
    return folder if folder.endswith(os.sep) else folder + os.sep
