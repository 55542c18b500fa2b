"""Typed errors. Each message is a full sentence the CLI prints unchanged."""

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audiofind.store.records import ModelBinding


class AudiofindError(Exception):
    """Base of every error audiofind raises on purpose; the CLI turns it into one line and an exit code."""

    exit_code: int = 1


class UsageError(AudiofindError):
    """The user asked for something that cannot be done as asked (empty query, bad option value)."""

    exit_code = 2


class DecodeError(AudiofindError):
    """A file could not be decoded as audio."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class DeviceError(AudiofindError):
    """The requested torch device does not exist or cannot be used."""

    exit_code = 2


class WeightsError(AudiofindError):
    """A checkpoint is missing, malformed, or does not fit the model."""


class UnknownModelError(WeightsError):
    """A --weights value is neither a registered name nor an existing file."""

    exit_code = 2


class WeightsNotFound(WeightsError):
    """A registered model is known but not downloaded yet."""


class UnsafeCheckpoint(WeightsError):
    """A checkpoint asks to run code while being loaded."""


class ChecksumError(WeightsError):
    """A downloaded or imported file does not have the expected sha256."""


class DownloadError(WeightsError):
    """A download failed (network, HTTP status, disk)."""


class IndexNotFound(AudiofindError):
    """No index database exists at the given path."""


class SchemaMismatch(AudiofindError):
    """The index was built by another model or another segmenting setting, or by a newer audiofind."""


class ModelMismatch(SchemaMismatch):
    """The index holds vectors made by another model, precision or segmenting than asked; says how to rebuild it."""

    def __init__(self, current: "ModelBinding", asked: "ModelBinding", location: str, roots: list[str]) -> None:
        self.current, self.asked, self.location, self.roots = current, asked, location, roots
        super().__init__(self._message())

    def _message(self) -> str:
        current, asked = self.current, self.asked
        if (current.sha256, current.dim) != (asked.sha256, asked.dim):
            return (
                f"This index was built with model '{current.name}' (sha256 {current.sha256[:12]}...); "
                f"you asked for '{asked.name}'. {self.rebuild(f'-w {shlex.quote(asked.name)}')}"
            )
        if current.precision != asked.precision:
            fix = self.rebuild(f"--precision {asked.precision}")
            return (
                f"This index holds {current.precision} embeddings; you asked for {asked.precision}, which rank "
                f"differently. Use --precision {current.precision}, or {fix[0].lower()}{fix[1:]}"
            )
        return (
            f"This index was built with {current.window:g} s windows every {current.hop:g} s; "
            f"you asked for {asked.window:g} s windows every {asked.hop:g} s. {self.rebuild()}"
        )

    def rebuild(self, option: str = "") -> str:
        """The command that rebuilds this index with what was asked for."""
        from audiofind.paths import default_db

        roots = " ".join(shlex.quote(r) for r in self.roots) or "PATH..."
        default = os.path.abspath(os.path.expanduser(default_db()))
        db = "" if self.location == default else f" --db {shlex.quote(self.location)}"
        return f"Rebuild it with: audiofind index --rebuild{' ' + option if option else ''}{db} {roots}"


class IndexBusy(AudiofindError):
    """Another process is writing to the same index."""


class StorageError(AudiofindError):
    """The index file cannot be read or written as asked: disk full, read-only, damaged or unreachable."""


class UnsupportedServer(StorageError):
    """The PostgreSQL server, or its pgvector, is older than audiofind needs, or has no pgvector to use."""


class DatasetError(AudiofindError):
    """A dataset folder or CSV is missing pieces or has malformed rows."""


class RebuildIncomplete(AudiofindError):
    """A rebuilt index was not swapped in, because it would lose files the current one holds."""
