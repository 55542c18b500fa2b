"""Typed errors. Each message is a full sentence the CLI prints unchanged."""

from pathlib import Path


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


class IndexBusy(AudiofindError):
    """Another process is writing to the same index."""


class StorageError(AudiofindError):
    """The index file cannot be read or written as asked: disk full, read-only, damaged or unreachable."""


class DatasetError(AudiofindError):
    """A dataset folder or CSV is missing pieces or has malformed rows."""


class RebuildIncomplete(AudiofindError):
    """A rebuilt index was not swapped in, because it would lose files the current one holds."""
