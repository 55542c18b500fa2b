"""Filters from what a person typed (search's options, serve's query string), checked with one message each."""

from collections.abc import Iterable
from pathlib import Path

from audiofind.errors import UsageError
from audiofind.store.records import Filters


def read_filters(
    under: Path | str | None = None,
    exts: Iterable[str] = (),
    min_duration: float | None = None,
    max_duration: float | None = None,
    tags: Iterable[str] = (),
    min_rate: int | None = None,
    channels: int | None = None,
) -> Filters:
    """Filters as typed: a folder that exists, extensions with or without a dot (or "wav, flac"), durations in
    seconds, KEY=VALUE tags, a lowest sample rate in Hz, a channel count; UsageError naming what is wrong."""
    if min_rate is not None and min_rate <= 0:
        raise UsageError(f"The lowest sample rate is in Hz, more than zero (got {min_rate}).")
    if channels is not None and channels <= 0:
        raise UsageError(f"The number of channels must be 1 or more (got {channels}).")
    if under is not None and not Path(under).expanduser().is_dir():
        raise UsageError(f"under {under}: no such folder.")
    if (min_duration is not None and min_duration < 0) or (max_duration is not None and max_duration < 0):
        raise UsageError("Durations are seconds, zero or more.")
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise UsageError(f"The minimum duration {min_duration:g} s is more than the maximum {max_duration:g} s.")
    wanted: dict[str, str] = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"A tag filter takes KEY=VALUE, got {item!r}.")
        wanted[key.strip().lower()] = value.strip()
    suffixes = frozenset(e.lower().lstrip(".") for item in exts for e in item.replace(",", " ").split())
    return Filters(
        under=str(Path(under).expanduser()) if under is not None else None,  # matched as given and as resolved
        exts=suffixes or None,
        min_duration=min_duration,
        max_duration=max_duration,
        tags=wanted or None,
        min_rate=min_rate,
        channels=channels,
    )
